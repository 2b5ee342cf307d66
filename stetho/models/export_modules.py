"""Pure-torch pieces the detectors' export modules are built from (``Detector.export_module``).

Each piece computes what the training code computes, in operators that both exporters take: the
ONNX exporter of torch 2.13 (``torch.onnx.export(dynamo=True)``, which maps ``torch.stft`` to the
ONNX ``STFT`` operator of opset >= 17 once the complex result is viewed as real pairs) and
``torch.jit.script`` (so the clip length stays free; a trace would freeze it).
"""

from __future__ import annotations

import torch
from torch import nn

from stetho.features.logmel import EPS, LogMelParams, mel_filterbank


class LogMelModule(nn.Module):
    """The log-mel front end of :func:`stetho.features.logmel.logmel` for one waveform.

    ``forward(waveform (n_samples,) float32) -> (n_frames, n_mels) float32`` with ``n_frames =
    1 + n_samples // hop_length`` (a centred, zero-padded STFT with a periodic Hann window),
    the power spectrum (``|X|**power``), librosa's Slaney mel filters as a constant
    ``(n_fft // 2 + 1, n_mels)`` buffer, and the dB of ``params.log_floor``. Equal to the
    training features up to float32 rounding (the filterbank is a dense matmul here, a sparse
    one in training).

    Args:
        params: the detector's log-mel settings (sample rate in Hz, FFT size and hop in samples,
            mel bands, fmin/fmax in Hz, power, log floor).
    """

    def __init__(self, params: LogMelParams) -> None:
        super().__init__()
        if params.log_floor not in ("max", "add"):
            raise ValueError(f"log_floor must be 'max' or 'add', got {params.log_floor!r}")
        self.n_fft = int(params.n_fft)
        self.hop_length = int(params.hop_length)
        self.power = float(params.power)
        self.floor_max = params.log_floor == "max"
        self.scale = 20.0 / float(params.power)
        self.eps = float(EPS)
        self.register_buffer("window", torch.hann_window(self.n_fft, periodic=True, dtype=torch.float32))
        self.register_buffer("filters", mel_filterbank(params.sr, params.n_fft, params.n_mels, params.fmin,
                                                       params.fmax).clone())

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(waveform.unsqueeze(0), self.n_fft, self.hop_length, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        # (1, bins, frames, 2): the ONNX exporter handles a real view of the complex STFT only
        power = torch.view_as_real(spec).square().sum(-1)[0]
        if self.power != 2.0:
            power = power.sqrt().pow(self.power)
        mel = torch.matmul(power.transpose(0, 1), self.filters)
        if self.floor_max:
            return self.scale * torch.log10(torch.clamp(mel, min=self.eps))
        return self.scale * torch.log10(mel + self.eps)


def stack_frames(logmel: torch.Tensor, n_frames: int, hop: int) -> torch.Tensor:
    """Stacked-frame vectors ``(count, n_frames * n_mels)`` of a log-mel ``(T, n_mels)``, in the
    DCASE order of :class:`stetho.models.training.FrameVectors` (``count = (T - n_frames) // hop
    + 1``); slices and a concatenation, which export with a free ``T``."""
    count = (logmel.shape[0] - n_frames) // hop + 1
    parts = [logmel[i: i + (count - 1) * hop + 1: hop] for i in range(n_frames)]
    return torch.cat(parts, dim=1)


__all__ = ["LogMelModule", "stack_frames"]
