"""The log-mel front end of the detectors that learn from log-mels (AE, ARAE, BiGAN, CANDE-CP).

Each of these detectors takes the same front-end parameters (``sr``, ``n_fft``, ``hop_length``,
``n_mels``; CANDE-CP also ``log_floor``) and the common ``channel``; :class:`LogMelDetector`
builds one :class:`LogMelFrontEnd` from them and extracts with it, so the four share one
``extract``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from stetho.datasets.clip import Clip
from stetho.features import (
    AudioOptions, Extracted, FeatureCache, LogMelParams, extract_logmels, logmel_of_signal, min_samples_for,
)
from stetho.models.base import Detector


@dataclass(frozen=True)
class LogMelFrontEnd:
    """Log-mels of clips with fixed settings.

    Attributes:
        params: the log-mel settings (sample rate in Hz, FFT size and hop in samples, mel bands,
            log floor); part of the feature cache's key.
        audio: the channel read and the fewest frames a clip must give (shorter clips are refused,
            naming the file).
    """

    params: LogMelParams
    audio: AudioOptions

    def extract(
        self, clips: Sequence[Clip], resample: bool = True, cache: FeatureCache | None = None,
        progress: bool = False, raise_on_error: bool = True, desc: str = "log-mel",
    ) -> Extracted:
        """Log-mels ``(frames, n_mels)`` of ``clips`` (:func:`stetho.features.extract_logmels`;
        ``resample``: resample files of another rate, else refuse them)."""
        return extract_logmels(clips, self.params, replace(self.audio, resample=resample), cache=cache,
                               progress=progress, raise_on_error=raise_on_error, desc=desc)


class LogMelDetector(Detector):
    """A detector whose features are log-mels, from its parameters ``sr``, ``n_fft``,
    ``hop_length``, ``n_mels`` (``log_floor`` when it takes one) and ``channel``."""

    #: The parameter giving the fewest frames a clip must have (one stacked vector or patch).
    min_frames_param: ClassVar[str] = "n_frames"

    def __init__(self, *, n_mels: int, n_fft: int, hop_length: int, sr: int, **common: Any) -> None:
        """The front-end parameters (each subclass declares them, with its defaults, in its own
        constructor) and the common ones."""
        super().__init__(**common)
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.sr = sr

    @property
    def logmel_params(self) -> LogMelParams:
        floor = {"log_floor": self.log_floor} if "log_floor" in self.param_defaults() else {}
        return LogMelParams(sr=self.sr, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels, **floor)

    @property
    def audio_options(self) -> AudioOptions:
        return AudioOptions(channel=self.channel, min_frames=getattr(self, self.min_frames_param))

    @property
    def frontend(self) -> LogMelFrontEnd:
        """The front end of the current parameters (set ``channel`` after loading: it is used)."""
        return LogMelFrontEnd(self.logmel_params, self.audio_options)

    def extract(
        self, clips: Sequence[Clip], resample: bool = True, cache: FeatureCache | None = None,
        progress: bool = False, raise_on_error: bool = True, desc: str = "log-mel",
    ) -> Extracted:
        """Log-mels of ``clips`` by :attr:`frontend`; a clip shorter than ``min_frames_param``
        frames is refused (see :meth:`Detector.extract`)."""
        return self.frontend.extract(clips, resample, cache, progress, raise_on_error, desc)

    @property
    def signal_spec(self) -> tuple[int, int]:
        """``(sr, fewest samples)``: a full FFT frame and ``min_frames_param`` frames."""
        return self.sr, min_samples_for(self.logmel_params, self.audio_options.min_frames)

    def signal_features(self, y: np.ndarray, path: str | Path = "<signal>") -> np.ndarray:
        """The log-mel of one validated signal at ``sr`` Hz, as :meth:`extract` computes a file's."""
        return logmel_of_signal(y, self.logmel_params, path)


__all__ = ["LogMelDetector", "LogMelFrontEnd"]
