"""Self-supervised triplet embeddings for pseudo-labelling (the seed's "triplet" variant).

A small model per machine type learns, without any label, to map a recording and the same
recording under different background noise close together, and a speed- or pitch-changed copy
of it, or another recording of the machine, far apart. Such an embedding keeps what tells
operating conditions apart (speed, load), which a classifier of machine types discards; UMAP +
GMM on it then recovers hidden attributes better.

Following the seed (``pl_models/ssl_model.py``, ``config/model/contrastive.yaml``): magnitude STFT
(n_fft 1024, hop 512, 200-8000 Hz) with each frequency's mean over time subtracted, the 2-D ResNet
of the STFT branch (128-d); anchors are the machine's clips, with probability 0.5 mixed in the
magnitude domain with another machine's clip at an SNR of U(−5, 5) dB; positives the same clip
with other noise; negatives, half a copy stretched in time or frequency by U(0.5, 0.8) or
U(1.2, 1.5), half another clip of the machine (noise added with probability 0.5); Euclidean
triplet loss with margin 1; AdamW 1e-3; 6 epochs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stetho.models.discriminative.torch_model import STFTBranch
from stetho.models.training import Trainer, optimizer_step, run_epochs


class TripletNet(nn.Module):
    """STFT ResNet branch on mean-normalised magnitude spectrograms; ``forward`` takes spectrograms."""

    def __init__(self, n_samples: int, sr: int = 16000, emb_dim: int = 128, channels=(16, 32, 64, 128),
                 n_fft: int = 1024, hop: int = 512) -> None:
        super().__init__()
        self.branch = STFTBranch(n_samples, n_fft, hop, sr, emb_dim, channels)

    def spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """Magnitude spectrogram ``(B, F, T)`` of waveforms ``(B, n)``."""
        return self.branch.spectrogram(x)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        spec = spec - spec.mean(dim=2, keepdim=True)  # the seed's temporal_norm
        b = self.branch
        h = b.blocks(b.first(b.bn_freq(spec).unsqueeze(1)))
        return b.head(h.max(dim=3).values.flatten(1))


def _stretch(spec: torch.Tensor, ratio: float, axis: int) -> torch.Tensor:
    """Spectrogram ``(F, T)`` resampled by ``ratio`` along ``axis`` (1 = time, 0 = frequency),
    cropped or zero-padded back to its shape."""
    f, t = spec.shape
    size = (f, max(1, int(round(t * ratio)))) if axis == 1 else (max(1, int(round(f * ratio))), t)
    out = nn.functional.interpolate(spec[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    pad = torch.zeros(f, t, dtype=spec.dtype)
    pad[: min(f, out.shape[0]), : min(t, out.shape[1])] = out[:f, :t]
    return pad


def _mix(spec: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``spec + g·noise`` with ``g`` giving the SNR ``snr_db`` (energies of the magnitudes)."""
    g = torch.sqrt(spec.square().sum() / noise.square().sum().clamp_min(1e-12) / (10 ** (snr_db / 10)))
    return spec + g * noise


def train_triplet_embeddings(
    specs: torch.Tensor, noise: torch.Tensor | None, net: TripletNet, epochs: int = 6, batch_size: int = 32,
    lr: float = 1e-3, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
    trainer: Trainer | None = None, checkpoint: str | Path | None = None, fingerprint: Any = None,
    desc: str = "triplet epochs",
) -> np.ndarray:
    """Train ``net`` on the spectrograms ``specs`` ``(n, F, T)`` of one machine type (``noise``:
    spectrograms of other machines' clips, or ``None``) and return the embeddings ``(n, d)``.

    With a ``trainer`` (:class:`~stetho.models.training.Trainer`, inside its block), the training
    is one of its runs: checkpoints in ``checkpoint``, resumed when ``fingerprint`` matches; the
    random numbers come from ``generator`` (default: the trainer's). Without one, the same loop
    runs without checkpoints (``generator`` default: seeded with 0)."""
    g = generator or (trainer.generator if trainer is not None else torch.Generator().manual_seed(0))
    n = specs.shape[0]
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    loss_fn = nn.TripletMarginLoss(margin=1.0, p=2)
    net.to(device).train()

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand(1, generator=g))

    def noisy(s: torch.Tensor, p: float) -> torch.Tensor:
        if noise is None or len(noise) == 0 or float(torch.rand(1, generator=g)) >= p:
            return s
        return _mix(s, noise[int(torch.randint(len(noise), (1,), generator=g))], u(-5, 5))

    def batches(epoch: int):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            if len(idx) >= 2:
                yield idx

    def step(idx: torch.Tensor) -> float:
        a, p, neg = [], [], []
        for i in idx.tolist():
            a.append(noisy(specs[i], 0.5))
            p.append(noisy(specs[i], 1.0))
            if float(torch.rand(1, generator=g)) < 0.5:
                ratio = u(0.5, 0.8) if float(torch.rand(1, generator=g)) < 0.5 else u(1.2, 1.5)
                other = _stretch(specs[i], ratio, axis=int(torch.randint(2, (1,), generator=g)))
            else:
                j = (i + 1 + int(torch.randint(max(1, n - 1), (1,), generator=g))) % n
                other = specs[j]
            neg.append(noisy(other, 0.5))
        batch = [torch.stack(v).to(device) for v in (a, p, neg)]
        return optimizer_step(opt, loss_fn(*(net(v) for v in batch)))

    if trainer is not None:
        trainer.run(step, batches, epochs, desc=desc, checkpoint=checkpoint, state={"net": net, "opt": opt},
                    fingerprint=fingerprint)
    else:
        run_epochs(step, None, batches, epochs, desc=desc)
    net.eval()
    with torch.no_grad():
        return torch.cat([net(specs[s:s + 64].to(device)).cpu() for s in range(0, n, 64)]).double().numpy()
