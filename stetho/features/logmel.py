"""Log-mel spectrograms in torch (batched) and frame stacking.

The mel power spectrogram reproduces ``librosa.feature.melspectrogram`` (Hann window, periodic;
``center=True`` with zero padding as librosa >= 0.10; Slaney mel filters from
``librosa.filters.mel``), then ``10 * log10`` as in the DCASE baselines. Layout convention in
stetho: a log-mel is **time-major**, shape ``(n_frames, n_mels)``, so that stacking ``k``
consecutive frames is a reshape of a contiguous slice and gives the DCASE vector order
(``vector[t * n_mels + m] = logmel[t0 + t, m]``).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch

#: The floor of the log (the DCASE baselines use ``sys.float_info.epsilon``).
EPS = sys.float_info.epsilon


@dataclass(frozen=True)
class LogMelParams:
    """Parameters of the log-mel front end.

    Attributes:
        sr: sample rate in Hz.
        n_fft: FFT size in samples (also the window length).
        hop_length: frame hop in samples.
        n_mels: number of mel bands.
        fmin: lowest mel-filter frequency in Hz.
        fmax: highest mel-filter frequency in Hz (``None`` = sr / 2).
        power: exponent of the magnitude (2.0 = power spectrogram).
        log_floor: ``"max"`` for ``10 log10(max(mel, eps))`` (seeds 001/003) or ``"add"`` for
            ``10 log10(mel + eps)`` (seed 000).
    """

    sr: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None
    power: float = 2.0
    log_floor: str = "max"

    def to_dict(self) -> dict:
        return asdict(self)

    def n_frames(self, n_samples: int) -> int:
        """Number of frames for a signal of ``n_samples`` (``center=True``)."""
        return 1 + n_samples // self.hop_length


@lru_cache(maxsize=8)
def mel_filterbank(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """Slaney-normalised mel filters from librosa, shape ``(n_fft // 2 + 1, n_mels)``, float32."""
    import librosa

    fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    return torch.from_numpy(np.ascontiguousarray(fb.T, dtype=np.float32))


@lru_cache(maxsize=8)
def _window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft, periodic=True, dtype=torch.float32)


def mel_power(y: torch.Tensor, params: LogMelParams = LogMelParams()) -> torch.Tensor:
    """Mel power spectrogram of a batch of equal-length signals.

    Args:
        y: float32 tensor ``(batch, n_samples)`` or ``(n_samples,)``.
        params: front-end parameters.

    Returns:
        ``(batch, n_frames, n_mels)`` (or ``(n_frames, n_mels)`` for 1-D input), float32.
    """
    squeeze = y.dim() == 1
    if squeeze:
        y = y.unsqueeze(0)
    spec = torch.stft(
        y,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        window=_window(params.n_fft).to(y.device),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (batch, n_fft//2+1, n_frames)
    mag = spec.abs() if params.power != 2.0 else None
    power = spec.real.square() + spec.imag.square() if mag is None else mag.pow(params.power)
    if y.device.type == "cpu":
        # The filterbank is sparse (each FFT bin feeds at most two triangular filters, ~1,000 of
        # 65,664 weights are non-zero): a sparse matmul is ~8x faster than the dense one on CPU.
        fb_t = _sparse_filterbank_t(params.sr, params.n_fft, params.n_mels, params.fmin, params.fmax)
        b, n_bins, t = power.shape
        flat = power[0] if b == 1 else power.transpose(0, 1).reshape(n_bins, b * t)
        mel = torch.sparse.mm(fb_t, flat).reshape(params.n_mels, b, t).permute(1, 2, 0)
    else:
        fb = mel_filterbank(params.sr, params.n_fft, params.n_mels, params.fmin, params.fmax).to(y.device)
        mel = torch.matmul(power.transpose(1, 2), fb)
    # mel: (batch, n_frames, n_mels)
    return mel[0] if squeeze else mel


@lru_cache(maxsize=8)
def _sparse_filterbank_t(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """The mel filters as a sparse COO tensor ``(n_mels, n_fft // 2 + 1)``."""
    return mel_filterbank(sr, n_fft, n_mels, fmin, fmax).T.contiguous().to_sparse().coalesce()


def to_db(mel: torch.Tensor, params: LogMelParams = LogMelParams()) -> torch.Tensor:
    """``10 log10`` of a mel power spectrogram with the floor chosen in ``params.log_floor``."""
    scale = 20.0 / params.power
    if params.log_floor == "max":
        return scale * torch.log10(torch.clamp(mel, min=EPS))
    if params.log_floor == "add":
        return scale * torch.log10(mel + EPS)
    raise ValueError(f"log_floor must be 'max' or 'add', got {params.log_floor!r}")


def logmel(y: torch.Tensor | np.ndarray, params: LogMelParams = LogMelParams()) -> torch.Tensor:
    """Log-mel spectrogram (dB) of one signal ``(n_samples,)`` or a batch ``(batch, n_samples)``.

    Returns:
        float32 tensor ``(n_frames, n_mels)`` or ``(batch, n_frames, n_mels)``.
    """
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    with torch.no_grad():
        return to_db(mel_power(y, params), params)


def stack_frames(lm: np.ndarray | torch.Tensor, n_frames: int = 5, hop: int = 1):
    """Concatenate ``n_frames`` consecutive frames into one vector, moving by ``hop`` frames.

    Args:
        lm: log-mel ``(T, n_mels)`` (time-major).
        n_frames: frames per vector (context width).
        hop: frame hop between consecutive vectors.

    Returns:
        ``((T - n_frames) // hop + 1, n_frames * n_mels)``, same type as ``lm``;
        10 s at 16 kHz (313 frames) with 5 frames gives 309 vectors of 640 (DCASE baseline).
    """
    t, n_mels = lm.shape
    if t < n_frames:
        raise ValueError(f"log-mel has {t} frames, fewer than the {n_frames} one vector needs")
    count = (t - n_frames) // hop + 1
    if isinstance(lm, torch.Tensor):
        return lm.unfold(0, n_frames, hop).transpose(1, 2).reshape(count, n_frames * n_mels)
    windows = np.lib.stride_tricks.sliding_window_view(lm, (n_frames, n_mels))[::hop, 0]
    return windows.reshape(count, n_frames * n_mels)
