"""Calibrated decisions of every model: thresholds fitted on held-out training clips flag about
``decision_fpr`` (0.1) of unseen normal test clips — between 0.03 and 0.25 — in every score mode.

One toy dataset (2 machine types, 200 source + 20 target training clips of 1 s each, so 40 + 4
calibration clips per machine type; 40 normal test clips per domain) and small CPU settings per
model. With fewer calibration clips the realised rate scatters widely around the target (30
clips: roughly ±0.06); the real-data figures are in the README ("Calibrated decisions").
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from stetho import pipeline
from stetho.synth import make_toy_dataset
from stetho.models import MODELS

#: Small settings per model (seconds of training on the toy data).
FAST: dict[str, dict] = {
    "ae": {"epochs": 20, "batch_size": 128},
    "arae": {"hidden": [64], "latent": 8, "steps": 2, "eps": 0.05, "epochs": 5, "batch_size": 256, "lr": 0.003},
    "bigan": {"n_mels": 64, "patch_frames": 16, "patch_hop": 8, "latent": 16, "enc_channels": [4, 8, 8],
              "gen_hidden": 64, "gen_channels": [8, 4], "dis_channels": 8, "dis_z_hidden": 32, "dis_feature": 64,
              "batch_size": 32, "lr": 1e-4, "epochs": 8},
    "cande": {"epochs": 20, "batch_size": 64, "predictor_epochs": 5, "predictor_batch_size": 256,
              "predictor_hidden": [64, 32], "window": 5},
    "discriminative": {
        "branches": ["stft:256:128"], "tile_seconds": 1.0, "channels": [4, 8, 8, 16], "emb_dim": 16,
        "n_subclusters": 2, "epochs": 6, "ensemble_epochs": [4, 6], "batch_size": 16, "n_clusters": 4,
    },
    "stats": {},  # no training loop: clip statistics and distance backends
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration") / "data"
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=200, target_train_clips=20, test_clips=40,
                     duration=1.0, seed=11)
    return root


def normal_flag_rates(run: Path) -> dict[str, float]:
    """Share of normal test clips flagged, per score mode, from the run's decision files."""
    with open(run / "test_files.csv", newline="", encoding="utf-8") as fh:
        labels = {(r["machine"], r["name"]): r["label"] for r in csv.DictReader(fh)}
    machines = {m for m, _ in labels}
    rates = {}
    for folder in sorted(p for p in (run / "results").iterdir() if p.is_dir()):
        flags = []
        for f in folder.glob("decision_result_*.csv"):
            machine = next(m for m in machines if f.name.startswith(f"decision_result_{m}_"))
            with open(f, newline="", encoding="utf-8") as fh:
                flags += [int(d) for name, d in csv.reader(fh) if labels[(machine, name)] == "0"]
        rates[folder.name] = sum(flags) / len(flags)
    return rates


def test_every_registered_model_has_fast_settings_here():
    assert set(FAST) == set(MODELS)


@pytest.mark.parametrize("model", sorted(FAST))
def test_calibrated_thresholds_flag_about_a_tenth_of_unseen_normal_clips(toy, tmp_path, model, one_torch_thread):
    cfg = {"data": str(toy), "out": str(tmp_path / model), "model": model, "params": FAST[model],
           "progress": False, "cache": False, "seed": 1}
    run = pipeline.train(cfg)
    outcome = pipeline.test(run, progress=False)
    rates = normal_flag_rates(run)
    assert set(rates) == set(outcome.folders) == set(MODELS[model].score_modes)
    for mode, rate in rates.items():
        assert 0.03 <= rate <= 0.25, (model, mode, rates)
