"""End to end on every layout: real DCASE 2020 / 2021 subsets, an evaluation set labeled from
ground-truth tables, own recordings, MIMII; year-exact file names and official scores."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hmean

from stetho import pipeline
from stetho.cli import main
from stetho.config import parse_overrides, resolve
from stetho.datasets import read_manifest, scan_dataset
from stetho.synth import make_toy_dataset
from stetho.errors import DatasetError

FAST = {"epochs": 15, "batch_size": 128}


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _recipe(**over) -> dict:
    import yaml

    recipe = yaml.safe_load(Path("recipes/dcase2023_ae.yaml").read_text())
    items = [f"{k}={v}" for k, v in over.items()]
    return resolve(recipe, parse_overrides(items + ["progress=false", "params.epochs=15", "params.batch_size=128"]))


# -- the "done when": the real DCASE 2020 slider and 2021 gearbox subsets ------------------
def test_run_on_real_dcase2020_slider_gives_the_2020_score_labelled_partial(real_data, tmp_path, capsys):
    root = real_data / "dcase2020t2_dev_subset"
    out = tmp_path / "run2020"
    code = main(["-q", "run", "recipes/dcase2023_ae.yaml", f"data={root}", f"out={out}", "progress=false",
                 "params.epochs=15", "params.batch_size=128"])
    printed = capsys.readouterr().out
    assert code == 0
    # Only slider has training clips; the other machine types of the subset have test clips only.
    assert sorted(p.stem for p in (out / "models").glob("*.pt")) == ["slider"]
    # So one of the six machine types the data holds is scored: the 2020 formula's number over
    # slider, labelled partial, never printed as the official score.
    others = ["ToyCar", "ToyConveyor", "fan", "pump", "valve"]
    missing = "; ".join(f"machine type {m} not scored (6 test files)" for m in others)
    assert f"(PARTIAL: not the official score; missing: {missing})" in printed
    assert "partial score (dcase2020" in printed and "official score (" not in printed
    for mode in ("mahalanobis", "mse"):
        folder = out / "results" / mode
        assert sorted(p.name for p in folder.glob("anomaly_score_*")) == ["anomaly_score_slider_id_00.csv"]
        scores = _rows(folder / "anomaly_score_slider_id_00.csv")
        names = sorted(p.name for p in (root / "slider" / "test").glob("*.wav"))
        assert sorted(r[0] for r in scores) == names and len(names) == 6
        table = _rows(folder / "result_slider.csv")
        assert table[0] == ["id", "AUC", "pAUC"] and table[1][0] == "00"
        auc, pauc = float(table[1][1]), float(table[1][2])
        summary = _rows(folder / "summary.csv")
        last = dict(zip(summary[0], summary[-1]))
        # One machine type with one ID: the 2020 score is the mean of its AUC and pAUC.
        assert last["machine"] == "partial score" and last["status"] == "partial" and last["official score"] == ""
        assert float(last["partial score"]) == pytest.approx((auc + pauc) / 2)
        assert last["missing"] == missing
    run_summary = {r[0]: r for r in _rows(out / "summary.csv")[1:]}
    assert run_summary["mse"][1] == "dcase2020"
    assert run_summary["mse"][2:4] == ["", "partial"] and run_summary["mse"][5] == missing


def test_run_on_real_dcase2021_gearbox_gives_the_2021_official_score(real_data, tmp_path, capsys):
    root = real_data / "dcase2021t2_dev_subset"
    outcome = pipeline.run(_recipe(data=root, out=tmp_path / "run2021"))
    for mode, result in outcome.results.items():
        assert result.formula == "dcase2021"
        folder = outcome.folders[mode]
        expected = sorted(f"anomaly_score_gearbox_section_{s}_{d}_test.csv"
                          for s in ("00", "01", "02") for d in ("source", "target"))
        assert sorted(p.name for p in folder.glob("anomaly_score_*")) == expected
        for name in expected:  # each file holds exactly that domain's test files
            domain = name.split("_")[-2]
            section = name.split("_")[4]
            listed = sorted(r[0] for r in _rows(folder / name))
            on_disk = sorted(p.name for p in (root / "gearbox" / f"{domain}_test").glob(f"section_{section}_*.wav"))
            assert listed == on_disk
        # 2021: hmean of the within-domain AUC and pAUC of every section and domain.
        values = [s.metrics[k] for s in result.sections
                  for k in ("AUC (source only)", "pAUC (source)", "AUC (target only)", "pAUC (target)")]
        assert len(values) == 12
        assert result.official_score == pytest.approx(hmean(np.maximum(values, np.finfo(float).eps)))


# -- evaluation sets: labels from the organisers' ground-truth tables -----------------------------
@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=["fan", "valve"], train_clips=30, target_train_clips=4, test_clips=6,
                     duration=3.0, seed=3)
    return root


def _as_eval_set(toy: Path, dest: Path) -> Path:
    """The toy dev data renamed as a DCASE 2023 evaluation set, with its ground-truth tables."""
    for machine in ("fan", "valve"):
        shutil.copytree(toy / machine / "train", dest / "data" / machine / "train")
        test = sorted((toy / machine / "test").glob("*.wav"))
        rng = np.random.default_rng(0)
        order = rng.permutation(len(test))  # evaluation names hide the labels and the order
        gt = {k: dest / "gt" / k for k in ("ground_truth_data", "ground_truth_domain", "ground_truth_attributes")}
        for d in gt.values():
            d.mkdir(parents=True, exist_ok=True)
        rows = {k: [] for k in gt}
        for i, j in enumerate(order):
            src = test[j]
            name = f"section_00_{i:04d}.wav"
            (dest / "data" / machine / "test").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / "data" / machine / "test" / name)
            parts = src.stem.split("_")
            rows["ground_truth_data"].append(f"{name},{int(parts[4] == 'anomaly')}")
            rows["ground_truth_domain"].append(f"{name},{int(parts[2] == 'target')}")
            rows["ground_truth_attributes"].append(f"{name},{src.stem}")
        for k, d in gt.items():
            (d / f"ground_truth_{machine}_section_00_test.csv").write_text("\n".join(rows[k]) + "\n")
    return dest


def test_label_an_evaluation_set_and_score_it_like_the_dev_set(toy, tmp_path):
    ev = _as_eval_set(toy, tmp_path / "eval")
    manifest = pipeline.label(ev / "data", ev / "gt", tmp_path / "labeled.csv")
    clips, dataset = read_manifest(manifest)
    assert dataset == "dcase2023"
    test = [c for c in clips if c.split == "test"]
    assert len(test) == 2 * 24 and all(c.label in (0, 1) and c.domain in ("source", "target") for c in test)
    assert all(c.name.startswith("section_00_") and len(c.name) == len("section_00_0000.wav") for c in test)
    assert all(c.attributes for c in test)  # attached from ground_truth_attributes
    assert sorted(p.name for p in (ev / "data" / "fan" / "test").iterdir())[0] == "section_00_0000.wav"  # untouched

    run = tmp_path / "run"
    pipeline.train({"data": str(ev / "data"), "out": str(run), "params": FAST, "progress": False})
    renamed = pipeline.test(run, data=manifest, progress=False)
    dev = pipeline.test(run, data=toy, progress=False)
    for mode in ("mse", "mahalanobis"):
        # Same audio, same model: the labeled evaluation set scores exactly like the dev naming.
        assert renamed.results[mode].official_score == pytest.approx(dev.results[mode].official_score, abs=1e-12)
        listed = {r[0] for r in _rows(run / "results" / mode / "anomaly_score_fan_section_00_test.csv")}
        assert listed == {p.name for p in (toy / "fan" / "test").glob("*.wav")}  # the last test: dev names
    renamed = pipeline.test(run, data=manifest, progress=False, score="mse")
    listed = {r[0] for r in _rows(run / "results" / "mse" / "anomaly_score_fan_section_00_test.csv")}
    assert listed == {f"section_00_{i:04d}.wav" for i in range(24)}  # evaluation names in the submission


def test_label_refuses_ground_truth_that_does_not_match(toy, tmp_path):
    ev = _as_eval_set(toy, tmp_path / "eval")
    (ev / "data" / "fan" / "test" / "section_00_0000.wav").rename(ev / "data" / "fan" / "test" / "section_00_0999.wav")
    with pytest.raises(DatasetError) as err:
        pipeline.label(ev / "data", ev / "gt", tmp_path / "labeled.csv")
    msg = str(err.value)
    assert "fan/section_00_0999.wav" in msg and "fan/section_00_0000.wav" in msg
    assert "without a ground-truth row" in msg and "without a test file" in msg
    assert not (tmp_path / "labeled.csv").exists()


def test_label_command_line(toy, tmp_path, capsys):
    ev = _as_eval_set(toy, tmp_path / "eval")
    out = tmp_path / "m.csv"
    code = main(["-q", "label", "--data", str(ev / "data"), "--ground-truth", str(ev / "gt"), "--out", str(out)])
    assert code == 0 and out.is_file() and f"stetho test --run RUN --data {out}" in capsys.readouterr().out


def test_stetho_evaluate_of_score_files_for_part_of_the_data_prints_a_partial_score(toy, tmp_path, capsys):
    """Score files for fan only, of data that holds fan and valve: `stetho evaluate` gives the
    number labelled partial, and the official score once valve's file is there too."""
    rng = np.random.default_rng(0)
    scores = tmp_path / "scores"
    scores.mkdir()

    def write(machine: str) -> None:
        names = sorted(p.name for p in (toy / machine / "test").glob("*.wav"))
        rows = [f"{n},{rng.normal() + ('_anomaly_' in n):.6f}" for n in names]
        (scores / f"anomaly_score_{machine}_section_00_test.csv").write_text("\n".join(rows) + "\n")

    write("fan")
    code = main(["-q", "evaluate", str(scores), "--data", str(toy), "--out", str(tmp_path / "ev")])
    printed = capsys.readouterr().out
    assert code == 0 and "official score (" not in printed
    assert "PARTIAL: not the official score; missing: machine type valve not scored (24 test files)" in printed
    summary = _rows(tmp_path / "ev" / "summary.csv")
    last = dict(zip(summary[0], summary[-1]))
    assert last["machine"] == "partial score" and last["status"] == "partial" and last["official score"] == ""
    write("valve")
    code = main(["-q", "evaluate", str(scores), "--data", str(toy), "--out", str(tmp_path / "ev")])
    printed = capsys.readouterr().out
    assert code == 0 and "official score (dcase2023): " in printed and "PARTIAL" not in printed
    summary = _rows(tmp_path / "ev" / "summary.csv")
    last = dict(zip(summary[0], summary[-1]))
    assert last["machine"] == "official score" and last["status"] == "official" and last["missing"] == ""
    assert float(last["official score"]) > 0.5  # the anomalies score one unit higher on average


# -- own recordings: labels.csv, score-only without it ---------------------------------------------
def test_own_recordings_with_and_without_labels(toy, tmp_path):
    root = tmp_path / "mine"
    for machine in ("fan",):
        for i, p in enumerate(sorted((toy / machine / "train").glob("*.wav"))):
            (root / machine / "train").mkdir(parents=True, exist_ok=True)
            shutil.copy(p, root / machine / "train" / f"healthy_{i:03d}.wav")
        rows = ["file,label"]
        for i, p in enumerate(sorted((toy / machine / "test").glob("*.wav"))):
            sub = "day1" if i % 2 else "day2"
            dest = root / machine / "test" / sub / f"rec_{i:03d}.wav"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
            rows.append(f"{machine}/test/{sub}/rec_{i:03d}.wav,{'anomaly' if '_anomaly_' in p.name else 'normal'}")
    run = tmp_path / "run"
    pipeline.train({"data": str(root), "out": str(run), "params": FAST, "progress": False})
    unlabeled = pipeline.test(run, progress=False)
    assert unlabeled.results == {"mahalanobis": None, "mse": None}
    scores = _rows(run / "results" / "mse" / "anomaly_score_fan_id_00.csv")  # no domains: 2020 naming
    assert len(scores) == 24 and {r[0].split("/")[0] for r in scores} == {"day1", "day2"}
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    labeled = pipeline.test(run, progress=False)
    result = labeled.results["mse"]
    assert result.formula == "dcase2020"  # no domains: per-unit AUC and pAUC, arithmetic mean
    auc, pauc = result.sections[0].metrics["AUC"], result.sections[0].metrics["pAUC"]
    assert result.official_score == pytest.approx((auc + pauc) / 2)
    assert auc > 0.6


def test_test_sections_without_training_clips_are_a_warning(toy, tmp_path, caplog):
    root = tmp_path / "d"
    shutil.copytree(toy / "valve", root / "valve")
    for p in (root / "valve" / "test").glob("section_00_source_test_normal_000[0-2]_*.wav"):
        p.rename(p.with_name(p.name.replace("section_00_", "section_01_")))
    run = tmp_path / "run"
    pipeline.train({"data": str(root), "out": str(run), "params": {"epochs": 2}, "progress": False})
    pipeline.test(run, progress=False, score="mse")
    assert "test section(s) without training clips: valve 01" in caplog.text


def test_mixed_layouts_are_refused_before_any_work(toy, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(toy / "fan", root / "fan")
    (root / "pump" / "train").mkdir(parents=True)
    shutil.copy(next((toy / "fan" / "train").glob("*.wav")), root / "pump" / "train" / "normal_id_00_00000000.wav")
    with pytest.raises(DatasetError, match=r"mixed dataset layouts.*\n.*DCASE 2020 names.*pump"):
        pipeline.train({"data": str(root), "out": str(tmp_path / "r"), "progress": False})
    assert not (tmp_path / "r").exists()


def test_mimii_layout_end_to_end(tmp_path):
    """MIMII folders (two SNRs): per (id, SNR) results named by ID, keys unique across folders."""
    src = tmp_path / "toy"
    make_toy_dataset(src, machines=["fan"], train_clips=16, target_train_clips=0, test_clips=4, duration=2.0,
                     seed=5)
    files = sorted((src / "fan" / "train").glob("*.wav"))
    anomalies = sorted((src / "fan" / "test").glob("*_anomaly_*.wav"))
    root = tmp_path / "mimii"
    for snr in ("6", "-6"):
        for label, group in (("normal", files[:8]), ("abnormal", anomalies[:3])):
            folder = root / f"{snr}_dB_fan" / "fan" / "id_00" / label
            folder.mkdir(parents=True)
            for i, p in enumerate(group):
                shutil.copy(p, folder / f"{i:08d}.wav")
    scan = scan_dataset(root)
    assert scan.dataset == "mimii"
    run = tmp_path / "run"
    pipeline.train({"data": str(root), "out": str(run), "params": {"epochs": 3}, "progress": False})
    assert len(_rows(run / "train_files.csv")) == 1 + 2 * 5  # 8 normals - 3 to test, per SNR
    outcome = pipeline.test(run, progress=False, score="mse")
    folder = outcome.folders["mse"]
    assert sorted(p.name for p in folder.glob("anomaly_score_*")) == [
        "anomaly_score_fan_id_00_-6dB.csv", "anomaly_score_fan_id_00_6dB.csv"]
    names = [r[0] for r in _rows(folder / "anomaly_score_fan_id_00_-6dB.csv")]
    assert sorted(names) == sorted([f"-6_dB_normal_id_00_{i:08d}.wav" for i in range(3)]
                                   + [f"-6_dB_abnormal_id_00_{i:08d}.wav" for i in range(3)])
    assert outcome.results["mse"].formula == "dcase2020"
    assert [s.section for s in outcome.results["mse"].sections] == ["00_-6dB", "00_6dB"]
