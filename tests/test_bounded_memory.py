"""Full-size data in bounded memory (issue 22): features stay on disk — log-mels memory-mapped
from the feature cache, waveforms decoded again when used — and every result is the same as
with the features held in memory (the two paths: feature cache on / off)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from stetho import pipeline
from stetho.datasets import scan_dataset
from stetho.errors import StethoError
from stetho.features import (
    AudioOptions, FeatureCache, FeatureList, LogMelParams, extract_logmels, extract_waveforms, on_disk, take,
)
from stetho.models.discriminative.waves import WaveBank
from stetho.models.frames import FrameVectors
from stetho.synth import make_toy_dataset

DISC = {"branches": ["stft:512:256"], "tile_seconds": 0.5, "channels": [4, 4, 8, 8], "emb_dim": 8,
        "n_subclusters": 2, "epochs": 1, "batch_size": 8, "ensemble_epochs": [1], "n_clusters": 2}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=8, target_train_clips=2, test_clips=2,
                     duration=1.0, seed=5)
    return root


@pytest.fixture(scope="module")
def train_clips(toy):
    return scan_dataset(toy, "auto", splits=("train",)).clips


def test_cache_write_gives_the_offset_a_memmap_reads_back(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=0)
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    key = "ab" * 32
    offset = cache.write(key, x, 16000)
    entry = cache.read(key)
    assert offset == entry.offset and offset > 0
    m = cache.memmap(key, offset, x.shape, x.dtype.str)
    assert isinstance(m, np.memmap) and not m.flags.writeable
    np.testing.assert_array_equal(m, x)
    cache.entry_path(key).unlink()
    with pytest.raises(StethoError, match="deleted while a run was using it"):
        cache.memmap(key, offset, x.shape, x.dtype.str)


def test_logmels_from_the_cache_are_memory_mapped_and_equal(tmp_path, train_clips):
    params, audio = LogMelParams(), AudioOptions(min_frames=5)
    in_memory = extract_logmels(train_clips, params, audio, cache=None).features
    assert isinstance(in_memory, list)
    cache = FeatureCache(tmp_path / "cache", max_bytes=0)
    for round_ in ("written", "hits"):
        feats = extract_logmels(train_clips, params, audio, cache=cache).features
        assert isinstance(feats, FeatureList) and feats.n_on_disk == len(train_clips), round_
        assert feats.nbytes_in_memory == 0
        for i, ref in enumerate(in_memory):
            item = feats[i]
            assert isinstance(item, np.memmap) and feats.shape(i) == ref.shape
            assert item.tobytes() == ref.tobytes()
    assert cache.hits == len(train_clips)
    sub = take(feats, [3, 1])
    assert isinstance(sub, FeatureList) and len(sub) == 2 and sub[0].tobytes() == in_memory[3].tobytes()
    assert take(in_memory, [3, 1])[1] is in_memory[1]
    # memory_map=False: the arrays in memory, as before
    assert isinstance(extract_logmels(train_clips, params, audio, cache=cache, memory_map=False).features, list)


def test_an_unwritable_cache_keeps_the_features_in_memory(tmp_path, train_clips, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with caplog.at_level(logging.WARNING):
        feats = extract_logmels(train_clips[:3], cache=FeatureCache(blocker, max_bytes=0)).features
    assert isinstance(feats, FeatureList) and feats.n_on_disk == 0 and not on_disk(feats)
    assert feats.nbytes_in_memory == sum(f.nbytes for f in extract_logmels(train_clips[:3]).features)


def test_streamed_waveforms_decode_to_the_same_samples(train_clips):
    held = extract_waveforms(train_clips, 16000).features
    streamed = extract_waveforms(train_clips, 16000, stream=True).features
    assert isinstance(streamed, FeatureList) and streamed.n_on_disk == len(train_clips)
    assert streamed.nbytes_in_memory == 0
    for i, y in enumerate(held):
        assert streamed.shape(i) == y.shape and streamed[i].tobytes() == y.tobytes()
    # the bank over the files gives the crops of the bank in memory, and holds no samples
    lazy, bank = WaveBank(streamed), WaveBank(held)
    assert lazy.nbytes == 0 and bank.nbytes == 2 * sum(len(y) for y in held)
    rng = np.random.default_rng(0)
    for _ in range(20):
        i = int(rng.integers(len(held)))
        n = int(rng.integers(100, 2 * len(held[i])))  # also longer than the clip: tiled
        start = int(rng.integers(0, max(1, len(held[i]) - n)))
        assert lazy.length(i) == bank.length(i)
        assert lazy.crop(i, n, start).tobytes() == bank.crop(i, n, start).tobytes()


def test_frame_vectors_of_memory_mapped_logmels_are_the_same(tmp_path, train_clips):
    feats = extract_logmels(train_clips, cache=FeatureCache(tmp_path, max_bytes=0)).features
    a, b = FrameVectors(feats), FrameVectors(extract_logmels(train_clips).features)
    assert a.frames.numpy().tobytes() == b.frames.numpy().tobytes()
    assert a.starts.equal(b.starts) and a.clip_index.equal(b.clip_index)


def _score_files(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((run / "results").rglob("*.csv"))}


@pytest.mark.parametrize("model,params", [("ae", {"epochs": 2, "hidden": 16, "bottleneck": 4, "batch_size": 64}),
                                          ("discriminative", DISC)])
def test_pipeline_streamed_run_writes_the_same_score_files(toy, tmp_path, model, params):
    """``stetho train`` + ``stetho test`` with the feature cache on (features on disk) and off
    (features in memory, the former path): every result file byte for byte the same."""
    files = {}
    for cache in (True, False):
        run = tmp_path / f"run_{cache}"
        pipeline.train({"data": str(toy), "out": str(run), "model": model, "params": params, "progress": False,
                        "device": "cpu", "cache": cache, "cache_dir": str(tmp_path / "cache")})
        pipeline.test(run, score="all", progress=False)
        files[cache] = _score_files(run)
    assert any("anomaly_score_valve" in f for f in files[True])
    assert files[True] == files[False]


@pytest.mark.parametrize("model,cls_path", [("ae", "stetho.models.ae.detector.AEDetector"),
                                            ("discriminative", "stetho.models.discriminative.detector.DiscriminativeDetector")])
def test_pipeline_hands_the_models_features_still_on_disk(toy, tmp_path, monkeypatch, model, cls_path):
    """Through ``stetho train`` / ``stetho test`` the features reach the model's ``_fit`` and
    ``_score_all`` as a FeatureList on disk (nothing turned them into a list of arrays on the way)."""
    import importlib

    module_name, cls_name = cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    seen: list[tuple[str, bool]] = []
    fit, score_all = cls._fit, cls._score_all

    def spy_fit(self, clips, feats, context):
        seen.append(("fit", on_disk(feats) and len(feats) == len(clips)))
        return fit(self, clips, feats, context)

    def spy_score_all(self, clips, feats):
        seen.append(("score", on_disk(feats)))
        return score_all(self, clips, feats)

    monkeypatch.setattr(cls, "_fit", spy_fit)
    monkeypatch.setattr(cls, "_score_all", spy_score_all)
    params = {"epochs": 1, "hidden": 8, "bottleneck": 4, "batch_size": 64} if model == "ae" else DISC
    run = tmp_path / "run"
    pipeline.train({"data": str(toy), "out": str(run), "model": model, "params": params, "progress": False,
                    "device": "cpu", "cache_dir": str(tmp_path / "cache"), "machines": ["fan"]})
    pipeline.test(run, progress=False)
    assert {step for step, _ in seen} == {"fit", "score"} and all(ok for _, ok in seen), seen
