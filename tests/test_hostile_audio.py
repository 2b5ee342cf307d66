"""Hostile and damaged audio, and a hostile feature cache (issue 15): content-keyed, verified cache
entries; a cache on a full or read-only disk; unreadable, truncated, mis-scaled and other-format
files; channels and native sample rates through extraction."""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import stetho.fileio
import stetho.audio
from stetho.audio import audio_info, read_audio, write_wav
from stetho.datasets.clip import Clip
from stetho.errors import AudioError, AudioValidationError, ConfigError
from stetho.features import AudioOptions, FeatureCache, LogMelParams, extract_logmels, extract_waveforms, logmel
from stetho.features import cache as cache_module

SR = 16000


def noise(seed: int, n: int = SR // 2, amp: float = 0.2) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(n)).clip(-1, 1).astype(np.float32)


def clip_of(path: Path) -> Clip:
    return Clip(path, "fan", "00", "train", "source", 0)


def wav(path: Path, y: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Clip:
    sf.write(path, y, sr, subtype=subtype)
    return clip_of(path)


def direct(path: Path, channel: int = 0) -> np.ndarray:
    return logmel(read_audio(path, channel=channel)).numpy()


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


# ---------------------------------------------------------------- cache keyed on content (item 11)


def test_cache_other_audio_same_size_and_mtime_is_a_miss(tmp_path):
    c = wav(tmp_path / "a.wav", noise(1))
    first = extract_logmels([c], cache=FeatureCache(tmp_path / "cache"), workers=1).features[0]
    st = c.path.stat()
    wav(c.path, noise(2))  # other audio, same size ...
    os.utime(c.path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime
    assert c.path.stat().st_size == st.st_size and c.path.stat().st_mtime_ns == st.st_mtime_ns

    cache = FeatureCache(tmp_path / "cache")
    second = extract_logmels([c], cache=cache, workers=1).features[0]
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_allclose(second, direct(c.path), atol=1e-4)
    assert not np.allclose(second, first)


def test_cache_same_content_touched_or_copied_is_a_hit(tmp_path):
    c = wav(tmp_path / "a.wav", noise(1))
    extract_logmels([c], cache=FeatureCache(tmp_path / "cache"), workers=1)
    os.utime(c.path, ns=(1, 1))
    copy = tmp_path / "copy.wav"
    copy.write_bytes(c.path.read_bytes())
    cache = FeatureCache(tmp_path / "cache")
    out = extract_logmels([c, clip_of(copy)], cache=cache, workers=1)
    assert (cache.hits, cache.misses) == (2, 0)
    np.testing.assert_array_equal(out.features[0], out.features[1])


def _corrupt(entry: Path, how: str) -> None:
    data = bytearray(entry.read_bytes())
    if how == "zero-filled":
        entry.write_bytes(bytes(len(data)))
    elif how == "samples zeroed":  # header intact, the array's bytes zeroed
        data[200:-64] = bytes(len(data) - 264)
        entry.write_bytes(bytes(data))
    elif how == "one byte flipped":
        data[len(data) // 2] ^= 0x40
        entry.write_bytes(bytes(data))
    elif how == "truncated":
        entry.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "random":
        entry.write_bytes(np.random.default_rng(0).bytes(len(data)))


@pytest.mark.parametrize("how", ["zero-filled", "samples zeroed", "one byte flipped", "truncated", "empty", "random"])
def test_bad_cache_entry_is_rebuilt_never_used(tmp_path, how):
    c = wav(tmp_path / "a.wav", noise(3))
    extract_logmels([c], cache=FeatureCache(tmp_path / "cache"), workers=1)
    [entry] = entries(tmp_path / "cache")
    good_bytes = entry.read_bytes()
    _corrupt(entry, how)

    cache = FeatureCache(tmp_path / "cache")
    out = extract_logmels([c], cache=cache, workers=1)
    assert (cache.hits, cache.misses) == (0, 1)
    np.testing.assert_allclose(out.features[0], direct(c.path), atol=1e-4)
    assert entry.read_bytes() == good_bytes  # overwritten with a good entry
    again = FeatureCache(tmp_path / "cache")
    extract_logmels([c], cache=again, workers=1)
    assert (again.hits, again.misses) == (1, 0)


def test_cache_entry_with_nan_values_is_not_used(tmp_path):
    c = wav(tmp_path / "a.wav", noise(3))
    cache = FeatureCache(tmp_path / "cache")
    params = {"n_mels": 4}
    bad = np.ones((3, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    cache.put(c.path, params, bad)  # stored with a valid checksum: must still be refused
    assert cache.get(c.path, params) is None
    assert cache.misses == 1


def test_cache_entry_of_another_key_is_not_used(tmp_path):
    a = wav(tmp_path / "a.wav", noise(4))
    b = wav(tmp_path / "b.wav", noise(5))
    cache = FeatureCache(tmp_path / "cache")
    cache.put(a.path, {}, np.ones((2, 3), dtype=np.float32))
    cache.put(b.path, {}, np.zeros((2, 3), dtype=np.float32))
    fa, fb = (cache._file(cache.key(p, {})) for p in (a.path, b.path))
    fa.write_bytes(fb.read_bytes())  # a valid entry, under another clip's name
    assert cache.get(a.path, {}) is None


def test_cache_version_bumped():
    assert cache_module.CACHE_VERSION >= 2


# ---------------------------------------------------------------- cache on a full / read-only disk (item 2)


def _failing_writes(monkeypatch, code: int) -> None:
    """Make every file write through stetho.fileio fail with ``code`` at the write call."""
    real_open = open

    class FailingFile:
        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            raise OSError(code, os.strerror(code))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

        def __getattr__(self, name):
            return getattr(self._fh, name)

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return FailingFile(fh) if "w" in mode else fh

    monkeypatch.setattr(stetho.fileio, "open", fake_open, raising=False)


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only"),
                                         (errno.EACCES, "permission denied")])
def test_unwritable_cache_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog, code, words):
    clips = [wav(tmp_path / f"c{i}.wav", noise(10 + i)) for i in range(3)]
    _failing_writes(monkeypatch, code)
    with caplog.at_level(logging.WARNING, logger="stetho"):
        out = extract_logmels(clips, cache=FeatureCache(tmp_path / "cache"), workers=2)
        # a second extraction of the run (another cache object on the same folder) stays quiet
        extract_logmels(clips[:1], cache=FeatureCache(tmp_path / "cache"), workers=1)
    assert out.clips == clips and out.problems == []
    for c, f in zip(clips, out.features):
        np.testing.assert_allclose(f, direct(c.path), atol=1e-4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "feature cache not written" in warnings[0] and words in warnings[0]
    assert str(tmp_path / "cache") in warnings[0] and "continuing without the cache" in warnings[0]
    assert list((tmp_path / "cache").rglob("*.tmp")) == []
    assert entries(tmp_path / "cache") == []


def test_cache_folder_that_is_a_file_does_not_fail_the_run(tmp_path, caplog):
    (tmp_path / "cache").write_text("not a folder")
    c = wav(tmp_path / "a.wav", noise(1))
    with caplog.at_level(logging.WARNING, logger="stetho"):
        out = extract_logmels([c], cache=FeatureCache(tmp_path / "cache"), workers=1)
    assert len(out.features) == 1
    assert [r.getMessage() for r in caplog.records if "feature cache not written" in r.getMessage()]


def test_cache_entries_and_wavs_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        c = wav(tmp_path / "a.wav", noise(1))
        extract_logmels([c], cache=FeatureCache(tmp_path / "cache"), workers=1)
        write_wav(tmp_path / "w.wav", noise(2), SR)
    finally:
        os.umask(old)
    [entry] = entries(tmp_path / "cache")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "w.wav").stat().st_mode) == 0o644


def test_stale_temp_files_of_killed_cache_writes_are_cleaned(tmp_path):
    a = wav(tmp_path / "a.wav", noise(1))
    extract_logmels([a], cache=FeatureCache(tmp_path / "cache"), workers=1)
    [entry] = entries(tmp_path / "cache")
    stale = entry.parent / f".{entry.name}.abc123.tmp"
    fresh = entry.parent / f".{entry.name}.def456.tmp"
    for f in (stale, fresh):
        f.write_bytes(b"half an entry")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    entry.unlink()  # so that the next run writes into this folder

    extract_logmels([a], cache=FeatureCache(tmp_path / "cache"), workers=1)
    assert not stale.exists()
    assert fresh.exists()  # possibly another process's write in progress
    assert entry.exists()


# ---------------------------------------------------------------- every format soundfile reads (item 9)


@pytest.mark.parametrize("fmt, subtype, ext, atol", [("FLAC", "PCM_16", ".flac", 1 / 32768),
                                                      ("OGG", "VORBIS", ".ogg", None),
                                                      ("AIFF", "PCM_16", ".aiff", 1 / 32768)])
def test_flac_ogg_aiff_are_read(tmp_path, fmt, subtype, ext, atol):
    t = np.arange(SR) / SR
    y = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    f = tmp_path / f"tone{ext}"
    sf.write(f, y, SR, format=fmt, subtype=subtype)
    back, native = stetho.audio.load_audio(f)
    assert native == SR and back.dtype == np.float32
    if atol is not None:
        assert back.shape == y.shape
        np.testing.assert_allclose(back, y, atol=atol)
    else:  # lossy: same length within a frame, same tone, similar level
        assert abs(len(back) - len(y)) < 2048
        n = min(len(back), len(y))
        spec = np.abs(np.fft.rfft(back[:n]))
        assert abs(np.fft.rfftfreq(n, 1 / SR)[np.argmax(spec)] - 440) < 2
        assert np.sqrt(np.mean(back[:n] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
    out = extract_logmels([clip_of(f)], workers=1)
    assert out.problems == [] and out.features[0].shape[1] == 128


# ---------------------------------------------------------------- junk and damaged files (unclear errors)


def test_random_bytes_named_wav_is_a_clear_error_and_prints_nothing(tmp_path, capfd):
    # seed 1: these bytes hold MPEG frame syncs, so libsndfile handed them to mpg123, which printed
    # "Note: Illegal Audio-MPEG-Header ..." on fd 2, and the error said "File does not exist".
    f = tmp_path / "x.wav"
    f.write_bytes(np.random.default_rng(1).bytes(20000))
    capfd.readouterr()
    with pytest.raises(AudioError) as ei:
        read_audio(f)
    msg = str(ei.value)
    assert msg.startswith(f"{f}: ")
    assert "unrecognised format" in msg and "does not exist" not in msg
    assert "first bytes" in msg
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_junk_named_mp3_is_a_clear_error_and_prints_nothing(tmp_path, capfd):
    f = tmp_path / "x.mp3"
    junk = bytearray(np.random.default_rng(1).bytes(20000))
    f.write_bytes(bytes(junk))
    capfd.readouterr()
    with pytest.raises(AudioError, match="unrecognised format"):
        audio_info(f)
    assert capfd.readouterr() == ("", "")


def test_damaged_real_mp3_is_an_error_and_prints_nothing(tmp_path, capfd):
    # a valid MP3 start, then junk: mpg123 itself prints "Note: Illegal Audio-MPEG-Header ..."
    t = np.arange(3 * SR) / SR
    good = tmp_path / "good.mp3"
    sf.write(good, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR, format="MP3")
    bad = tmp_path / "damaged.mp3"
    bad.write_bytes(good.read_bytes()[:3000] + np.random.default_rng(0).bytes(20000))
    capfd.readouterr()
    assert read_audio(good).shape == (3 * SR,)
    with pytest.raises(AudioError, match="cannot be") as ei:
        read_audio(bad)
    assert str(bad) in str(ei.value) and "decoder: " in str(ei.value)
    assert capfd.readouterr() == ("", "")


def test_other_stderr_output_meanwhile_is_passed_on(capfd):
    from stetho.audio.io import _decoder_output

    with _decoder_output(True) as lines:
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 1.\nprogress 50%\n")
    assert lines == ["Note: Illegal Audio-MPEG-Header 0x00000000 at offset 1."]
    assert capfd.readouterr().err == "progress 50%\n"


def test_text_file_shows_its_first_bytes(tmp_path):
    f = tmp_path / "notes.wav"
    f.write_text("hello, this is not audio\n" * 10)
    with pytest.raises(AudioError) as ei:
        read_audio(f)
    assert "unrecognised format" in str(ei.value) and '"hello, t' in str(ei.value)


def test_riff_header_with_junk_is_named_damaged_not_missing(tmp_path, capfd):
    f = tmp_path / "bad.wav"
    f.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + np.random.default_rng(2).bytes(200))
    with pytest.raises(AudioError) as ei:
        read_audio(f)
    assert "does not exist" not in str(ei.value) and str(f) in str(ei.value)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("fmt, ext", [("WAV", ".wav"), ("AIFF", ".aiff")])
def test_truncated_file_is_an_error_naming_it(tmp_path, fmt, ext):
    f = tmp_path / f"cut{ext}"
    sf.write(f, noise(6, SR), SR, format=fmt, subtype="PCM_16")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError) as ei:
        read_audio(f)
    # the reason, not the message: the test's folder name holds "truncated" too
    assert ei.value.reason.startswith("truncated: the header declares 16000 frames (1.00 s)")
    assert str(f) in str(ei.value)


def test_truncated_ogg_is_an_error_naming_it(tmp_path):
    f = tmp_path / "cut.ogg"
    sf.write(f, noise(6, SR), SR, format="OGG", subtype="VORBIS")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(AudioError) as ei:
        read_audio(f)
    assert ei.value.reason.startswith("truncated: the Ogg stream stops") and str(f) in str(ei.value)


def test_wav_with_extra_chunks_after_data_is_not_truncated(tmp_path):
    f = tmp_path / "tail.wav"
    sf.write(f, noise(6, 4000), SR, subtype="PCM_16")
    f.write_bytes(f.read_bytes() + b"LIST\x04\x00\x00\x00abcd")
    assert read_audio(f).shape == (4000,)


def test_float_wav_written_as_integers_is_refused(tmp_path):
    # int16 values stored in a float file: 30000x full scale, log-mels 90 dB too loud
    f = tmp_path / "intscaled.wav"
    sf.write(f, np.round(noise(7, 4000) * 32767), SR, subtype="FLOAT")
    with pytest.raises(AudioError, match="full scale") as ei:
        read_audio(f)
    assert str(f) in str(ei.value)
    # samples a little over full scale (inter-sample overs, gain) are fine
    sf.write(f, noise(7, 4000) * 3, SR, subtype="FLOAT")
    assert read_audio(f).shape == (4000,)


def test_huge_float_samples_never_give_infinite_features(tmp_path):
    y = noise(8, 4000)
    y[100] = 1e30
    c = wav(tmp_path / "huge.wav", y, subtype="FLOAT")
    out = extract_logmels([c], raise_on_error=False, workers=1)
    assert out.features == [] and [p.path for p in out.problems] == [c.path]


def test_implausibly_low_sample_rate_is_refused_not_resampled(tmp_path):
    # a header claiming 2 Hz: resampling 20000 frames to 16 kHz would make 160 million samples
    f = tmp_path / "two_hz.wav"
    sf.write(f, noise(1, 20000), 2, subtype="PCM_16")
    with pytest.raises(AudioError) as ei:
        read_audio(f)
    assert ei.value.reason.startswith("sample rate 2 Hz in the header is implausibly low")
    sf.write(f, noise(1, 2000), 1000, subtype="PCM_16")
    assert read_audio(f).shape == (32000,)


def test_write_wav_refuses_nan_and_bad_rates(tmp_path):
    y = noise(9, 100).astype(np.float64)
    y[3] = np.nan
    with pytest.raises(AudioError, match="cannot write 1 NaN/inf sample"):
        write_wav(tmp_path / "nan.wav", y, SR)
    with pytest.raises(AudioError, match="sample rate"):
        write_wav(tmp_path / "zero.wav", noise(9, 100), 0)
    assert list(tmp_path.iterdir()) == []


def test_silent_file_is_fine(tmp_path):
    c = wav(tmp_path / "silent.wav", np.zeros(SR // 2, dtype=np.float32))
    out = extract_logmels([c], workers=1)
    assert out.problems == [] and np.isfinite(out.features[0]).all()


# ---------------------------------------------------------------- native sample rates (item 7)


def test_extract_reports_native_sample_rates_on_misses_and_hits(tmp_path):
    a = wav(tmp_path / "a16.wav", noise(1), SR)
    b = wav(tmp_path / "b8.wav", noise(2, 4000), 8000)
    c = wav(tmp_path / "c44.wav", noise(3, 22050), 44100)
    clips = [a, b, c]
    cache = FeatureCache(tmp_path / "cache")
    first = extract_logmels(clips, cache=cache, workers=2)
    assert first.sample_rates == [16000, 8000, 44100]
    again = FeatureCache(tmp_path / "cache")
    second = extract_logmels(clips, cache=again, workers=2)
    assert (again.hits, again.misses) == (3, 0)
    assert second.sample_rates == [16000, 8000, 44100]
    waves = extract_waveforms(clips, sr=SR, workers=2)
    assert waves.sample_rates == [16000, 8000, 44100]
    # skipped clips are left out of sample_rates too (aligned with clips)
    bad = clip_of(tmp_path / "missing.wav")
    part = extract_logmels([a, bad, b], raise_on_error=False, workers=1)
    assert part.clips == [a, b] and part.sample_rates == [16000, 8000]


# ---------------------------------------------------------------- channels (item 6)


def test_channel_out_of_range_through_extract_names_file_and_channels(tmp_path):
    f = tmp_path / "stereo.wav"
    sf.write(f, np.stack([noise(1), noise(2)], axis=1), SR, subtype="PCM_16")
    with pytest.raises(AudioValidationError) as ei:
        extract_logmels([clip_of(f)], audio=AudioOptions(channel=5), cache=FeatureCache(tmp_path / "c"))
    [p] = ei.value.problems
    assert p.path == f and "has 2 channel(s); channel 5 was requested" in p.reason


def test_cache_never_gives_one_channel_the_features_of_another(tmp_path):
    f = tmp_path / "stereo.wav"
    sf.write(f, np.stack([noise(1), noise(2)], axis=1), SR, subtype="PCM_16")
    cache = FeatureCache(tmp_path / "cache")
    ch0 = extract_logmels([clip_of(f)], audio=AudioOptions(channel=0), cache=cache).features[0]
    ch1 = extract_logmels([clip_of(f)], audio=AudioOptions(channel=1), cache=cache).features[0]
    np.testing.assert_allclose(ch0, direct(f, 0), atol=1e-4)
    np.testing.assert_allclose(ch1, direct(f, 1), atol=1e-4)
    assert not np.allclose(ch0, ch1)


def test_negative_channel_is_an_error_even_for_mono_files(tmp_path):
    f = tmp_path / "mono.wav"
    sf.write(f, noise(1), SR, subtype="PCM_16")
    with pytest.raises(ConfigError, match="channel"):
        read_audio(f, channel=-1)
    with pytest.raises(ConfigError, match="-1"):
        AudioOptions(channel=-1)
    with pytest.raises(ConfigError, match="channel"):
        AudioOptions(channel=1.5)
