"""Fixtures shared by the monitoring tests (service, watcher): a `stats` run trained on a tiny toy
fan dataset and a Scorer of it (module scope: each test module trains it once, in about a second)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stetho import pipeline
from stetho.monitor.scoring import Scorer
from stetho.synth import make_toy_dataset


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan"], train_clips=8, target_train_clips=2, test_clips=2, duration=1.0, seed=0)
    out = tmp_path_factory.mktemp("runs") / "stats"
    pipeline.train({"data": str(root), "out": str(out), "model": "stats", "progress": False})
    return out


@pytest.fixture(scope="module")
def scorer(run_dir) -> Scorer:
    return Scorer.load(run_dir, resample=False)
