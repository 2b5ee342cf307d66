"""A new user's first hour (issue 23 items 1, 2 and 5): symlinked evaluation sets keep the names
of the links, ``stetho test`` on one machine type of a multi-type run (``--machines``, ``--out``
into an evaluation folder of its own), and plain words for data without domains."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from stetho import pipeline
from stetho.cli import main
from stetho.datasets import Clip, read_manifest
from stetho.errors import ConfigError
from stetho.metrics import evaluate
from stetho.outputs.report_data import load_run
from stetho.outputs.summary import result_lines
from stetho.synth import make_toy_dataset

MACHINES = ("fan", "valve")


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [r for r in csv.reader(fh) if r]


def _scores(folder: Path) -> dict[str, list[list[str]]]:
    """File name -> rows of every anomaly_score_* / decision_result_* file of a results folder."""
    return {p.name: _rows(p) for p in sorted(folder.glob("*.csv"))
            if p.name.startswith(("anomaly_score_", "decision_result_"))}


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=list(MACHINES), train_clips=8, target_train_clips=0, test_clips=3,
                     duration=1.0, seed=0)
    return root


@pytest.fixture(scope="module")
def own(toy, tmp_path_factory) -> Path:
    """One's own recordings without domains: ``<machine>/{train,test}/recNNN.wav`` + labels.csv
    (the toy's source-domain clips under plain names; 3 anomalous and 3 normal test clips each)."""
    root = tmp_path_factory.mktemp("own")
    rows = ["file,label"]
    for m in MACHINES:
        for split in ("train", "test"):
            (root / m / split).mkdir(parents=True)
            files = [f for f in sorted((toy / m / split).glob("*.wav")) if "_target_" not in f.name]
            for i, f in enumerate(files):
                shutil.copy(f, root / m / split / f"rec{i:03d}.wav")
                if split == "test":
                    rows.append(f"{m}/test/rec{i:03d}.wav,{'anomaly' if '_anomaly_' in f.name else 'normal'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def run(own, tmp_path_factory) -> Path:
    """A stats run of fan and valve, tested once on all of its data (RUN/results)."""
    out = tmp_path_factory.mktemp("runs") / "own"
    pipeline.train({"data": str(own), "out": str(out), "model": "stats", "progress": False})
    pipeline.test(out, score="density", progress=False)
    return out


# ================================================================ item 1: symlinks keep their names


def test_symlinked_evaluation_set_scores_under_the_link_names(toy, run, tmp_path):
    """An evaluation set built of links (a linked train folder, a test folder of links named as
    the organisers name evaluation clips): the manifest `stetho label` writes keeps the links'
    paths, and the score files name the links, never their targets."""
    ev = tmp_path / "eval"
    (ev / "fan").mkdir(parents=True)
    (ev / "fan" / "train").symlink_to(toy / "fan" / "train", target_is_directory=True)
    (ev / "fan" / "test").mkdir()
    targets = sorted((toy / "fan" / "test").glob("*.wav"))
    truth_rows, domain_rows = [], []
    for i, target in enumerate(targets):
        name = f"section_00_{i:04d}.wav"
        (ev / "fan" / "test" / name).symlink_to(target)
        truth_rows.append(f"{name},{1 if '_anomaly_' in target.name else 0}")
        domain_rows.append(f"{name},{0 if '_source_' in target.name else 1}")
    gt = tmp_path / "gt"
    for sub, rows in (("ground_truth_data", truth_rows), ("ground_truth_domain", domain_rows)):
        (gt / sub).mkdir(parents=True)
        (gt / sub / "ground_truth_fan_section_00_test.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    manifest = pipeline.label(ev, gt, tmp_path / "labeled.csv")
    clips, dataset = read_manifest(manifest)
    test = sorted((c for c in clips if c.split == "test"), key=lambda c: c.name)
    assert [c.name for c in test] == [f"section_00_{i:04d}.wav" for i in range(len(targets))]
    assert all(c.path.is_symlink() and c.path.parent == ev / "fan" / "test" for c in test)
    train = [c for c in clips if c.split == "train"]
    assert train and all(c.path.parent == ev / "fan" / "train" for c in train)  # the linked folder's path
    assert [c.label for c in test] == [1 if "_anomaly_" in t.name else 0 for t in targets]

    outcome = pipeline.test(run, data=manifest, score="density", out=tmp_path / "ev", progress=False)
    folder = outcome.folders["density"]
    scored = _rows(next(folder.glob("anomaly_score_fan_*.csv")))
    assert sorted(r[0] for r in scored) == [c.name for c in test]
    result = outcome.results["density"]
    assert result.dcase_data  # labelled DCASE data keeps the DCASE words
    assert any(line.startswith(f"official score ({result.formula}): ") for line in result_lines(result, "t"))
    # the AUC is that of the link names' scores against the ground truth
    score_of = {r[0]: float(r[1]) for r in scored}
    auc = roc_auc_score([c.label for c in test], [score_of[c.name] for c in test])
    assert result.sections[0].metrics["AUC"] == pytest.approx(auc)


def test_two_links_to_one_file_are_two_clips(tmp_path):
    """Rows are told apart by the paths the user wrote, not by where links lead."""
    real = tmp_path / "real.wav"
    real.write_bytes(b"")
    (tmp_path / "a.wav").symlink_to(real)
    (tmp_path / "b.wav").symlink_to(real)
    mf = tmp_path / "m.csv"
    mf.write_text("path,machine,split\na.wav,fan,test\nb.wav,fan,test\n", encoding="utf-8")
    clips, _ = read_manifest(mf)
    assert [c.path for c in clips] == [tmp_path / "a.wav", tmp_path / "b.wav"]


# ================================================================ item 2: one type of a multi-type run


def test_manifest_of_one_type_tests_that_type_into_its_own_folder(run, own, tmp_path, capsys):
    """A manifest of fan clips on a fan+valve run: fan is tested (no "unknown machine type
    'valve'"), into --out DIR; the scores equal those of the run's own test, RUN is untouched,
    and `stetho report DIR` reads DIR with the run's config."""
    before = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    mf = tmp_path / "one_fan.csv"
    label = {r[0]: r[1] for r in _rows(own / "labels.csv")[1:]}
    lines = ["path,machine,split,label"] + [f"{p},fan,test,{label['fan/test/' + p.name]}"
                                           for p in sorted((own / "fan" / "test").glob("*.wav"))]
    mf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ev = tmp_path / "ev"
    assert main(["test", "--run", str(run), "--data", str(mf), "--out", str(ev), "--score", "density",
                 "--no-progress"]) == 0
    assert json.loads((ev / "tested_run.json").read_text())["run"] == str(run)
    assert json.loads((ev / "tested_run.json").read_text())["machines"] == ["fan"]
    mine, theirs = _scores(ev / "results" / "density"), _scores(run / "results" / "density")
    assert sorted(mine) == ["anomaly_score_fan_id_00.csv", "decision_result_fan_id_00.csv"]
    assert {k: theirs[k] for k in mine} == mine  # the same numbers as the run's own test
    after = {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}
    assert after == before  # RUN's results, summary and files as they were
    data = load_run(ev)
    assert data.config["model"] == "stats" and list(data.modes) == ["density"]
    assert [m["machine"] for m in data.modes["density"].machines] == ["fan"]
    capsys.readouterr()
    assert main(["report", str(ev)]) == 0 and (ev / "report.html").is_file()
    # a second evaluation into the same folder replaces the first; a foreign folder is refused
    assert main(["test", "--run", str(run), "--data", str(mf), "--out", str(ev), "--score", "density",
                 "--no-progress"]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds other files"):
        pipeline.test(run, data=mf, out=foreign, progress=False)
    with pytest.raises(ConfigError, match="is a run folder of its own"):
        pipeline.test(run, data=mf, out=_fake_run(tmp_path), progress=False)


def _fake_run(tmp_path: Path) -> Path:
    other = tmp_path / "other_run"
    other.mkdir()
    (other / "config.yaml").write_text("model: stats\n")
    return other


def test_machines_option_tests_only_those_types(run, tmp_path, capsys):
    ev = tmp_path / "valve_only"
    assert main(["test", "--run", str(run), "--machines", "valve", "--out", str(ev), "--score", "density",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    mine, theirs = _scores(ev / "results" / "density"), _scores(run / "results" / "density")
    assert sorted(mine) == ["anomaly_score_valve_id_00.csv", "decision_result_valve_id_00.csv"]
    assert {k: theirs[k] for k in mine} == mine
    assert "missing: machine type fan not scored (6 test files)" in out  # partial: fan left out
    assert main(["test", "--run", str(run), "--machines", "pump", "--out", str(ev), "--no-progress"]) == 2
    assert "no model of pump; it was trained on fan, valve" in capsys.readouterr().err


# ================================================================ item 5: data without domains


def test_plain_words_by_hand():
    """4 clips, no domains: AUC = 3 of 4 (anomaly, normal) pairs ordered right = 0.75; decisions
    flag one normal and one anomaly: precision 1/2, recall 1/2, F1 1/2."""
    clips = [Clip(Path(f"{n}.wav"), "fan", "00", "test", None, label) for n, label in
             (("n1", 0), ("n2", 0), ("a1", 1), ("a2", 1))]
    result = evaluate([("n1.wav", 0.1), ("n2.wav", 0.4), ("a1.wav", 0.35), ("a2.wav", 0.8)], clips,
                      [("n1.wav", 0), ("n2.wav", 1), ("a1.wav", 0), ("a2.wav", 1)], formula="dcase2020")
    row = result.machine_summary()[0]
    assert row["AUC"] == 0.75
    assert (row["precision"], row["recall"], row["F1 score"]) == (0.5, 0.5, 0.5)
    result.dcase_data = False
    text = "\n".join(result_lines(result, "fan"))
    assert "official score" not in text and "dcase2020" not in text and "NaN" not in text
    assert f"score: {result.partial_score:.4f}" in text
    assert ("AUC 0.75: a randomly chosen anomalous clip scores above a randomly chosen normal one 75 % of the "
            "time") in text
    assert "precision 0.50: 50 % of the clips flagged anomalous are anomalous" in text
    assert "recall 0.50: 50 % of the anomalous clips are flagged" in text
    result.dcase_data = True  # DCASE 2020 data: the same numbers, in the DCASE words
    assert f"official score (dcase2020): {result.official_score:.4f}" in result_lines(result, "fan")


def test_own_recordings_print_plain_scores_with_precision_recall(run, capsys):
    """`stetho test` on a folder dataset without domains: a plain score, real precision/recall/F1
    over all clips (equal to scikit-learn's on the written files), no "official score"."""
    assert main(["test", "--run", str(run), "--score", "density", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "official score" not in out and "dcase2020" not in out and "NaN" not in out
    assert "score: " in out and "own recordings, so no official DCASE score" in out
    folder = run / "results" / "density"
    truth = _truth(run)
    for m in MACHINES:
        dec = {r[0]: int(r[1]) for r in _rows(folder / f"decision_result_{m}_id_00.csv")}
        names = sorted(dec)
        p, r, f, _ = precision_recall_fscore_support([truth[m, n] for n in names], [dec[n] for n in names],
                                                     average="binary", zero_division=0)
        line = next(x for x in out.splitlines() if x.startswith(m + " "))
        assert line.split()[-3:] == [f"{p:.4f}", f"{r:.4f}", f"{f:.4f}"]
        summary = {row["machine"]: row for row in csv.DictReader(open(folder / "summary.csv", encoding="utf-8"))}
        assert math.isclose(float(summary[m]["F1 score"]), f)


def _truth(run: Path) -> dict[tuple[str, str], int]:
    return {(r["machine"], r["name"]): int(r["label"])
            for r in csv.DictReader(open(run / "test_files.csv", encoding="utf-8"))}
