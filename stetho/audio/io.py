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


def audio_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of every format libsndfile reads here, e.g.
    ``.wav``, ``.flac``, ``.ogg``, ``.mp3``, ``.aiff``: what the dataset layouts scan for."""
    from stetho.audio import _formats

    return _formats.EXTENSIONS


#: Resampler used when a file's rate differs from the requested one: soxr "HQ"
#: (the default quality of librosa.resample; 95 % passband, >= 100 dB stop-band rejection).
RESAMPLER = "soxr_hq"


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file (rate, channels, frames) without reading samples.

    Raises:
        AudioError: the file is missing or not an audio file libsndfile can read.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise AudioError(path, "zero-length file (0 bytes)")
    try:
        return sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(path, f"cannot be read as audio ({_short(exc)})") from None


def read_audio(
    path: str | Path,
    sr: int = 16000,
    channel: int = 0,
    resample: bool = True,
    min_samples: int = 1,
) -> np.ndarray:
    """Read one channel of an audio file as float32 samples at ``sr`` Hz, validating it.

    Args:
        path: audio file (any format libsndfile reads; WAV in practice).
        sr: wanted sample rate in Hz.
        channel: channel to keep (0-based) when the file has several; a mono file is read as
            it is whatever ``channel`` says (the option selects among several channels).
        resample: resample other rates with soxr HQ; if False, such files are refused.
        min_samples: shortest acceptable length in samples, after resampling
            (e.g. ``n_fft`` so at least one full FFT frame fits).

    Returns:
        float32 array of shape ``(n_samples,)`` in [-1, 1].

    Raises:
        AudioError: unreadable, zero-length, too short, NaN/inf samples, missing channel,
            or a different rate with ``resample=False``. The message names the file.
    """
    path = Path(path)
    info = audio_info(path)
    if info.frames == 0:
        raise AudioError(path, "zero-length file (no samples)")
    if info.channels == 1:
        channel = 0
    if not 0 <= channel < info.channels:
        raise AudioError(
            path, f"has {info.channels} channel(s); channel {channel} was requested (--channel)"
        )
    if info.samplerate != sr and not resample:
        raise AudioError(
            path, f"sample rate is {info.samplerate} Hz, expected {sr} Hz (resampling is off)"
        )
    try:
        if info.subtype == "PCM_16":
            # Decoding to int16 and scaling in NumPy is ~1.6x faster than libsndfile's float
            # conversion and gives the same values (x / 32768 is exact in float32).
            data, file_sr = sf.read(str(path), dtype="int16", always_2d=True)
            y = np.multiply(data[:, channel], np.float32(1.0 / 32768.0), dtype=np.float32)
        else:
            data, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
            y = np.ascontiguousarray(data[:, channel])
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(path, f"cannot be decoded ({_short(exc)})") from None
    if not np.isfinite(y).all():
        bad = int(np.count_nonzero(~np.isfinite(y)))
        raise AudioError(path, f"contains {bad} NaN/inf sample(s)")
    if file_sr != sr:
        y = resample_audio(y, file_sr, sr)
    if y.shape[0] < min_samples:
        raise AudioError(
            path,
            f"too short: {y.shape[0]} samples at {sr} Hz, at least {min_samples} are needed "
            "(one FFT frame / the frames one feature vector spans)",
        )
    return y


def resample_audio(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D float signal from ``sr_in`` to ``sr_out`` Hz with soxr (HQ quality)."""
    import soxr  # imported lazily: only needed for off-rate files

    return np.asarray(soxr.resample(y, sr_in, sr_out, quality="HQ"), dtype=np.float32)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
