"""CANDE-CP through the pipeline and CLI: one joint model, context modes as score modes, the
context stream and accuracies, per-setting tables, comparisons of variants × seeds, the recipes,
and an end-to-end run on the real MIMII subsets."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score

from stetho import pipeline
from stetho.cli import main
from stetho.config import load_recipe, resolve
from stetho.synth import make_toy_dataset
from stetho.models import Detector

TINY = {"epochs": 2, "predictor_epochs": 2, "predictor_hidden": [16, 8], "batch_size": 64, "lr": 1e-3,
        "predictor_lr": 1e-3, "window": 5}
MODES = ("predicted_window", "predicted", "oracle")


def _dicts(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _check_metrics(section: dict[str, str], score_rows: list[list[str]], labels: list[int]) -> None:
    """A ``sections.csv`` row's AUC, pAUC (FPR ≤ 0.1, McClish) and PR-AUC equal those computed
    here from the scores the run wrote and the files' labels."""
    scores = [float(r[1]) for r in score_rows]
    assert float(section["AUC"]) == pytest.approx(roc_auc_score(labels, scores))
    assert float(section["pAUC"]) == pytest.approx(roc_auc_score(labels, scores, max_fpr=0.1))
    assert float(section["PR-AUC"]) == pytest.approx(average_precision_score(labels, scores))


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=10, target_train_clips=2, test_clips=3,
                     duration=1.5, seed=4)
    return root


def test_train_and_test_from_the_command_line(toy, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["-q", "train", "--data", str(toy), "--out", str(run), "--model", "cande", "--no-progress",
            "--device", "cpu"]
    for k, v in TINY.items():
        argv += ["--param", f"{k}={v}"]
    assert main(argv + ["--param", "variant=film-embedding"]) == 0
    assert sorted(p.name for p in (run / "models").iterdir()) == ["all.pt"]
    assert _rows(run / "history_all.csv")[0] == ["epoch", "train_loss", "val_loss", "best"]
    predictor = _dicts(run / "history_all_predictor.csv")
    accuracy = [float(r["val_accuracy"]) for r in predictor]
    assert len(predictor) == 2 and all(math.isfinite(a) for a in accuracy)  # validated every epoch
    # the best epoch is the first with the highest validation frame accuracy
    assert [int(r["best"]) for r in predictor] == [int(i == int(np.argmax(accuracy))) for i in range(2)]
    det = Detector.load(run / "models" / "all.pt")
    assert det.contexts_ == ["fan_section_00", "valve_section_00"] and det.context_column_ == "machine_section"
    assert main(["-q", "test", "--run", str(run), "--no-progress"]) == 0
    assert "official score (dcase2023)" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "results").iterdir()) == sorted(
        ["context_accuracy.csv", "context_stream.csv", *MODES])
    for mode in MODES:
        folder = run / "results" / mode
        sections = _dicts(folder / "sections.csv")
        assert [(r["machine"], r["section"], r["files"], r["anomalies"]) for r in sections] == [
            ("fan", "00", "12", "6"), ("valve", "00", "12", "6")]
        for machine, section in zip(("fan", "valve"), sections):
            scores = _rows(folder / f"anomaly_score_{machine}_section_00_test.csv")
            decisions = _rows(folder / f"decision_result_{machine}_section_00_test.csv")
            thr = det.threshold_for(mode, machine)
            assert len(scores) == 12 and all(int(d[1]) == int(float(s[1]) > thr) for s, d in zip(scores, decisions))
            labels = [int("_anomaly_" in r[0]) for r in scores]
            assert sum(labels) == 6
            _check_metrics(section, scores, labels)  # the mode's own scores are what it evaluated
    stream = _dicts(run / "results" / "context_stream.csv")
    assert [int(r["order"]) for r in stream] == list(range(24))
    assert [r["file"] for r in stream] == sorted(r["file"] for r in stream)  # one stream, both machines
    assert {r["context"] for r in stream} == {"fan_section_00", "valve_section_00"}
    accuracy = _dicts(run / "results" / "context_accuracy.csv")
    assert [(r["scope"], r["name"], r["files"]) for r in accuracy] == [
        ("all", "all", "24"), ("machine", "fan", "12"), ("machine", "valve", "12"),
        ("context", "fan_section_00", "12"), ("context", "valve_section_00", "12")]
    overall = accuracy[0]
    assert float(overall["accuracy"]) == pytest.approx(np.mean([r["predicted"] == r["context"] for r in stream]))
    assert float(overall["accuracy (window)"]) == pytest.approx(
        np.mean([r["predicted_window"] == r["context"] for r in stream]))


def test_bad_context_column_and_unseen_contexts_are_one_line_errors(toy, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["-q", "train", "--data", str(toy), "--out", str(run), "--model", "cande", "--param", "context=snr"])
    err = capsys.readouterr().err
    assert code == 2 and "cande: params.context='snr' is not allowed; expected one of auto, machine_id" in err
    assert not run.exists()  # refused before any work
    # attributes as contexts: the target-domain test clips have attribute values never trained on
    argv = ["-q", "train", "--data", str(toy), "--out", str(run), "--model", "cande", "--no-progress",
            "--device", "cpu", "--param", "context=attributes"]
    for k, v in TINY.items():
        argv += ["--param", f"{k}={v}"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["-q", "test", "--run", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "test clip(s) have a context (attributes) that was never seen in training" in err
    assert "target_test_normal_0002" in err and "Traceback" not in err


def _write_recipe(path: Path, data: Path, out: Path, **extra) -> Path:
    recipe = {"data": str(data), "model": "cande", "out": str(out), "device": "cpu", "progress": False,
              "params": dict(TINY),
              "compare": {"seeds": [1, 2], "variants": {
                  "film-onehot": {"params": {"variant": "film-onehot"}},
                  "unconditioned": {"params": {"variant": "unconditioned"}, "test": {"score": "oracle"}}}},
              **extra}
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_compare_runs_every_variant_and_seed(toy, tmp_path, capsys):
    out = tmp_path / "cmp"
    recipe = _write_recipe(tmp_path / "cmp.yaml", toy, out)
    assert main(["-q", "run", str(recipe)]) == 0
    text = capsys.readouterr().out
    assert "AUC (mean ± std over runs)" in text and "average rank" in text and "context accuracy (window)" in text
    runs = {(v, s): out / v / f"seed_{s}" for v in ("film-onehot", "unconditioned") for s in (1, 2)}
    for (variant, seed), run in runs.items():
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert (cfg["seed"], cfg["params"]["variant"]) == (seed, variant)
    assert sorted(p.name for p in (runs["unconditioned", 1] / "results").iterdir()) == ["oracle"]
    models = ["film-onehot/predicted_window", "film-onehot/predicted", "film-onehot/oracle", "unconditioned"]
    table = _dicts(out / "comparison_models.csv")
    assert [r["model"] for r in table] == models and all(r["runs"] == "2" for r in table)
    settings = _dicts(out / "comparison_settings.csv")
    assert [(r["machine"], r["model"]) for r in settings] == [(m, x) for m in ("fan", "valve") for x in models]
    # an independent computation from the runs' own sections.csv: mean and sample std over seeds
    for row in settings:
        variant, _, mode = row["model"].partition("/")
        values = [float(next(r["AUC"] for r in _dicts(runs[variant, s] / "results" / (mode or "oracle") / "sections.csv")
                             if r["machine"] == row["machine"])) for s in (1, 2)]
        assert float(row["AUC mean"]) == pytest.approx(np.mean(values))
        assert float(row["AUC std"]) == pytest.approx(np.std(values, ddof=1))
    # ranks per setting: 1 = the highest mean AUC, ties share their mean rank
    for machine in ("fan", "valve"):
        rows = [r for r in settings if r["machine"] == machine]
        assert [float(r["AUC rank"]) for r in rows] == rankdata([-float(r["AUC mean"]) for r in rows]).tolist()
    for r in table:
        ranks = [float(x["AUC rank"]) for x in settings if x["model"] == r["model"]]
        assert float(r["AUC average rank"]) == pytest.approx(np.mean(ranks))
    assert math.isnan(float(table[-1]["context accuracy mean"]))  # the unconditioned AE predicts no context
    windowed = [float(_dicts(runs["film-onehot", s] / "results" / "context_accuracy.csv")[0]["accuracy (window)"])
                for s in (1, 2)]
    for r in table[:3]:  # one predictor per run: the same accuracy for each of film-onehot's modes
        assert float(r["context accuracy (window) mean"]) == pytest.approx(np.mean(windowed))
    assert (out / "comparison.txt").read_text().startswith("AUC (mean ± std over runs)")

    # reuse: finished runs with the same configuration are kept, changed ones retrained
    stamps = {k: (r / "models" / "all.pt").stat().st_mtime_ns for k, r in runs.items()}
    recipe = _write_recipe(tmp_path / "cmp.yaml", toy, out, compare={
        **yaml.safe_load(recipe.read_text())["compare"], "reuse": True})
    spec = yaml.safe_load(recipe.read_text())
    spec["compare"]["variants"]["unconditioned"]["params"]["hidden"] = 16
    recipe.write_text(yaml.safe_dump(spec))
    assert main(["-q", "run", str(recipe)]) == 0
    after = {k: (r / "models" / "all.pt").stat().st_mtime_ns for k, r in runs.items()}
    assert after["film-onehot", 1] == stamps["film-onehot", 1] and after["film-onehot", 2] == stamps["film-onehot", 2]
    assert after["unconditioned", 1] != stamps["unconditioned", 1]


@pytest.mark.parametrize("recipe", ["recipes/mimii_cande.yaml", "recipes/cande_toy_cpu.yaml"])
def test_recipes_resolve_to_valid_detectors(recipe):
    cfg = resolve(load_recipe(recipe))
    variants = cfg["compare"]["variants"]
    assert set(variants) == {"film-onehot", "film-embedding", "separate", "unconditioned"}
    assert len(cfg["compare"]["seeds"]) >= 2
    for name, over in variants.items():
        det = pipeline.make_detector(resolve(cfg, over, {"compare": None}))
        assert det.name == "cande" and det.variant == name and det.joint
    if recipe.endswith("mimii_cande.yaml"):  # the paper's settings
        det = pipeline.make_detector(cfg)
        assert (cfg["dataset"], cfg["mimii_split"], det.context) == ("mimii", "cande", "machine_id")
        assert (det.n_mels, det.n_frames, det.log_floor, det.hidden, det.bottleneck) == (64, 5, "add", 64, 8)
        assert (det.epochs, det.batch_size, det.lr) == (100, 256, 1e-4)
        assert (det.predictor_hidden, det.predictor_epochs, det.predictor_batch_size, det.predictor_lr) == (
            [512, 512, 256, 128, 128, 64], 50, 512, 1e-4)
        assert (det.window, det.window_lambda) == (50, 0.1)


def test_the_mimii_recipe_without_data_says_what_to_point_it_at(capsys):
    assert main(["-q", "run", "recipes/mimii_cande.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no data folder given" in err and "MIMII" in err and "zenodo.org/record/3384388" in err


def _mimii_tree(root: Path, n_normal: int = 22, n_abnormal: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for mid in ("00", "02"):
        for sub, n in (("normal", n_normal), ("abnormal", n_abnormal)):
            folder = root / "6_dB_fan" / "fan" / f"id_{mid}" / sub
            folder.mkdir(parents=True)
            for i in range(n):
                sf.write(folder / f"{i:08d}.wav", rng.normal(scale=0.1, size=4000).astype(np.float32), 16000,
                         subtype="PCM_16")
    return root


def test_validation_clips_go_only_to_detectors_that_use_them(tmp_path):
    data = _mimii_tree(tmp_path / "mimii")  # 22 normals per ID: 11 train, 1 validation, 10 test
    runs = {}
    for model, params in (("cande", {**TINY, "variant": "unconditioned"}), ("ae", {"epochs": 1})):
        runs[model] = pipeline.train({"data": str(data), "out": str(tmp_path / model), "model": model,
                                      "mimii_split": "cande", "device": "cpu", "progress": False,
                                      "params": params})
    roles = {m: [r["role"] for r in _dicts(r / "train_files.csv")] for m, r in runs.items()}
    assert roles["cande"].count("validation") == 2 and roles["cande"].count("train") == 22
    assert roles["ae"] == ["train"] * 22
    hist = _dicts(runs["cande"] / "history_all.csv")
    assert all(math.isfinite(float(r["val_loss"])) for r in hist)  # validated on the marked clips


MIMII_MACHINES = ("fan", "pump", "slider", "valve")
MIMII_IDS = ("00", "02", "04", "06")


def _real_mimii_subsets(real_data: Path) -> tuple[Path, Path]:
    """``mimii_0dB_subset`` and ``mimii_fan_id00_subset/fan`` under ``real_data``, or skip the
    test, naming what is missing, when a folder it reads has no .wav file."""
    zero_db, fan = real_data / "mimii_0dB_subset", real_data / "mimii_fan_id00_subset" / "fan"
    needed = [zero_db / f"0_dB_{m}" / m / f"id_{i}" / sub
              for m in MIMII_MACHINES for i in MIMII_IDS for sub in ("normal", "abnormal")]
    needed += [fan / "id_00" / sub for sub in ("normal", "abnormal")]
    missing = [str(d.relative_to(real_data)) for d in needed if not d.is_dir() or not any(d.glob("*.wav"))]
    if missing:
        pytest.skip(f"the MIMII subsets this test needs are not under {real_data}: {len(missing)} of "
                    f"{len(needed)} folders missing or without .wav files (e.g. {missing[0]})")
    return zero_db, fan


def test_real_mimii_subsets_end_to_end(real_data, tmp_path, capsys):
    """The 16 MIMII contexts at 0 dB (one normal + one abnormal each) and 40 clips of fan id_00:
    train CANDE-CP with the paper's split rule and report per-setting and per-context figures.
    A small configuration (3 epochs, predictor 320→64→32→16) that checks the plumbing on real
    files; the README's figures for these subsets come from the larger one it names. Thresholds
    ``official`` (in-sample): a 0 dB context has one training clip, none to spare for calibration."""
    zero_db, fan_subset = _real_mimii_subsets(real_data)
    root = tmp_path / "mimii"
    root.mkdir()
    for m in MIMII_MACHINES:
        (root / f"0_dB_{m}").symlink_to(zero_db / f"0_dB_{m}")
    (root / "fan").symlink_to(fan_subset)
    run = tmp_path / "run"
    argv = ["-q", "train", "--data", str(root), "--out", str(run), "--model", "cande", "--dataset", "mimii",
            "--mimii-split", "cande", "--no-progress", "--device", "cpu", "--param", "variant=film-onehot",
            "--param", "threshold=official"]
    for k, v in {**TINY, "epochs": 3, "predictor_epochs": 3, "predictor_hidden": [64, 32]}.items():
        argv += ["--param", f"{k}={v}"]
    assert main(argv) == 0
    assert main(["-q", "test", "--run", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    det = Detector.load(run / "models" / "all.pt")
    assert len(det.contexts_) == 16 and det.contexts_[0] == "fan_id_00" and det.context_column_ == "machine_id"
    roles = [r["role"] for r in _dicts(run / "train_files.csv")]
    assert roles.count("validation") == 1 and roles.count("train") == 16 + 10  # fan id_00: ⌊0.1 · 10⌋ = 1
    for mode in MODES:
        sections = {(r["machine"], r["section"]): r for r in _dicts(run / "results" / mode / "sections.csv")}
        assert len(sections) == 17  # 16 settings at 0 dB + fan id_00 without SNR
        fan = sections[("fan", "00")]  # 9 test normals + 20 anomalies
        assert (fan["files"], fan["anomalies"]) == ("29", "20")
        scores = _rows(run / "results" / mode / "anomaly_score_fan_id_00.csv")
        labels = [int("abnormal" in r[0]) for r in scores]
        assert (len(scores), sum(labels)) == (29, 20)
        _check_metrics(fan, scores, labels)
        # the 0 dB folders keep their single normal for training: only anomalies to test, AUC undefined
        assert all(math.isnan(float(r["AUC"])) for k, r in sections.items() if k != ("fan", "00"))
    accuracy = {(r["scope"], r["name"]): r for r in _dicts(run / "results" / "context_accuracy.csv")}
    assert int(accuracy["all", "all"]["files"]) == 16 + 29
    assert len([k for k in accuracy if k[0] == "context"]) == 16
    # every accuracy is the share of right files in the recorded stream, for its scope
    stream = _dicts(run / "results" / "context_stream.csv")
    assert len(stream) == 16 + 29
    for (scope, name), row in accuracy.items():
        mine = [r for r in stream if scope == "all" or r[scope] == name]
        assert int(row["files"]) == len(mine)
        for column, key in (("accuracy", "predicted"), ("accuracy (window)", "predicted_window")):
            assert float(row[column]) == pytest.approx(np.mean([r[key] == r["context"] for r in mine]))
