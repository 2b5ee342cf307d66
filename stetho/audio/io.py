"""Reading and writing audio files (soundfile), with validation and resampling.

Before a file reaches libsndfile its first bytes are checked against the headers of the formats
libsndfile reads: junk named ``.wav`` / ``.mp3`` is refused with a clear message instead of being
handed to libsndfile's MP3 decoder (mpg123), which prints "Note: Illegal Audio-MPEG-Header" lines on
the process's stderr and ends with libsndfile's misleading "File does not exist". Sniffing was chosen
over redirecting file descriptor 2 around every call: fd 2 is shared by every thread (the
extraction workers, the progress bar, log messages), so a redirect would hold up other threads'
output. Only MP3 data (and files of header-less formats, which libsndfile may try as MP3) is
decoded with fd 2 captured, one file at a time: mpg123 also prints on damaged real MP3 files. Its
lines go into the error message or the debug log; anything else written meanwhile is passed on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from stetho.errors import AudioError, ConfigError
from stetho.fileio import atomic_path

log = logging.getLogger(__name__)

#: Lowest accepted sample rate in Hz: a header claiming less is damaged or not machine audio, and
#: resampling it (e.g. 1 Hz to 16 kHz) would need thousands of times the file's memory.
MIN_SAMPLE_RATE = 1000

#: Largest accepted magnitude of float samples (40 dB above full scale): float files hold samples in
#: [-1, 1], a little more after gain; beyond this they were written as integers (x 32767) or are junk.
MAX_FLOAT_PEAK = 100.0


def write_wav(path: str | Path, y: np.ndarray, sr: int) -> None:
    """Write a mono signal as 16-bit PCM WAV, atomically (temp file + rename, ordinary permissions).

    Args:
        path: destination file; parent folders are created.
        y: finite float samples in [-1, 1] (clipped), shape ``(n_samples,)``.
        sr: sample rate in Hz (a positive integer).

    Raises:
        AudioError: ``y`` is not 1-D or holds NaN/inf, or ``sr`` is not a positive integer.
        StorageError: the disk is full or the folder cannot be written.
    """
    path = Path(path)
    y = np.asarray(y)
    if y.ndim != 1:
        raise AudioError(path, f"write_wav expects a mono 1-D signal, got shape {y.shape}")
    if not np.isfinite(y).all():
        raise AudioError(path, f"cannot write {int(np.count_nonzero(~np.isfinite(y)))} NaN/inf sample(s)")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(path, f"cannot write sample rate {sr!r}: expected a positive whole number of Hz")
    pcm = np.round(np.clip(y, -1.0, 1.0) * 32767.0).astype(np.int16)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), pcm, int(sr), subtype="PCM_16", format="WAV")


def audio_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of every format libsndfile reads here, e.g.
    ``.wav``, ``.flac``, ``.ogg``, ``.mp3``, ``.aiff``: what the dataset layouts scan for."""
    from stetho.audio import _formats

    return _formats.EXTENSIONS


#: Resampler used when a file's rate differs from the requested one: soxr "HQ"
#: (the default quality of librosa.resample; 95 % passband, >= 100 dB stop-band rejection).
RESAMPLER = "soxr_hq"

# ---------------------------------------------------------------- header sniffing

#: Leading bytes of the formats libsndfile reads (its own detection looks at the same bytes).
_MAGIC = (
    (b"RIFF", "WAV"), (b"RIFX", "WAV"), (b"RF64", "WAV"), (b"BW64", "WAV"), (b"riff", "W64"),
    (b"fLaC", "FLAC"), (b"OggS", "OGG"), (b"FORM", "AIFF"), (b".snd", "AU"), (b"dns.", "AU"),
    (b"caff", "CAF"), (b"NIST_1A", "NIST"), (b"Creative Voice File", "VOC"), (b" paf", "PAF"),
    (b"fap ", "PAF"), (b"PVF1", "PVF"), (b"2BIT", "AVR"), (b"Extended Instrument", "XI"),
    (b"ALaw", "WVE"), (b"\xf0\x7e", "SDS"), (b"MATLAB 5.0", "MAT5"), (b"ID3", "MP3"),
    (b"\x64\xa3\x01\x00", "IRCAM"), (b"\x00\x01\xa3\x64", "IRCAM"), (b"\x64\xa3\x02\x00", "IRCAM"),
    (b"\x00\x02\xa3\x64", "IRCAM"), (b"\x64\xa3\x03\x00", "IRCAM"), (b"\x00\x03\xa3\x64", "IRCAM"),
    (b"\x64\xa3\x04\x00", "IRCAM"), (b"\x00\x04\xa3\x64", "IRCAM"),
)

#: Extensions of formats with no recognisable header (HTK, SD2, MPC2000, raw PCM): such files are
#: left to libsndfile; every other file must start with one of the headers above.
_NO_MAGIC_EXTENSIONS = frozenset({".htk", ".sd2", ".mpc2k", ".raw", ".pcm", ".mat"})

_HEAD_BYTES = 4096

# MPEG audio frame headers: kbit/s by (version is MPEG-1, layer) and sample rates by version.
_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame_length(h: bytes) -> int | None:
    """Length in bytes of the MPEG audio frame whose 4-byte header is ``h``, or None if ``h`` is
    not a valid header (sync word, no reserved or free-format fields)."""
    if len(h) < 4 or h[0] != 0xFF or h[1] & 0xE0 != 0xE0:
        return None
    version, layer_bits = (h[1] >> 3) & 3, (h[1] >> 1) & 3
    bitrate_idx, rate_idx, padding = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
    if version == 1 or layer_bits == 0 or bitrate_idx in (0, 15) or rate_idx == 3:
        return None
    layer = 4 - layer_bits
    kbps = _KBPS[(version == 3, layer)][bitrate_idx]
    rate = _MPEG_RATES[version][rate_idx]
    if layer == 1:
        return (12 * kbps * 1000 // rate + padding) * 4
    per_frame = 144 if layer == 2 or version == 3 else 72
    return per_frame * kbps * 1000 // rate + padding


def _sniff(head: bytes) -> str | None:
    """The format family whose header ``head`` starts with, or None."""
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    # A bare MP3 stream: two consecutive valid frame headers (one alone matches ~1 in 4000 junk files).
    first = _mpeg_frame_length(head[:4])
    if first is not None and _mpeg_frame_length(head[first : first + 4]) is not None:
        return "MP3"
    return None


def _first_bytes(head: bytes) -> str:
    shown = head[:8]
    text = shown.decode("ascii", "replace")
    hexes = " ".join(f"{b:02x}" for b in shown)
    return f'{hexes} ("{text}")' if all(32 <= b < 127 for b in shown) else hexes


# ---------------------------------------------------------------- truncation


def _open_source(source: Path | bytes):
    """A binary file object over ``source``: the file at a path, or bytes held in memory."""
    return open(source, "rb") if isinstance(source, Path) else io.BytesIO(source)


def _size(fh) -> int:
    return fh.seek(0, os.SEEK_END)


def _declared_frames(source: Path | bytes, head: bytes, fmt: str) -> tuple[int, int] | None:
    """``(declared, held)`` frames of a WAV (RIFF/RIFX) or AIFF file (at a path, or its bytes) whose
    header declares more sample data than the file holds, else None (complete, other formats,
    streaming placeholders)."""
    if fmt == "WAV" and head[:4] in (b"RIFF", b"RIFX"):
        endian = "<" if head[:4] == b"RIFF" else ">"
        block_align = 0
        with _open_source(source) as fh:
            file_size = _size(fh)
            pos = 12
            for _ in range(64):
                fh.seek(pos)
                chunk = fh.read(24)
                if len(chunk) < 8:
                    return None
                size = struct.unpack(endian + "I", chunk[4:8])[0]
                if chunk[:4] == b"fmt " and size >= 14 and len(chunk) >= 22:
                    block_align = struct.unpack(endian + "H", chunk[20:22])[0]  # nBlockAlign
                if chunk[:4] == b"data":
                    held_bytes = file_size - (pos + 8)
                    if size in (0, 0xFFFFFFFF) or size <= held_bytes or block_align <= 0:
                        return None
                    return size // block_align, held_bytes // block_align
                pos += 8 + size + (size & 1)
    if fmt == "AIFF" and head[8:12] in (b"AIFF", b"AIFC"):
        pos, comm_frames, ssnd_bytes, frame_bytes = 12, None, None, 0
        with _open_source(source) as fh:
            file_size = _size(fh)
            for _ in range(64):
                fh.seek(pos)
                chunk = fh.read(16)
                if len(chunk) < 8:
                    break
                cid, size = chunk[:4], struct.unpack(">I", chunk[4:8])[0]
                if cid == b"COMM" and len(chunk) >= 16:
                    channels, comm_frames, bits = struct.unpack(">HIH", chunk[8:16])
                    frame_bytes = channels * ((bits + 7) // 8)
                if cid == b"SSND":
                    ssnd_bytes = file_size - (pos + 16)  # after the offset and block-size fields
                    break
                pos += 8 + size + (size & 1)
        if comm_frames and ssnd_bytes is not None and frame_bytes > 0 and head[8:12] == b"AIFF":
            held = max(ssnd_bytes, 0) // frame_bytes
            if held < comm_frames:
                return comm_frames, held
    return None


def _truncated(path: Path, declared: int, held: int, sr: int) -> AudioError:
    return AudioError(
        path, kind="corrupt", reason=f"truncated: the header declares {declared} frames ({declared / sr:.2f} s) but the file holds "
              f"only {held} (an interrupted copy or download?)",
    )


# ---------------------------------------------------------------- decoder messages

_FD2_LOCK = threading.Lock()
#: How mpg123's lines start (libsndfile's MP3 decoder prints them on fd 2).
_DECODER_PREFIXES = (b"Note:", b"Warning:", b"Error:", b"[src/libmpg123", b"[libmpg123")


@contextlib.contextmanager
def _decoder_output(active: bool) -> Iterator[list[str]]:
    """While active, capture what native code writes on fd 2; yield a list that receives the
    decoder's (mpg123's) lines afterwards; pass any other output on to the real stderr."""
    lines: list[str] = []
    if not active:
        yield lines
        return
    with _FD2_LOCK, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            other = []
            for line in tmp.read().splitlines(keepends=True):
                if line.lstrip().startswith(_DECODER_PREFIXES):
                    lines.append(line.decode("utf-8", "replace").strip())
                else:
                    other.append(line)
            if other:
                os.write(2, b"".join(other))


def _with_decoder_text(text: str, lines: list[str]) -> str:
    return f"{text}; decoder: {lines[0][:160]}" if lines else text


# ---------------------------------------------------------------- reading


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header of an audio file (rate, channels, frames) without reading samples.

    The first bytes must be the header of a format libsndfile reads (files with extensions of
    header-less formats such as ``.htk`` are left to libsndfile), and a WAV or AIFF file must hold
    as many frames as its header declares.

    Raises:
        AudioError: the file is missing, empty, not an audio file libsndfile can read, or truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "file does not exist" + (" (it is a folder)" if path.is_dir() else ""), "not_found")
    try:
        with open(path, "rb") as fh:
            head = fh.read(_HEAD_BYTES)
    except OSError as exc:
        raise AudioError(path, f"cannot be opened ({exc.strerror or exc})", "not_found") from None
    return _info(path, path, head)


def _info(source: Path | bytes, path: Path, head: bytes) -> sf._SoundFileInfo:
    """:func:`audio_info` of ``source`` (a file, or its bytes in memory) named ``path`` in
    messages, whose first bytes are ``head``."""
    if not head:
        raise AudioError(path, "zero-length file (0 bytes)", "empty")
    fmt = _sniff(head)
    if fmt is None and path.suffix.lower() not in _NO_MAGIC_EXTENSIONS:
        raise AudioError(
            path, "cannot be read as audio: unrecognised format, not one soundfile reads "
                  f"(first bytes: {_first_bytes(head)})", "not_audio",
        )
    with _decoder_output(fmt in ("MP3", None)) as decoder:
        try:
            info = sf.info(str(source) if isinstance(source, Path) else io.BytesIO(source))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            info, error = None, exc
    if info is None:
        text = _short(error)
        if "does not exist" in text or "not a regular file" in text:
            # libsndfile's text when a decoder (e.g. MP3) gave up on a file that does exist
            text = f"damaged or not {fmt or 'audio'} data"
        raise AudioError(path, f"cannot be read as audio ({_with_decoder_text(text, decoder)})", "not_audio")
    if decoder:
        log.debug("%s: MP3 decoder: %s", path, " | ".join(decoder))
    short = _declared_frames(source, head, fmt or "")
    if short is not None:
        raise _truncated(path, *short, info.samplerate)
    if info.format == "OGG" and "ended unexpectedly" in (info.extra_info or ""):
        raise AudioError(path, "truncated: the Ogg stream stops before its end-of-stream mark (an interrupted "
                               "copy or download?)", "corrupt")
    return info


def read_audio(
    path: str | Path,
    sr: int = 16000,
    channel: int = 0,
    resample: bool = True,
    min_samples: int = 1,
) -> np.ndarray:
    """Read one channel of an audio file as float32 samples at ``sr`` Hz, validating it.

    Args:
        path: audio file (any format libsndfile reads: WAV, FLAC, OGG, MP3, AIFF ...).
        sr: wanted sample rate in Hz.
        channel: channel to keep (0-based, never negative) when the file has several; a mono
            file is read as it is whatever ``channel`` says (the option selects among several).
        resample: resample other rates with soxr HQ; if False, such files are refused.
        min_samples: shortest acceptable length in samples, after resampling
            (e.g. ``n_fft`` so at least one full FFT frame fits).

    Returns:
        float32 array of shape ``(n_samples,)``: in [-1, 1] for integer formats; float formats
        as stored (finite, at most :data:`MAX_FLOAT_PEAK` in magnitude).

    Raises:
        AudioError: unreadable, unrecognised format, truncated, zero-length, too short, NaN/inf or
            far out-of-range samples, a sample rate below :data:`MIN_SAMPLE_RATE`, missing channel,
            or a different rate with ``resample=False``.
            The message names the file.
        ConfigError: ``channel`` is negative or not a whole number.
    """
    return load_audio(path, sr, channel, resample, min_samples)[0]


def load_audio(
    path: str | Path,
    sr: int = 16000,
    channel: int = 0,
    resample: bool = True,
    min_samples: int = 1,
) -> tuple[np.ndarray, int]:
    """:func:`read_audio`, also returning the file's native sample rate in Hz (before resampling).

    Returns:
        ``(samples, native_sr)``: float32 samples ``(n_samples,)`` at ``sr`` Hz, and the rate the
        file was recorded at (``native_sr != sr`` means the samples were resampled).
    """
    check_channel(channel)
    path = Path(path)
    return _decode(path, path, audio_info(path), sr, channel, resample, min_samples)


def decode_audio(
    data: bytes,
    name: str | Path = "<bytes>",
    sr: int = 16000,
    channel: int = 0,
    resample: bool = True,
    min_samples: int = 1,
) -> tuple[np.ndarray, int]:
    """:func:`load_audio` of an audio file's bytes held in memory (an upload): the same checks
    (header sniffing, truncation, NaN/inf, range, rate, length) with nothing written to disk.

    Args:
        data: the whole file's bytes.
        name: what messages call it (the uploaded file's name); its extension matters only for
            header-less formats, as a path's does.

    Raises:
        AudioError: as :func:`load_audio`, naming ``name``.
    """
    check_channel(channel)
    path = Path(name)
    data = bytes(data)
    return _decode(data, path, _info(data, path, data[:_HEAD_BYTES]), sr, channel, resample, min_samples)


def _decode(source: Path | bytes, path: Path, info: sf._SoundFileInfo, sr: int, channel: int, resample: bool,
            min_samples: int) -> tuple[np.ndarray, int]:
    """:func:`load_audio` of ``source`` (a file or its bytes) whose header is ``info``."""
    if info.frames == 0:
        raise AudioError(path, "zero-length file (no samples)", "empty")
    if info.channels == 1:
        channel = 0
    if not channel < info.channels:
        raise AudioError(
            path, f"has {info.channels} channel(s); channel {channel} was requested (--channel)", "channel",
        )
    _check_rate(path, info.samplerate, sr, resample, "in the header ")
    error = None
    with _decoder_output(info.format == "MP3") as decoder:
        try:
            if info.subtype == "PCM_16":
                # Decoding to int16 and scaling in NumPy is ~1.6x faster than libsndfile's float
                # conversion and gives the same values (x / 32768 is exact in float32).
                data, file_sr = sf.read(_sf_source(source), dtype="int16", always_2d=True)
                y = np.multiply(data[:, channel], np.float32(1.0 / 32768.0), dtype=np.float32)
            else:
                data, file_sr = sf.read(_sf_source(source), dtype="float32", always_2d=True)
                y = np.ascontiguousarray(data[:, channel])
        except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
            error = exc
    if error is not None:
        raise AudioError(path, f"cannot be decoded ({_with_decoder_text(_short(error), decoder)})", "corrupt")
    if decoder:
        log.debug("%s: MP3 decoder: %s", path, " | ".join(decoder))
    if data.shape[0] < info.frames and info.format != "MP3":  # an MP3's frame count may be an estimate
        raise _truncated(path, info.frames, data.shape[0], info.samplerate)
    return check_signal(y, int(file_sr), path, sr, resample, min_samples, rate_checked=True), int(file_sr)


def check_signal(
    y: np.ndarray, native_sr: int, path: str | Path = "<array>", sr: int = 16000, resample: bool = True,
    min_samples: int = 1, rate_checked: bool = False,
) -> np.ndarray:
    """Validate decoded mono samples as :func:`load_audio` validates a file's, and bring them to
    ``sr`` Hz: finite, within :data:`MAX_FLOAT_PEAK`, a plausible rate (other than ``sr`` only
    with ``resample``), at least ``min_samples`` long after resampling.

    Args:
        y: samples ``(n_samples,)`` (any float or integer dtype; integers are taken as they are).
        native_sr: their sample rate in Hz.
        path: what messages call them.
        rate_checked: the rate was checked already (by :func:`load_audio`).

    Returns:
        float32 samples ``(n_samples,)`` at ``sr`` Hz.

    Raises:
        AudioError: a shape other than 1-D, no samples, NaN/inf or far out-of-range samples, an
            implausible rate, another rate with ``resample=False``, too short.
    """
    path = Path(path)
    if not rate_checked:
        y = np.asarray(y)
        if y.ndim != 1:
            raise AudioError(path, f"expected mono samples of shape (n_samples,), got shape {y.shape}", "not_audio")
        if y.size == 0:
            raise AudioError(path, "zero-length signal (no samples)", "empty")
        if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
            raise AudioError(path, f"samples of dtype {y.dtype} are not numbers", "not_audio")
        _check_rate(path, native_sr, sr, resample)
        y = np.ascontiguousarray(y, dtype=np.float32)
    file_sr = native_sr
    if not np.isfinite(y).all():
        bad = int(np.count_nonzero(~np.isfinite(y)))
        raise AudioError(path, f"contains {bad} NaN/inf sample(s)", "non_finite")
    peak = float(np.abs(y).max())
    if peak > MAX_FLOAT_PEAK:
        raise AudioError(
            path, f"sample values reach {peak:.3g}, over {MAX_FLOAT_PEAK:g}x full scale: float samples "
                  "belong in [-1, 1] (were integer values written into a float file?)", "out_of_range",
        )
    if file_sr != sr:
        y = resample_audio(y, file_sr, sr)
    if y.shape[0] < min_samples:
        raise AudioError(
            path,
            f"too short: {y.shape[0]} samples at {sr} Hz, at least {min_samples} are needed "
            "(one FFT frame / the frames one feature vector spans)", "too_short",
        )
    return y


def _check_rate(path: Path, rate: object, sr: int, resample: bool, where: str = "") -> None:
    """A plausible sample ``rate`` (Hz), equal to ``sr`` unless ``resample``."""
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        raise AudioError(path, f"sample rate {rate!r} is not a whole number of Hz", "sample_rate")
    if rate < MIN_SAMPLE_RATE:
        raise AudioError(
            path, f"sample rate {rate} Hz {where}is implausibly low for audio (at least {MIN_SAMPLE_RATE} Hz is "
                  "expected)", "sample_rate",
        )
    if rate != sr and not resample:
        raise AudioError(path, f"sample rate is {rate} Hz, expected {sr} Hz (resampling is off)", "sample_rate")


def _sf_source(source: Path | bytes):
    """What soundfile reads: a file name, or a file object over bytes in memory."""
    return str(source) if isinstance(source, Path) else io.BytesIO(source)


def check_channel(channel: object) -> int:
    """``channel`` if it is a whole number >= 0, else :class:`ConfigError` (the ``--channel`` option)."""
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0:
        raise ConfigError(f"channel must be a whole number >= 0 (0 is the first channel), got {channel!r} "
                          "(--channel)")
    return int(channel)


def resample_audio(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a 1-D float signal from ``sr_in`` to ``sr_out`` Hz with soxr (HQ quality)."""
    import soxr  # imported lazily: only needed for off-rate files

    return np.asarray(soxr.resample(y, sr_in, sr_out, quality="HQ"), dtype=np.float32)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
