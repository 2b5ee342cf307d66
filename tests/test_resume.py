"""A `stetho train` killed mid-way and started again with the same command resumes from its last
checkpoint and ends with the same scores as an uninterrupted run (real processes, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stetho.synth import make_toy_dataset
from stetho.run_folder import staging_dir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

#: (model, training arguments): long enough that the kill lands mid-training.
CASES = {
    "ae": ["--epochs", "40", "--param", "batch_size=64"],
    "discriminative": [
        "--epochs", "6", "--param", "branches=[stft:256:128]", "--param", "tile_seconds=1.0",
        "--param", "channels=[4,8,8,16]", "--param", "emb_dim=16", "--param", "n_subclusters=2",
        "--param", "ensemble_epochs=[4,6]", "--param", "batch_size=16", "--param", "checkpoint_every=1",
        "--param", "n_clusters=4",
    ],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume") / "data"
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=20, target_train_clips=5, test_clips=5,
                     duration=2.0, seed=3)
    return root


def _train_cmd(data: Path, out: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "stetho.cli", "train", "--data", str(data), "--out", str(out), "--model", model,
            "--no-progress", "--no-cache", "--seed", "7", *CASES[model]]


def _test(run: Path) -> dict[str, bytes]:
    subprocess.run([sys.executable, "-m", "stetho.cli", "-q", "test", "--run", str(run), "--no-progress",
                    "--no-cache"], check=True, env=ENV, capture_output=True, timeout=600)
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "results").rglob("anomaly_score_*.csv"))}


@pytest.mark.parametrize("model", sorted(CASES))
def test_killed_training_resumes_with_the_same_command_and_the_same_scores(data, tmp_path, model):
    straight = tmp_path / "straight"
    subprocess.run(_train_cmd(data, straight, model), check=True, env=ENV, capture_output=True, timeout=900)
    expected = _test(straight)
    assert expected

    run = tmp_path / "killed"
    stage = staging_dir(run)  # where a training lives until it is complete
    proc = subprocess.Popen(_train_cmd(data, run, model), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    try:
        # Kill at the first checkpoint whose training is under way (a few epochs in).
        while time.monotonic() < deadline and proc.poll() is None:
            if list((stage / "work").rglob("*.ckpt")):
                time.sleep(0.3)
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"training ended before it could be killed:\n{proc.stderr.read()}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    checkpoints = list((stage / "work").rglob("*.ckpt"))
    assert checkpoints and not run.exists()  # killed mid-way: checkpoint left, no half run folder

    again = subprocess.run(_train_cmd(data, run, model), env=ENV, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr
    assert not list((run / "work").rglob("*.ckpt"))  # removed once training completed
    assert not stage.exists()  # swapped in
    assert _test(run) == expected  # (a finished run is then refused: tests/test_pipeline.py)
