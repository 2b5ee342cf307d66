"""Reading and writing audio files (soundfile), with validation and resampling."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from stetho.errors import AudioError


def write_wav(path: str | Path, y: np.ndarray, sr: int) -> None:
    """Write a mono signal as 16-bit PCM WAV, atomically (temp file + rename).

    Args:
        path: destination file; parent folders are created.
        y: float samples in [-1, 1] (clipped), shape ``(n_samples,)``.
        sr: sample rate in Hz.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y)
    if y.ndim != 1:
        raise AudioError(path, f"write_wav expects a mono 1-D signal, got shape {y.shape}")
    pcm = np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sf.write(tmp, pcm, sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
