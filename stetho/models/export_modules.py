"""Pure-torch pieces the detectors' export modules are built from (``Detector.export_module``).

Each piece computes what the training code computes, in operators that both exporters take: the
ONNX exporter of torch 2.13 (``torch.onnx.export(dynamo=True)``, which maps ``torch.stft`` to the
ONNX ``STFT`` operator of opset >= 17 once the complex result is viewed as real pairs) and
``torch.jit.script`` (so the clip length stays free; a trace would freeze it).
"""

from __future__ import annotations

import copy

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
    one in training). With ``from_spectrum`` set (:func:`spectrum_input`), ``forward`` takes
    the power spectrum ``(n_frames, n_fft // 2 + 1)`` instead of the samples.

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
        #: ``True``: ``forward`` takes the power spectrum frames (:meth:`spectrum_spec`), not samples.
        self.from_spectrum = False

    def spectrum_spec(self) -> dict[str, object]:
        """What the spectrum input of :func:`spectrum_input` is, for a front end outside the
        graph: ``|X|²`` float32 ``(1 + n_samples // hop_length, n_fft // 2 + 1)`` of the frames
        of the signal zero-padded by ``n_fft // 2`` at both ends, times a periodic Hann window
        (``torch.stft(center=True, pad_mode="constant")``)."""
        return {"kind": "stft_power", "n_fft": self.n_fft, "hop_length": self.hop_length, "window": "hann_periodic",
                "center": True, "pad_mode": "constant", "dtype": "float32"}

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.from_spectrum:
            power = waveform
        else:
            spec = torch.stft(waveform.unsqueeze(0), self.n_fft, self.hop_length, window=self.window, center=True,
                              pad_mode="constant", return_complex=True)
            # (1, bins, frames, 2): the ONNX exporter handles a real view of the complex STFT only
            power = torch.view_as_real(spec).square().sum(-1)[0].transpose(0, 1)  # (frames, bins)
        if self.power != 2.0:
            power = power.sqrt().pow(self.power)
        mel = torch.matmul(power, self.filters)
        if self.floor_max:
            return self.scale * torch.log10(torch.clamp(mel, min=self.eps))
        return self.scale * torch.log10(mel + self.eps)


def spectrum_input(module: nn.Module) -> tuple[nn.Module, dict[str, object]] | None:
    """A copy of a detector's export module whose waveform input is the power spectrum its
    :class:`LogMelModule` would compute (everything after the STFT stays in the module), and
    that spectrum's definition (:meth:`LogMelModule.spectrum_spec`); ``None`` when the module
    has no (single) log-mel front end.

    onnxruntime's ``STFT`` kernel is ~5x slower than ``torch.stft`` or numpy's ``rfft`` of the
    framed signal, so the edge scorer computes the spectrum in numpy and runs this graph."""
    if hasattr(module, "spectrum_input"):  # a module with its own front end (the discriminative model)
        return module.spectrum_input()
    fronts = [m for m in module.modules() if isinstance(m, LogMelModule)]
    if len(fronts) != 1:
        return None
    spec = fronts[0].spectrum_spec()
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, LogMelModule):
            m.from_spectrum = True
    return module, spec


def stack_frames(logmel: torch.Tensor, n_frames: int, hop: int) -> torch.Tensor:
    """Stacked-frame vectors ``(count, n_frames * n_mels)`` of a log-mel ``(T, n_mels)``, in the
    DCASE order of :class:`stetho.models.training.FrameVectors` (``count = (T - n_frames) // hop
    + 1``); slices and a concatenation, which export with a free ``T``."""
    count = (logmel.shape[0] - n_frames) // hop + 1
    parts = [logmel[i: i + (count - 1) * hop + 1: hop] for i in range(n_frames)]
    return torch.cat(parts, dim=1)


__all__ = ["LogMelModule", "spectrum_input", "stack_frames"]
