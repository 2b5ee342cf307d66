"""The discriminative model through the pipeline and CLI: one joint model, backends as score
modes, DCASE files; pseudo-labels written to the run folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from stetho import pipeline
from stetho.cli import main
from stetho.datasets.toy import make_toy_dataset
from stetho.models import Detector

TINY = ["branches=[stft:512:256]", "tile_seconds=1.0", "channels=[4,4,8,8]", "emb_dim=8", "n_subclusters=2",
        "epochs=2", "batch_size=16", "ensemble_epochs=[1,2]", "n_clusters=4"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=12, target_train_clips=3, test_clips=3,
                     duration=1.5, seed=4)
    return root


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_train_and_test_from_the_command_line_with_backends(toy, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["-q", "train", "--data", str(toy), "--out", str(run), "--model", "discriminative", "--no-progress"]
    for p in TINY:
        argv += ["--param", p]
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "models").iterdir()) == ["all.pt"]  # one model for all machines
    assert len(_rows(run / "history_all.csv")) == 3
    assert sorted(p.name for p in (run / "work" / "checkpoints").iterdir()) == ["main_epoch_002.pt"]
    det = Detector.load(run / "models" / "all.pt")
    assert det.machines_ == ["fan", "valve"] and det.ensemble_epochs == [1, 2]
    code = main(["-q", "test", "--run", str(run), "--backend", "knn", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "knn —" in out and "official score (dcase2023)" in out
    # the scores of the asked backend, and the test clips' embeddings for the report
    assert sorted(p.name for p in (run / "results").iterdir()) == ["knn", "test_embeddings.npz"]
    for machine in ("fan", "valve"):
        scores = _rows(run / "results" / "knn" / f"anomaly_score_{machine}_section_00_test.csv")
        decisions = _rows(run / "results" / "knn" / f"decision_result_{machine}_section_00_test.csv")
        assert len(scores) == 12 and [r[0] for r in decisions] == [r[0] for r in scores]
        thr = det.threshold_for("knn", machine)
        assert all(int(d[1]) == int(float(s[1]) > thr) for s, d in zip(scores, decisions))
    # every backend from the same trained model, without retraining
    outcome = pipeline.test(run, progress=False)
    assert set(outcome.results) == {"kmeans", "knn", "mahalanobis", "density", "kmeans_norm", "knn_norm"}
    assert all(np.isfinite(r.official_score) for r in outcome.results.values())


def test_pseudo_labels_are_written_and_used(toy, tmp_path):
    src = toy
    # the same data with the attributes hidden, as for machine types without attributes
    hidden = tmp_path / "hidden"
    for p in src.rglob("*.wav"):
        parts = p.name.split("_")
        dest = hidden / p.relative_to(src).parent / ("_".join(parts[:6]) + "_noAttribute.wav")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(p.read_bytes())
    run = tmp_path / "run"
    params = dict(p.split("=", 1) for p in TINY)
    import yaml

    cfg = {"data": str(hidden), "out": str(run), "model": "discriminative", "progress": False,
           "params": {**{k: yaml.safe_load(v) for k, v in params.items()}, "pseudo_labels": "gmm"}}
    pipeline.train(cfg)
    rows = _rows(run / "work" / "pseudo_labels.csv")
    assert rows[0] == ["file", "machine", "domain", "label"] and len(rows) == 1 + 2 * 15
    det = Detector.load(run / "models" / "all.pt")
    assert any("|pseudo-" in c for c in det.classes_)
    assert sorted(p.name for p in (run / "work" / "checkpoints").iterdir()) == ["main_epoch_002.pt",
                                                                                "pseudo_epoch_002.pt"]


@pytest.mark.parametrize("recipe", ["recipes/dcase2023_discriminative.yaml", "recipes/dcase2023_discriminative_cpu.yaml"])
def test_recipes_resolve_to_valid_detectors(recipe):
    from stetho.config import load_recipe, resolve

    cfg = resolve(load_recipe(recipe))
    det = pipeline.make_detector(cfg)
    det._check()  # tile long enough for the FFT branch, ensemble within the epochs, known modes
    assert det.joint and det.name == "discriminative"
    if recipe.endswith("_cpu.yaml"):
        assert cfg["toy"]["domain_shift"] == "strong" and det.tile_seconds == 1.5 and det.epochs == 40
    else:  # the paper's settings
        assert det.branches == ["fft", "stft:4096:2048", "stft:256:128"] and det.tile_seconds == 18.0
        assert (det.epochs, det.batch_size, det.ensemble_epochs, det.n_subclusters) == (16, 64, [12, 14, 16], 16)


def test_overwriting_a_run_removes_the_old_models_and_results(toy, tmp_path):
    run = tmp_path / "run"
    pipeline.train({"data": str(toy), "out": str(run), "params": {"epochs": 1}, "progress": False})
    pipeline.test(run, progress=False, score="mse")
    assert sorted(p.name for p in (run / "models").iterdir()) == ["fan.pt", "valve.pt"]
    params = {k: v for k, v in (p.split("=", 1) for p in TINY)}
    import yaml

    pipeline.train({"data": str(toy), "out": str(run), "model": "discriminative", "overwrite": True,
                    "progress": False, "params": {k: yaml.safe_load(v) for k, v in params.items()}})
    assert sorted(p.name for p in (run / "models").iterdir()) == ["all.pt"]
    assert not (run / "results").exists() and not (run / "history_fan.csv").exists()



# -- the CPU recipe on its own toy data (strong domain shift) -------------------------------------
DISC_RECIPE = "recipes/dcase2023_discriminative_cpu.yaml"


@pytest.mark.slow
def test_cpu_recipe_learns_on_its_strongly_shifted_toy_data(tmp_path):
    """The recipe as a user runs it (its `toy:` data: 5 machine types, strong domain shift, 60 + 6
    training clips of 5 s). Measured: official k-means score 0.648 (seed 13711) and 0.635 (seed 1);
    with the recipe's earlier 5 s tiles and 20 epochs it was 0.520-0.559."""
    from stetho.config import load_recipe, resolve

    cfg = resolve(load_recipe(DISC_RECIPE), {"data": str(tmp_path / "toy"), "out": str(tmp_path / "run"),
                                             "progress": False})
    outcome = pipeline.run(cfg)
    official = {mode: r.official_score for mode, r in outcome.results.items()}
    print("official scores:", official)
    assert set(official) == {"kmeans", "knn", "mahalanobis", "density", "kmeans_norm", "knn_norm"}
    assert official["kmeans"] > 0.60
    sections = outcome.results["kmeans"].sections
    assert [s.machine for s in sections] == ["fan", "gearbox", "pump", "slider", "valve"]
    # the source domain is learnt well; the target domain (6 training clips) is the hard part
    assert np.mean([s.metrics["AUC (source)"] for s in sections]) > 0.80
