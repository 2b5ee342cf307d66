"""Tests of stetho.features: torch log-mel vs librosa, frame stacking, cache, batched extraction."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from librosa.feature import melspectrogram  # eager: librosa's lazy first import takes seconds

from stetho.audio import read_audio
from stetho.datasets.clip import Clip
from stetho.errors import AudioValidationError
from stetho.features import (
    EPS,
    AudioOptions,
    FeatureCache,
    LogMelParams,
    default_cache_dir,
    extract_logmels,
    logmel,
    min_samples_for,
    stack_frames,
)
from stetho.features.logmel import mel_filterbank, mel_power, to_db

SR = 16000
FLOAT_EPS = sys.float_info.epsilon


def librosa_mel(y: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """Mel power as the DCASE baselines compute it, librosa layout (n_mels, n_frames)."""
    return melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=512, n_mels=n_mels, power=2.0)


def librosa_logmel_max(y: np.ndarray, n_mels: int = 128) -> np.ndarray:
    """``10 log10(max(mel, eps))``, transposed to stetho's time-major layout."""
    return (10.0 * np.log10(np.maximum(librosa_mel(y, n_mels), FLOAT_EPS))).T


def synthetic(seed: int, seconds: float = 2.0) -> np.ndarray:
    """Sine + chirp + noise with a digitally silent stretch (exercises the log floor)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    y = (
        0.4 * np.sin(2 * np.pi * (300 + 200 * seed) * t)
        + 0.2 * np.sin(2 * np.pi * (100 * t + 900 * t**2))
        + 0.02 * rng.standard_normal(n)
    )
    y[5000:12000] = 0.0
    return y.astype(np.float32)


# ---------------------------------------------------------------- log-mel vs librosa


def test_eps_is_float_epsilon():
    assert EPS == FLOAT_EPS


@pytest.mark.parametrize("seed", [0, 1])
def test_logmel_matches_librosa_synthetic(seed):
    y = synthetic(seed)
    ours = logmel(y)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32
    ref = librosa_logmel_max(y)
    assert ours.shape == ref.shape == (1 + len(y) // 512, 128)
    assert np.abs(ours.numpy() - ref).max() < 1e-3
    # the silent stretch hits the floor exactly
    assert ours.numpy().min() == pytest.approx(10 * np.log10(FLOAT_EPS), abs=1e-3)


def test_logmel_64_mels_add_floor_matches_librosa():
    y = synthetic(2)
    params = LogMelParams(n_mels=64, log_floor="add")
    ours = logmel(y, params).numpy()
    ref = (10.0 * np.log10(librosa_mel(y, n_mels=64) + FLOAT_EPS)).T
    assert ours.shape == ref.shape == (1 + len(y) // 512, 64)
    assert np.abs(ours - ref).max() < 1e-3


def test_log_floor_variants_differ_only_near_eps():
    mel = torch.tensor([0.0, FLOAT_EPS / 2, FLOAT_EPS, 1e-3, 1.0], dtype=torch.float64)
    mx = to_db(mel, LogMelParams(log_floor="max")).numpy()
    add = to_db(mel, LogMelParams(log_floor="add")).numpy()
    np.testing.assert_allclose(mx, 10 * np.log10(np.maximum(mel.numpy(), FLOAT_EPS)))
    np.testing.assert_allclose(add, 10 * np.log10(mel.numpy() + FLOAT_EPS))
    assert add[1] > mx[1]  # eps/2 + eps vs eps
    np.testing.assert_allclose(mx[3:], add[3:], atol=1e-9)
    with pytest.raises(ValueError, match="log_floor"):
        to_db(mel, LogMelParams(log_floor="clip"))


def test_real_clips_match_librosa(real_data):
    dcase = sorted((real_data / "dcase2023t2_dev_subset").glob("*/*/*.wav"))
    mimii = sorted((real_data / "mimii_fan_id00_subset" / "fan" / "id_00").glob("*/*.wav"))
    assert dcase and mimii
    # a 12 s ToyCar clip, a 10 s fan clip, and MIMII normal + abnormal clips
    chosen = [
        next(p for p in dcase if p.parts[-3] == "ToyCar"),
        next(p for p in dcase if p.parts[-3] == "fan"),
        next(p for p in mimii if p.parent.name == "normal"),
        next(p for p in mimii if p.parent.name == "abnormal"),
    ]
    for path in chosen:
        y = read_audio(path)
        ours = logmel(y).numpy()
        ref = librosa_logmel_max(y)
        assert ours.shape == ref.shape, path
        diff = np.abs(ours - ref).max()
        assert diff < 1e-3, f"{path.name}: max |dB difference| {diff}"


def test_batch_equals_single():
    ys = [synthetic(s, seconds=1.0) for s in range(3)]
    batch = logmel(np.stack(ys))
    assert batch.shape == (3, 1 + SR // 512, 128)
    for i, y in enumerate(ys):
        np.testing.assert_allclose(batch[i].numpy(), logmel(y).numpy(), atol=1e-4)
    # batch elements really are different signals
    assert not np.allclose(batch[0].numpy(), batch[1].numpy())


@pytest.mark.parametrize("n_fft, n_mels, fmin, fmax", [(1024, 128, 0.0, None), (512, 64, 50.0, 7000.0), (2048, 256, 0.0, None)])
def test_sparse_mel_projection_equals_dense_filterbank(n_fft, n_mels, fmin, fmax):
    # On CPU the filterbank is applied as a sparse matmul; for one signal and for a batch it must
    # equal the dense matmul with librosa's filters.
    params = LogMelParams(n_fft=n_fft, hop_length=n_fft // 2, n_mels=n_mels, fmin=fmin, fmax=fmax)
    y = torch.from_numpy(np.stack([synthetic(s, seconds=1.0) for s in range(3)]))
    spec = torch.stft(y, n_fft, n_fft // 2, window=torch.hann_window(n_fft), center=True,
                      pad_mode="constant", return_complex=True)
    dense = torch.matmul(spec.abs().square().transpose(1, 2), mel_filterbank(SR, n_fft, n_mels, fmin, fmax))
    fast = mel_power(y, params)
    assert fast.shape == dense.shape
    np.testing.assert_allclose(fast.numpy(), dense.numpy(), rtol=1e-4, atol=1e-9 * float(dense.max()))
    np.testing.assert_allclose(mel_power(y[1], params).numpy(), dense[1].numpy(), rtol=1e-4, atol=1e-9 * float(dense.max()))


def test_ten_seconds_is_313_frames():
    y = np.random.default_rng(0).standard_normal(10 * SR).astype(np.float32) * 0.1
    lm = logmel(y)
    assert lm.shape == (313, 128)
    assert LogMelParams().n_frames(10 * SR) == 313
    assert librosa_mel(y).shape == (128, 313)


# ---------------------------------------------------------------- frame stacking


def baseline_vectors(logmel_t: np.ndarray, frames: int) -> np.ndarray:
    """The DCASE 2020-2023 baseline loop, on librosa orientation (n_mels, n_frames)."""
    n_mels = logmel_t.shape[0]
    n_vectors = logmel_t.shape[1] - frames + 1
    vectors = np.zeros((n_vectors, n_mels * frames))
    for t in range(frames):
        vectors[:, n_mels * t : n_mels * (t + 1)] = logmel_t[:, t : t + n_vectors].T
    return vectors


def test_stack_frames_matches_dcase_baseline():
    lm = np.random.default_rng(3).standard_normal((313, 128)).astype(np.float32)
    ours = stack_frames(lm, n_frames=5)
    assert ours.shape == (309, 640)
    np.testing.assert_array_equal(ours, baseline_vectors(lm.T, 5))
    # vector[t * n_mels + m] = lm[t0 + t, m]
    assert ours[10, 3 * 128 + 7] == lm[13, 7]


def test_stack_frames_torch_equals_numpy():
    lm = np.random.default_rng(4).standard_normal((40, 16)).astype(np.float32)
    for hop in (1, 2, 3):
        a = stack_frames(lm, n_frames=5, hop=hop)
        b = stack_frames(torch.from_numpy(lm), n_frames=5, hop=hop)
        assert isinstance(b, torch.Tensor)
        np.testing.assert_array_equal(a, b.numpy())


def test_stack_frames_hop():
    lm = np.random.default_rng(5).standard_normal((313, 8))
    full = baseline_vectors(lm.T, 5)
    for hop in (2, 3, 10):
        ours = stack_frames(lm, n_frames=5, hop=hop)
        assert ours.shape == ((313 - 5) // hop + 1, 40)
        np.testing.assert_array_equal(ours, full[::hop])


def test_stack_frames_edge_cases():
    lm = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)
    np.testing.assert_array_equal(stack_frames(lm, n_frames=5), lm.reshape(1, 15))
    np.testing.assert_array_equal(stack_frames(lm, n_frames=1), lm)
    with pytest.raises(ValueError, match="4 frames"):
        stack_frames(lm[:4], n_frames=5)
    with pytest.raises(ValueError):
        stack_frames(torch.from_numpy(lm[:4]), n_frames=5)


# ---------------------------------------------------------------- feature cache


def test_default_cache_dir_is_isolated_in_tests(monkeypatch, tmp_path):
    d = default_cache_dir()
    assert str(d) == os.environ["STETHO_CACHE_DIR"]
    assert Path.home() / ".cache" not in [d, *d.parents]
    monkeypatch.delenv("STETHO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "stetho"


def test_cache_hit_miss_and_invalidation(tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(2000, dtype=np.float32), SR, subtype="PCM_16")
    cache = FeatureCache(tmp_path / "cache")
    params = {"n_mels": 128, "channel": 0}
    value = np.arange(12, dtype=np.float32).reshape(3, 4)

    assert cache.get(wav, params) is None
    assert (cache.hits, cache.misses) == (0, 1)
    cache.put(wav, params, value)
    got = cache.get(wav, params)
    np.testing.assert_array_equal(got, value)
    assert got.dtype == np.float32
    assert (cache.hits, cache.misses) == (1, 1)

    # entries are written atomically: one .npy, no temp file left
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npy"
    assert files[0].parent.parent == tmp_path / "cache" / "features" / "logmel"
    assert not list((tmp_path / "cache").rglob("*.tmp"))

    # another cache object over the same folder sees the entry
    np.testing.assert_array_equal(FeatureCache(tmp_path / "cache").get(wav, params), value)
    # a different kind does not
    assert FeatureCache(tmp_path / "cache", kind="other").get(wav, params) is None

    # parameter change -> miss
    assert cache.get(wav, {**params, "n_mels": 64}) is None
    assert cache.get(wav, {**params, "channel": 1}) is None

    # keyed on content: same bytes with a new mtime -> hit; other bytes of the same size with the
    # old mtime restored -> miss
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.get(wav, params) is not None
    sf.write(wav, np.full(2000, 0.5, dtype=np.float32), SR, subtype="PCM_16")
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert wav.stat().st_size == st.st_size
    assert cache.get(wav, params) is None
    cache.put(wav, params, value)
    assert cache.get(wav, params) is not None

    # rewritten with a different size -> miss
    sf.write(wav, np.zeros(3000, dtype=np.float32), SR, subtype="PCM_16")
    assert cache.get(wav, params) is None


def test_cache_corrupt_entry_is_a_miss(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(b"x")
    cache = FeatureCache(tmp_path / "cache")
    cache.put(wav, {}, np.ones(3))
    entry = next((tmp_path / "cache").rglob("*.npy"))
    entry.write_bytes(b"not a numpy file")
    assert cache.get(wav, {}) is None
    assert cache.misses == 1


# ---------------------------------------------------------------- batched extraction


def write(path: Path, y: np.ndarray, subtype: str = "PCM_16") -> Path:
    sf.write(path, y, SR, subtype=subtype)
    return path


def clip_of(path: Path, label: int = 0) -> Clip:
    return Clip(path, "fan", "00", "train", "source", label)


@pytest.fixture
def good_clips(tmp_path) -> list[Clip]:
    rng = np.random.default_rng(7)
    lengths = [SR, SR, int(1.25 * SR), SR, 9000]  # mixed lengths
    clips = []
    for i, n in enumerate(lengths):
        y = (0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * np.arange(n) / SR))
        clips.append(clip_of(write(tmp_path / f"good_{i}.wav", y.astype(np.float32))))
    return clips


@pytest.mark.parametrize("batch_size", [32, 2])
def test_extract_aligned_and_equal_to_direct(good_clips, batch_size):
    # reversed input order: the output must follow the input, not the folder order
    clips = good_clips[::-1]
    out = extract_logmels(clips, batch_size=batch_size, workers=2)
    assert out.clips == clips
    assert out.problems == []
    assert len(out.features) == len(clips)
    for clip, feats in zip(clips, out.features):
        direct = logmel(read_audio(clip.path)).numpy()
        assert feats.shape == direct.shape
        assert feats.dtype == np.float32
        np.testing.assert_allclose(feats, direct, atol=1e-4)
    shapes = [f.shape[0] for f in out.features]
    assert shapes == [1 + 9000 // 512, 1 + SR // 512, 1 + int(1.25 * SR) // 512, 1 + SR // 512, 1 + SR // 512]


def test_extract_with_cache(good_clips, tmp_path):
    n = len(good_clips)
    cache_dir = tmp_path / "cache"
    first_cache = FeatureCache(cache_dir)
    first = extract_logmels(good_clips, cache=first_cache)
    assert (first_cache.hits, first_cache.misses) == (0, n)
    assert len(list(cache_dir.rglob("*.npy"))) == n
    assert not list(cache_dir.rglob("*.tmp"))

    second_cache = FeatureCache(cache_dir)
    second = extract_logmels(good_clips, cache=second_cache)
    assert second_cache.hits == n and second_cache.misses == 0
    assert second.clips == first.clips
    for a, b in zip(first.features, second.features):
        np.testing.assert_array_equal(a, b)

    # rewrite one file: only that clip is recomputed, with its new content
    y = np.random.default_rng(99).standard_normal(SR).astype(np.float32) * 0.2
    write(good_clips[1].path, y)
    third_cache = FeatureCache(cache_dir)
    third = extract_logmels(good_clips, cache=third_cache)
    assert (third_cache.hits, third_cache.misses) == (n - 1, 1)
    np.testing.assert_allclose(third.features[1], logmel(read_audio(good_clips[1].path)).numpy(), atol=1e-4)
    assert not np.allclose(third.features[1], first.features[1])

    # other parameters do not reuse entries
    fourth_cache = FeatureCache(cache_dir)
    fourth = extract_logmels(good_clips, params=LogMelParams(n_mels=64), cache=fourth_cache)
    assert fourth_cache.hits == 0
    assert all(f.shape[1] == 64 for f in fourth.features)


@pytest.fixture
def mixed_clips(good_clips, tmp_path) -> tuple[list[Clip], list[Clip]]:
    """Good clips interleaved with every kind of bad file; returns (all, bad)."""
    zero = clip_of(write(tmp_path / "bad_zero.wav", np.zeros(0, dtype=np.float32)))
    short = clip_of(write(tmp_path / "bad_short.wav", np.full(300, 0.1, dtype=np.float32)))
    nan_y = np.full(SR, 0.1, dtype=np.float32)
    nan_y[42] = np.nan
    nan = clip_of(write(tmp_path / "bad_nan.wav", nan_y, subtype="FLOAT"))
    missing = clip_of(tmp_path / "bad_missing.wav")
    text = tmp_path / "bad_text.wav"
    text.write_text("hello " * 100)
    garbage = clip_of(text)
    g = good_clips
    all_clips = [g[0], zero, g[1], short, nan, g[2], missing, garbage, g[3], g[4]]
    return all_clips, [zero, short, nan, missing, garbage]


def test_extract_reports_all_bad_files_together(mixed_clips):
    all_clips, bad = mixed_clips
    with pytest.raises(AudioValidationError) as ei:
        extract_logmels(all_clips, batch_size=3)
    err = ei.value
    assert [p.path for p in err.problems] == [c.path for c in bad]
    msg = str(err)
    assert msg.startswith("5 audio file(s) failed validation")
    for c in bad:
        assert str(c.path) in msg
    reasons = {p.path.name: p.reason for p in err.problems}
    assert "zero-length" in reasons["bad_zero.wav"]
    assert "too short" in reasons["bad_short.wav"]
    assert "NaN/inf" in reasons["bad_nan.wav"]
    assert "does not exist" in reasons["bad_missing.wav"]
    assert "cannot be read" in reasons["bad_text.wav"]


def test_extract_skip_bad(mixed_clips, good_clips, tmp_path):
    all_clips, bad = mixed_clips
    cache = FeatureCache(tmp_path / "cache")
    out = extract_logmels(all_clips, raise_on_error=False, batch_size=4, cache=cache)
    assert out.clips == good_clips
    assert [p.path for p in out.problems] == [c.path for c in bad]
    for clip, feats in zip(out.clips, out.features):
        np.testing.assert_allclose(feats, logmel(read_audio(clip.path)).numpy(), atol=1e-4)
    # only the good clips were cached
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(good_clips)


def test_min_frames(tmp_path):
    params = LogMelParams()
    assert min_samples_for(params, 1) == 1024
    assert min_samples_for(params, 5) == 2048
    assert params.n_frames(min_samples_for(params, 5)) == 5

    short = clip_of(write(tmp_path / "three_frames.wav", np.full(1500, 0.1, dtype=np.float32)))
    ok = clip_of(write(tmp_path / "long.wav", np.full(4000, 0.1, dtype=np.float32)))
    cache = FeatureCache(tmp_path / "cache")

    out = extract_logmels([short, ok], audio=AudioOptions(min_frames=1), cache=cache)
    assert [f.shape[0] for f in out.features] == [3, 8]

    # min_frames=5 rejects the 3-frame clip even though its features are in the cache
    with pytest.raises(AudioValidationError) as ei:
        extract_logmels([short, ok], audio=AudioOptions(min_frames=5), cache=cache)
    assert [p.path for p in ei.value.problems] == [short.path]
    assert "too short" in ei.value.problems[0].reason

    out = extract_logmels(
        [short, ok], audio=AudioOptions(min_frames=5), cache=cache, raise_on_error=False
    )
    assert out.clips == [ok] and out.features[0].shape == (8, 128)


def test_extract_channel_option(tmp_path):
    rng = np.random.default_rng(11)
    data = (0.2 * rng.standard_normal((SR, 2))).astype(np.float32)
    f = tmp_path / "stereo.wav"
    sf.write(f, data, SR, subtype="FLOAT")
    c = clip_of(f)
    ch1 = extract_logmels([c], audio=AudioOptions(channel=1)).features[0]
    np.testing.assert_allclose(ch1, logmel(data[:, 1]).numpy(), atol=1e-4)
    with pytest.raises(AudioValidationError, match="channel"):
        extract_logmels([c], audio=AudioOptions(channel=2))


def test_extract_empty_input():
    out = extract_logmels([])
    assert out.clips == [] and out.features == [] and out.problems == []


def test_logmel_of_signal_equals_the_file_path_and_refuses_non_finite_log_mels(tmp_path):
    """One upload's log-mel (no file, no cache) has the values extract_logmels gives the file."""
    from stetho.datasets.clip import Clip
    from stetho.errors import AudioError
    from stetho.features import LogMelParams, extract_logmels, logmel_of_signal

    y = np.random.default_rng(3).uniform(-0.5, 0.5, 9000).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(str(path), y, 16000, subtype="FLOAT")
    params = LogMelParams(n_mels=32)
    (from_file,) = extract_logmels([Clip(path, "fan", "00", "test")], params, workers=1).features
    one = logmel_of_signal(y, params, "a.wav")
    assert one.dtype == np.float32 and one.shape == from_file.shape
    np.testing.assert_array_equal(one, from_file)
    with pytest.raises(AudioError, match="up.wav: log-mel has NaN/inf"):
        logmel_of_signal(np.full(9000, 1e30, dtype=np.float32), params, "up.wav")
