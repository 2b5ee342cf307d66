"""The multi-resolution embedding network of Fujimura et al. (2024) (pure ``nn.Module`` s).

Input: a batch of waveforms ``(batch, n_samples)`` at 16 kHz (18 s tiles in the paper). Each
branch maps it to a 128-d embedding; the joint embedding is their concatenation (384-d for the
paper's FFT + STFT(4096/2048) + STFT(256/128)). No layer has a bias. Numbers follow the seed's
code (``unlabeledasd``: ``models/multi_resolution_net.py``, ``models/stft.py``):

- **FFT branch**: ``|rfft|`` of the whole signal (no crop, no log) → 3 × (Conv1d without padding
  → ReLU → SE), kernels 256/64/16, strides 64/32/4, 128 channels → flatten → Linear +
  BN + ReLU, 4 × (Linear + BN + ReLU) → Linear 128.
- **STFT branch**: magnitude STFT (Hann, ``normalized=True``, ``center=True``, reflect padding),
  bins 200-8000 Hz, no log → BatchNorm over frequency (bins as channels) → 2-D ResNet:
  Conv 7×7 stride 2 (16 ch) + BN + ReLU + MaxPool 3×3 stride 2, then 4 stages of 2
  pre-activation blocks with SE (16, 32, 64, 128 channels; stride 2 in the first block of stages
  2-4, max-pool + 1×1 conv shortcut) → max over time → flatten → BN → Linear 128.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BranchSpec:
    """One branch: ``"fft"`` or ``"stft:<n_fft>:<hop>"`` (e.g. ``"stft:4096:2048"``)."""

    kind: str
    n_fft: int = 0
    hop: int = 0

    @classmethod
    def parse(cls, text: str) -> "BranchSpec":
        parts = str(text).strip().lower().split(":")
        if parts == ["fft"]:
            return cls("fft")
        if len(parts) == 3 and parts[0] == "stft" and parts[1].isdigit() and parts[2].isdigit():
            n_fft, hop = int(parts[1]), int(parts[2])
            if n_fft < 16 or hop < 1:
                raise ValueError(f"branch '{text}': n_fft must be >= 16 and hop >= 1")
            return cls("stft", n_fft, hop)
        raise ValueError(f"branch '{text}' is not 'fft' or 'stft:<n_fft>:<hop>'")

    def __str__(self) -> str:
        return "fft" if self.kind == "fft" else f"stft:{self.n_fft}:{self.hop}"


class SEBlock(nn.Module):
    """Squeeze-and-excitation: channel weights from the global mean (reduction ``ratio``)."""

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc = nn.Sequential(nn.Linear(channels, hidden, bias=False), nn.ReLU(),
                                nn.Linear(hidden, channels, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.flatten(2).mean(dim=2))
        for _ in range(x.dim() - 2):  # (B, C) -> (B, C, 1[, 1]); a loop TorchScript can compile
            w = w.unsqueeze(-1)
        return x * w


def _conv_out(n: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class FFTBranch(nn.Module):
    """``|rfft|`` of the whole waveform → 1-D conv stack with SE → dense stack → ``emb_dim``.

    Args:
        n_samples: input length (fixes the flattened size).
        emb_dim: output size (128).
        channels: conv channels (128).
        dense_layers: Linear + BN + ReLU layers after the flatten (5 in the paper).
    """

    KERNELS = ((256, 64), (64, 32), (16, 4))

    def __init__(self, n_samples: int, emb_dim: int = 128, channels: int = 128, dense_layers: int = 5) -> None:
        super().__init__()
        if n_samples < self.min_samples():
            raise ValueError(f"FFT branch: a tile of {n_samples} samples is too short for its conv stack; "
                             f"it needs at least {self.min_samples()} samples")
        n = n_samples // 2 + 1
        layers: list[nn.Module] = []
        c_in = 1
        for k, s in self.KERNELS:
            layers += [nn.Conv1d(c_in, channels, k, stride=s, bias=False), nn.ReLU(), SEBlock(channels)]
            n = _conv_out(n, k, s)
            c_in = channels
        self.conv = nn.Sequential(*layers)
        dense: list[nn.Module] = []
        width = channels * n
        for _ in range(dense_layers):
            dense += [nn.Linear(width, emb_dim, bias=False), nn.BatchNorm1d(emb_dim), nn.ReLU()]
            width = emb_dim
        dense.append(nn.Linear(width, emb_dim, bias=False))
        self.dense = nn.Sequential(*dense)

    @classmethod
    def min_samples(cls) -> int:
        """Shortest input whose spectrum survives the conv stack (70,014 samples, 4.4 s at 16 kHz)."""
        need = 1
        for k, s in reversed(cls.KERNELS):
            need = k + s * (need - 1)
        return 2 * (need - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(x, dim=-1).abs().unsqueeze(1)  # (B, 1, n_bins)
        return self.dense(self.conv(spec).flatten(1))


class ResBlock(nn.Module):
    """Pre-activation residual block with SE: BN → [ReLU → conv → BN → ReLU → conv → SE] + shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(c_in)
        self.body = nn.Sequential(
            nn.ReLU(), nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), SEBlock(c_out),
        )
        if stride != 1 or c_in != c_out:
            self.shortcut: nn.Module = nn.Sequential(
                nn.MaxPool2d(3, stride=stride, padding=1) if stride != 1 else nn.Identity(),
                nn.Conv2d(c_in, c_out, 1, bias=False),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)
        return self.shortcut(x) + self.body(x)


class STFTBranch(nn.Module):
    """Magnitude STFT (200-8000 Hz) → BN over frequency → 2-D ResNet with SE → ``emb_dim``.

    Args:
        n_samples: input length.
        n_fft: FFT size (window length), samples.
        hop: hop, samples.
        sr: sample rate, Hz.
        emb_dim: output size (128).
        channels: channels of the 4 ResNet stages ((16, 32, 64, 128)); the first conv has
            ``channels[0]``.
        fmin: lowest kept frequency, Hz (200).
        fmax: highest kept frequency, Hz (8000, clipped to sr/2).
    """

    def __init__(
        self, n_samples: int, n_fft: int, hop: int, sr: int = 16000, emb_dim: int = 128,
        channels: Sequence[int] = (16, 32, 64, 128), fmin: float = 200.0, fmax: float = 8000.0,
    ) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1)
        self.lo = int(torch.searchsorted(freqs, torch.tensor(float(fmin)), right=False))
        self.hi = int(torch.searchsorted(freqs, torch.tensor(float(min(fmax, sr / 2))), right=True))
        n_freq = self.hi - self.lo
        n_time = n_samples // hop + 1
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.bn_freq = nn.BatchNorm1d(n_freq)
        c = list(channels)
        self.first = nn.Sequential(nn.Conv2d(1, c[0], 7, stride=2, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU(),
                                   nn.MaxPool2d(3, stride=2))
        f, t = _conv_out(n_freq, 7, 2), _conv_out(n_time, 7, 2)
        f, t = _conv_out(f, 3, 2), _conv_out(t, 3, 2)
        if min(f, t) < 1:
            raise ValueError(f"STFT branch {n_fft}/{hop}: a {n_freq}×{n_time} spectrogram is too small for the "
                             "ResNet (use a longer tile or a smaller hop)")
        blocks: list[nn.Module] = []
        c_in = c[0]
        for i, c_out in enumerate(c):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(ResBlock(c_in, c_out, stride))
                if stride == 2:
                    f, t = _conv_out(f, 3, 2, 1), _conv_out(t, 3, 2, 1)
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.BatchNorm1d(c_in * f), nn.Linear(c_in * f, emb_dim, bias=False))
        self.out_shape = (c_in, f, t)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, n_freq, n_frames)`` magnitude spectrogram, bins ``lo:hi`` (200-8000 Hz)."""
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window.to(x.device), center=True,
                          pad_mode="reflect", normalized=True, return_complex=True).abs()
        return spec[:, self.lo:self.hi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.bn_freq(self.spectrogram(x)).unsqueeze(1)
        h = self.blocks(self.first(s))            # (B, C, F', T')
        h = h.max(dim=3).values.flatten(1)        # max over time, channel-major flatten
        return self.head(h)


class MultiResolutionNet(nn.Module):
    """Branches side by side; ``forward`` returns ``(joint (B, n·emb_dim), [branch (B, emb_dim)])``.

    Args:
        n_samples: input length in samples (the tile).
        branches: branch specs (``"fft"``, ``"stft:4096:2048"`` ...).
        sr: sample rate, Hz.
        emb_dim: per-branch embedding size.
        channels: STFT ResNet stage channels.
        fft_channels: FFT branch conv channels.
        fft_dense_layers: FFT branch Linear+BN+ReLU layers.
    """

    def __init__(
        self, n_samples: int, branches: Sequence[str] = ("fft", "stft:4096:2048", "stft:256:128"),
        sr: int = 16000, emb_dim: int = 128, channels: Sequence[int] = (16, 32, 64, 128),
        fft_channels: int = 128, fft_dense_layers: int = 5,
    ) -> None:
        super().__init__()
        specs = [BranchSpec.parse(b) for b in branches]
        if not specs:
            raise ValueError("the network needs at least one branch")
        self.specs = specs
        self.branches = nn.ModuleList(
            FFTBranch(n_samples, emb_dim, fft_channels, fft_dense_layers) if s.kind == "fft"
            else STFTBranch(n_samples, s.n_fft, s.hop, sr, emb_dim, channels)
            for s in specs
        )
        self.emb_dim = emb_dim

    @property
    def dim(self) -> int:
        """Joint embedding size."""
        return self.emb_dim * len(self.branches)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        parts = [b(x) for b in self.branches]
        return torch.cat(parts, dim=1), parts


def scadacos_scale(n_classes: int, n_subclusters: int) -> float:
    """The fixed AdaCos scale ``√2 · ln(C·K − 1)`` for ``C`` classes of ``K`` sub-clusters."""
    total = n_classes * n_subclusters
    if total < 3:
        raise ValueError("SCAdaCos needs at least 3 sub-clusters in all (C·K - 1 > 1)")
    return math.sqrt(2.0) * math.log(total - 1)


class SCAdaCosHead(nn.Module):
    """Sub-cluster AdaCos: cosine logits to ``K`` centres per class at a fixed scale; the class
    probability is the sum of its sub-clusters' softmax probabilities.

    Args:
        in_dim: embedding size.
        n_classes: classes ``C``.
        n_subclusters: centres per class ``K`` (16).
        trainable: learn the centres (subspace heads) or keep the random ones (main head).
    """

    def __init__(self, in_dim: int, n_classes: int, n_subclusters: int = 16, trainable: bool = False) -> None:
        super().__init__()
        self.n_classes, self.n_subclusters = n_classes, n_subclusters
        w = torch.empty(in_dim, n_classes * n_subclusters)
        nn.init.xavier_uniform_(w)
        self.W = nn.Parameter(w, requires_grad=trainable)
        self.register_buffer("scale", torch.tensor(scadacos_scale(n_classes, n_subclusters)))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)`` (sum to 1 over classes)."""
        cos = nn.functional.normalize(x, dim=1) @ nn.functional.normalize(self.W, dim=0)
        p = torch.softmax(self.scale * cos, dim=1)
        return p.view(-1, self.n_classes, self.n_subclusters).sum(dim=2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean soft-label cross-entropy ``-Σ y log p`` for targets ``y`` ``(B, C)``."""
        p = self.probabilities(x)
        return -(y * torch.log(p.clamp_min(1e-12))).sum(dim=1).mean()
