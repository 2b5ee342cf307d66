"""The HTML report (stetho/outputs/report.py, report_data.py, report_figures.py) and the run
record it reads (stetho/outputs/run_record.py): a tiny toy run and two seeds of it, rendered and
checked against the run's own CSVs and models; the report never imports torch."""

from __future__ import annotations

import base64
import csv
import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stetho import pipeline
from stetho.cli import main
from stetho.synth import make_toy_dataset
from stetho.metrics import auc
from stetho.models import Detector
from stetho.outputs.report import _embeddings, _png, embedding_figure, load_run, write_report
from stetho.outputs.run_record import read_thresholds, read_train_embeddings, write_run_record, write_thresholds

MACHINES = ["fan", "valve"]
FAST = {"epochs": 2, "batch_size": 128}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "input", "link"}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    make_toy_dataset(root, machines=MACHINES, train_clips=12, target_train_clips=3, test_clips=4,
                     duration=2.0, seed=0)
    return root


def _train_test(root: Path, out: Path, seed: int) -> Path:
    cfg = {"data": str(root), "out": str(out), "params": FAST, "seed": seed, "progress": False, "cache": False}
    pipeline.train(cfg)  # writes the run record the report reads
    pipeline.test(out, progress=False)
    return out


@pytest.fixture(scope="module")
def runs(toy_root, tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("runs")
    return [_train_test(toy_root, base / f"seed_{s}", s) for s in (1, 2)]


class _Page(HTMLParser):
    """Collects tags, ids, images, table rows; records any unbalanced closing tag."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: dict[str, dict[str, str]] = {}
        self.images: list[dict[str, str]] = []
        self.cells: list[tuple[dict[str, str], str]] = []
        self._cell: dict[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids[a["id"]] = a
        if tag == "img":
            self.images.append(a)
        if tag == "td":
            self._cell, self._text = a, []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag == "td" and self._cell is not None:
            self.cells.append((self._cell, "".join(self._text)))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._text.append(data)


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    return page


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _official(run: Path) -> dict[str, float]:
    """Official score per mode from RUN/summary.csv and from results/<mode>/summary.csv (must agree)."""
    top = {r["score"]: float(r["official score"]) for r in _csv(run / "summary.csv")}
    for mode, value in top.items():
        last = _csv(run / "results" / mode / "summary.csv")[-1]
        assert last["machine"] == "official score" and float(last["official score"]) == value
    return top


def test_report_of_a_toy_run_shows_every_machine_figure_and_the_official_score(runs, tmp_path):
    run = runs[0]
    report = write_report([run], tmp_path / "report.html")
    text = report.path.read_text(encoding="utf-8")
    page = _parse(text)

    assert not re.search(r"https?://", text), "the report must not refer to the network"
    assert "<script" not in text and "<link" not in text

    official = _official(run)
    assert sorted(official) == ["mahalanobis", "mse"]
    for mode, value in official.items():
        tag = page.ids[f"official-{mode}"]
        assert float(tag["data-value"]) == value  # the exact number, not a rounding of it
        assert f"{value:.4f}" in text

    # every machine in each mode's table, with the CSV's values
    machine_cells = [(a, t) for a, t in page.cells]
    for mode in official:
        summary = _csv(run / "results" / mode / "summary.csv")[:-1]
        assert [r["machine"] for r in summary] == MACHINES
        for row in summary:
            value = float(row["AUC (source)"])
            assert any(a.get("data-value") == repr(value) for a, _ in machine_cells)
        for m in MACHINES:
            assert any(t == m for _, t in machine_cells)

    # best value per column marked: the best AUC (target) cell holds the highest CSV value, unless
    # that is at or below chance (0.5): a "best" below chance is never starred
    best = [float(a["data-value"]) for a, _ in machine_cells if a.get("class") == "best"]
    for mode in official:
        values = [float(r["AUC (target)"]) for r in _csv(run / "results" / mode / "summary.csv")[:-1]]
        if max(values) > 0.5 and len(set(values)) > 1:  # (test_no_best_star_on_values_at_or_below_chance)
            assert max(values) in best

    # every figure: ROC + histogram per mode, machine and section; one history per machine
    expected = [f"{kind}-{mode}-{m}-00" for mode in official for m in MACHINES for kind in ("roc", "hist")]
    expected += [f"history-{m}" for m in MACHINES]
    for fid in expected:
        assert fid in page.ids, fid
    assert sorted(f.id for f in report.figures) == sorted(expected)
    assert len(page.images) == len(expected)
    for img in page.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1]).startswith(PNG_MAGIC)

    # the PNGs also next to the CSVs
    for mode in official:
        for m in MACHINES:
            for kind in ("roc", "histogram"):
                assert (run / "results" / mode / f"{kind}_{m}_section_00.png").read_bytes().startswith(PNG_MAGIC)
    assert all((run / f"history_{m}.png").is_file() for m in MACHINES)

    # an AE stores no embeddings: the figure is skipped with a note
    assert "embeddings" not in {f.id for f in report.figures} and "stores no embeddings" in text
    # config, versions, seed, data root, timings
    cfg_seed = str(load_run(run).config["seed"])
    assert any(t == cfg_seed for _, t in page.cells)
    assert str(toy_root_of(run)) in text
    assert "training time" in text and "not recorded" not in text


def toy_root_of(run: Path) -> Path:
    import yaml

    return Path(yaml.safe_load((run / "config.yaml").read_text())["data"])


def test_curves_and_thresholds_are_the_runs_own(runs):
    """The curves' data reproduce the CSV's AUC (source/target); the drawn threshold is the model's."""
    run = runs[0]
    data = load_run(run)
    for mode, md in data.modes.items():
        sections = {(r["machine"], r["section"]): r for r in _csv(run / "results" / mode / "sections.csv")}
        assert {(s.machine, s.section) for s in md.sections} == set(sections)
        for sec in md.sections:
            row = sections[(sec.machine, sec.section)]
            dom = np.array(sec.domains)
            for d in ("source", "target"):
                mask = (dom == d) | (sec.labels == 1)
                assert auc(sec.labels[mask], sec.scores[mask]) == pytest.approx(float(row[f"AUC ({d})"]), abs=1e-12)
            det = Detector.load(run / "models" / f"{sec.machine}.pt")
            assert sec.threshold == det.threshold_for(mode, sec.machine)
            # the decisions are the scores above that threshold
            assert np.array_equal(sec.decisions, (sec.scores > sec.threshold).astype(int))


def test_run_records_train_and_test_times(runs):
    timings = json.loads((runs[0] / "timings.json").read_text())
    assert timings["train"]["seconds"] >= timings["train"]["features_seconds"] > 0
    assert set(timings["train"]["fit_seconds"]) == set(MACHINES)
    assert timings["test"]["seconds"] > 0 and timings["test"]["clips"] == 2 * 4 * 4
    files = _csv(runs[0] / "test_files.csv")
    assert len(files) == 32 and {r["label"] for r in files} == {"0", "1"}


def test_two_runs_give_a_comparison_with_mean_and_std(runs, tmp_path):
    out = tmp_path / "cmp.html"
    assert main(["-q", "report", *map(str, runs), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    page = _parse(text)
    assert not re.search(r"https?://", text)
    assert "comparison" in page.ids
    officials = [_official(r) for r in runs]
    for mode in ("mahalanobis", "mse"):
        values = np.array([o[mode] for o in officials])
        for v in values:  # each run's official score in the comparison table
            assert any(a.get("data-value") == repr(float(v)) for a, _ in page.cells)
        mean, std = values.mean(), values.std(ddof=1)
        assert f"{mean:.4f} ± {std:.4f}" in text
        for m in MACHINES:
            assert f"compare-roc-{mode}-{m}-00" in page.ids
    assert "mean ± std (2 runs: seed_1, seed_2)" in text
    # both runs' own sections follow, with their figures under distinct ids
    for i in (0, 1):
        assert f"run{i}-roc-mse-fan-00" in page.ids


def test_a_partial_run_is_labelled_partial_and_never_averaged_with_official_ones(runs, toy_root, tmp_path):
    """A copy of a run re-evaluated without valve's score files: the data holds valve, so its
    score is partial; the report says so and the comparison keeps it out of the official column."""
    import shutil

    from stetho.outputs import write_results

    part = tmp_path / "part"
    shutil.copytree(runs[0], part)
    folder = part / "results" / "mse"
    for f in folder.glob("*_valve_*.csv"):
        f.unlink()
    result = pipeline.evaluate_folder(folder, toy_root)
    assert result.partial and result.missing == ["machine type valve not scored (16 test files)"]
    write_results(folder, result)

    page_text = write_report([part], tmp_path / "one.html", save_png=False).path.read_text(encoding="utf-8")
    page = _parse(page_text)
    tag = page.ids["official-mse"]
    assert tag["data-status"] == "partial" and float(tag["data-value"]) == result.partial_score
    assert f"partial score (mse, dcase2023): <b>{result.partial_score:.4f}</b> (PARTIAL: not the official score)" \
        in page_text
    assert "missing for an official score: machine type valve not scored (16 test files)" in page_text
    assert page.ids["official-mahalanobis"]["data-status"] == "official"  # that mode was not touched

    # the same setting twice, one run official and one partial: no mean of the two numbers
    text = write_report([runs[0], part], tmp_path / "cmp.html", save_png=False).path.read_text(encoding="utf-8")
    _parse(text)
    assert "partial score (not official)" in text
    assert "PARTIAL (not the official score): part: machine type valve not scored (16 test files)" in text
    official = _official(runs[0])["mse"]
    assert f"{(official + result.partial_score) / 2:.4f} ±" not in text


def test_stetho_run_writes_the_report_unless_told_not_to(toy_root, tmp_path):
    cfg = {"data": str(toy_root), "out": str(tmp_path / "a"), "params": {**FAST, "epochs": 1},
           "progress": False, "cache": False, "test": {"score": "mse"}}
    pipeline.run(cfg)
    assert (tmp_path / "a" / "report.html").is_file()
    pipeline.run({**cfg, "out": str(tmp_path / "b")}, report=False)
    assert not (tmp_path / "b" / "report.html").exists() and (tmp_path / "b" / "summary.csv").is_file()


def test_report_refuses_an_untested_folder(tmp_path):
    assert main(["-q", "report", str(tmp_path)]) == 2


class _EmbeddingModel:
    """A fitted joint embedding model as the run record reads it (attributes only, no torch)."""

    name = "fake"

    def __init__(self, x, domains, machines):
        self.train_embeddings_ = {12: x[::-1] * 0, 16: x}  # the last epoch is shown
        self.train_domains_ = domains
        self.train_machine_of_ = machines
        self.machines_ = sorted(set(machines))
        self.thresholds_ = {"kmeans": {"valve": 0.25, "fan": 1 / 3}, "knn": {"fan": 2.0, "valve": 1e-9}}
        self.decision_scores_ = {"kmeans": np.array([0.1, 1 / 7]), "knn": np.array([3.0, 0.5])}
        self.calibration_ = {"file": ["a.wav", "b.wav"], "machine": ["fan", "valve"], "section": ["00", "01"],
                             "domain": ["source", "target"]}


def _pca_ref(train: np.ndarray, other: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Independent: the first two principal axes by SVD of the centred training rows; returns the
    projection of ``other`` (default: the training rows) and the explained variance ratios."""
    mean = train.mean(axis=0)
    _, sv, vt = np.linalg.svd(train - mean, full_matrices=False)
    x = train if other is None else other
    return (x - mean) @ vt[:2].T, (sv[:2] ** 2) / (sv ** 2).sum()


def _same_up_to_sign(a: np.ndarray, b: np.ndarray, atol: float) -> bool:
    signs = np.sign((a * b).sum(axis=0))
    return bool(np.allclose(a * signs, b, atol=atol))


def _fake_run(tmp_path: Path, n_test: int = 12, epoch: int = 16):
    """A fake joint embedding model (fan: rows 0-19, valve: 20-39), its run record and a
    test_embeddings.npz."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    det = _EmbeddingModel(x, (["source"] * 15 + ["target"] * 5) * 2, ["fan"] * 20 + ["valve"] * 20)
    write_run_record(tmp_path, {"fan": det, "valve": det})
    test = rng.normal(size=(n_test, 6)) * 2.0
    (tmp_path / "results").mkdir(parents=True, exist_ok=True)
    machine = np.array(["fan", "valve"] * (n_test // 2))
    np.savez(tmp_path / "results" / "test_embeddings.npz", embeddings=test.astype(np.float32),
             epoch=np.full(n_test, epoch), name=np.array([f"clip_{i}.wav" for i in range(n_test)]),
             machine=machine, section=np.array(["00"] * n_test),
             domain=np.array(["source", "target", "target", "source"] * (n_test // 4)),
             label=np.array([0, 0, 1, 1, 0, 1] * (n_test // 6)))
    return det, x, test.astype(np.float32).astype(np.float64), machine


def test_the_run_record_holds_thresholds_decision_scores_and_the_last_training_embeddings(tmp_path):
    det, x, _, _ = _fake_run(tmp_path)
    assert _csv(tmp_path / "thresholds.csv") == [  # once, though listed under two machine types
        {"mode": "kmeans", "machine": "fan", "threshold": repr(1 / 3)},
        {"mode": "kmeans", "machine": "valve", "threshold": "0.25"},
        {"mode": "knn", "machine": "fan", "threshold": "2.0"},
        {"mode": "knn", "machine": "valve", "threshold": "1e-09"}]
    assert _csv(tmp_path / "decision_scores.csv") == [
        {"file": "a.wav", "machine": "fan", "section": "00", "domain": "source", "kmeans": "0.1", "knn": "3.0"},
        {"file": "b.wav", "machine": "valve", "section": "01", "domain": "target", "kmeans": repr(1 / 7),
         "knn": "0.5"}]
    train = read_train_embeddings(tmp_path)
    assert np.array_equal(train["embeddings"], x) and train["embeddings"].dtype == np.float64
    assert train["epoch"].tolist() == [16] * 40
    assert train["machine"].tolist() == det.train_machine_of_ and train["domain"].tolist() == det.train_domains_
    assert read_thresholds(tmp_path)[("knn", "valve")] == 1e-9
    # the thresholds a test decided with (refitted by --decision-fpr) come before the trained ones
    det.thresholds_ = {"kmeans": {"fan": 5.0, "valve": 6.0}}
    write_thresholds(tmp_path, {"fan": det}, "test_thresholds.csv")
    assert read_thresholds(tmp_path) == {("kmeans", "fan"): 5.0, ("kmeans", "valve"): 6.0}
    # a model without embeddings, trained again into the same folder, leaves no stale npz
    del det.train_embeddings_
    write_run_record(tmp_path, {"fan": det})
    assert read_train_embeddings(tmp_path) is None and (tmp_path / "thresholds.csv").is_file()


def test_embedding_projection_is_the_pca_of_the_stored_training_embeddings_per_machine(tmp_path):
    det, x, _, _ = _fake_run(tmp_path / "old")
    (tmp_path / "old" / "results" / "test_embeddings.npz").unlink()  # a run tested before the npz existed
    emb, note = _embeddings(read_train_embeddings(tmp_path / "old"), tmp_path / "old")
    assert emb is not None and emb["epoch"] == 16 and not emb["has_test"]
    assert "training clips only" in note and "test_embeddings.npz" in note
    for machine, rows in (("fan", slice(0, 20)), ("valve", slice(20, 40))):
        entry = emb["machines"][machine]
        ref, explained = _pca_ref(x[rows])
        assert _same_up_to_sign(entry["train"], ref, atol=1e-8)
        assert np.allclose(entry["explained"], explained) and entry["test"].shape == (0, 2)
        assert entry["train_domain"] == ["source"] * 15 + ["target"] * 5
        assert _png(embedding_figure(entry, machine)).startswith(PNG_MAGIC)


def test_test_embeddings_are_projected_by_the_pca_of_the_training_ones(tmp_path):
    from sklearn.decomposition import PCA

    det, x, test, machine = _fake_run(tmp_path)
    emb, note = _embeddings(read_train_embeddings(tmp_path), tmp_path)
    assert emb["has_test"] and "train and test embeddings of epoch 16" in note
    for m, rows in (("fan", slice(0, 20)), ("valve", slice(20, 40))):
        entry = emb["machines"][m]
        sel = machine == m
        direct = PCA(n_components=2).fit(x[rows]).transform(test[sel])
        assert _same_up_to_sign(entry["test"], direct, atol=1e-6)
        # not a PCA of train and test together
        both = PCA(n_components=2).fit(np.vstack([x[rows], test[sel]])).transform(test[sel])
        assert not _same_up_to_sign(entry["test"], both, atol=1e-3)
        assert entry["test_label"].tolist() == np.array([0, 0, 1, 1, 0, 1] * 2)[sel].tolist()
        assert len(entry["test_domain"]) == sel.sum() == len(entry["test_name"])
        png = _png(embedding_figure(entry, m))
        assert png.startswith(PNG_MAGIC)
    # test embeddings of another epoch than the shown training ones are left out, with a note
    _fake_run(tmp_path, epoch=12)
    emb, note = _embeddings(read_train_embeddings(tmp_path), tmp_path)
    assert not emb["has_test"] and "another epoch" in note


def test_models_without_embeddings_get_a_note():
    emb, note = _embeddings(None, model="ae")
    assert emb is None and "(ae)" in note and "stores no embeddings" in note


def test_a_comparison_recipe_gets_one_report_over_its_runs(toy_root, tmp_path):
    cfg = {"data": str(toy_root), "out": str(tmp_path / "cmp"), "params": {**FAST, "epochs": 1},
           "progress": False, "cache": False, "test": {"score": "mse"}, "compare": {"seeds": [1, 2]}}
    comparison = pipeline.run(cfg)
    text = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    page = _parse(text)
    assert "comparison" in page.ids and "mean ± std (2 runs: seed_1, seed_2)" in text
    runs = [p for p, _ in comparison.runs["ae"]]
    values = np.array([_official(r)["mse"] for r in runs])
    assert f"{values.mean():.4f} ± {values.std(ddof=1):.4f}" in text


def test_runs_with_the_same_folder_name_are_told_apart_and_the_cli_flag_parses(tmp_path):
    from types import SimpleNamespace

    from stetho.cli import build_parser
    from stetho.outputs.report import _labels

    runs = [SimpleNamespace(path=tmp_path / v / "seed_1") for v in ("ae", "bigan")]
    assert _labels(runs) == ["ae/seed_1", "bigan/seed_1"]
    assert build_parser().parse_args(["run", "r.yaml", "--no-report"]).report is False
    assert build_parser().parse_args(["run", "r.yaml", "a=1"]).report is True


def test_a_new_test_removes_the_figures_of_the_earlier_one(runs):
    run = runs[1]
    stale = run / "results" / "mse" / "roc_pump_section_07.png"
    stale.write_bytes(PNG_MAGIC)
    other = run / "results" / "mse" / "notes.png"
    other.write_bytes(PNG_MAGIC)
    pipeline.test(run, progress=False)
    # results/ is replaced as a whole by each test (one transaction): nothing of the earlier one stays
    assert not stale.exists() and not other.exists()
    assert (run / "results" / "mse" / "summary.csv").is_file()


def test_a_run_from_before_test_files_and_timings_is_reported_from_its_data(runs, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(runs[0], old)
    (old / "test_files.csv").unlink()
    (old / "timings.json").unlink()
    new, rescanned = load_run(runs[0]), load_run(old)
    for mode in new.modes:
        a, b = new.modes[mode].sections, rescanned.modes[mode].sections
        assert [(s.machine, s.section, s.names, s.labels.tolist(), s.domains) for s in a] == \
               [(s.machine, s.section, s.names, s.labels.tolist(), s.domains) for s in b]
    text = write_report([old], save_png=False).path.read_text(encoding="utf-8")
    assert "not recorded by this run" in text


# -- a discriminative run: test embeddings stored by `stetho test` and projected by the report ------
TINY_DISC = {"branches": ["stft:512:256"], "tile_seconds": 1.0, "channels": [4, 4, 8, 8], "emb_dim": 8,
             "n_subclusters": 2, "epochs": 2, "batch_size": 16, "ensemble_epochs": [1, 2], "n_clusters": 4}


@pytest.fixture(scope="module")
def disc_run(toy_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("disc") / "run"
    pipeline.train({"data": str(toy_root), "out": str(out), "model": "discriminative", "params": TINY_DISC,
                    "seed": 3, "progress": False, "cache": False})
    pipeline.test(out, progress=False, score="kmeans")
    return out


def test_a_discriminative_test_stores_the_test_embeddings_of_the_last_ensemble_epoch(disc_run, toy_root):
    from stetho.datasets import scan_dataset

    with np.load(disc_run / "results" / "test_embeddings.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    files = _csv(disc_run / "test_files.csv")
    emb = data["embeddings"]
    assert emb.dtype == np.float32 and emb.shape == (len(files), 8)
    assert data["name"].tolist() == [r["name"] for r in files]
    assert data["machine"].tolist() == [r["machine"] for r in files]
    assert data["domain"].tolist() == [r["domain"] for r in files]
    assert data["label"].tolist() == [int(r["label"]) for r in files] and set(data["label"]) == {0, 1}
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    det = Detector.load(disc_run / "models" / "all.pt")
    assert set(data["epoch"]) == {max(det.nets_)} == {max(det.train_embeddings_)} == {2}
    # the run record holds the training embeddings of that epoch, as the model stores them
    train = read_train_embeddings(disc_run)
    assert np.array_equal(train["embeddings"], det.train_embeddings_[2]) and set(train["epoch"]) == {2}
    assert train["machine"].tolist() == det.train_machine_of_ and train["domain"].tolist() == det.train_domains_
    # one row per scored clip: the names of every score file, in their order
    for path in sorted((disc_run / "results" / "kmeans").glob("anomaly_score_*.csv")):
        machine, section = path.stem.split("_")[2], path.stem.split("_")[4]
        with open(path, newline="") as fh:
            names = [r[0] for r in csv.reader(fh)]
        rows = (data["machine"] == machine) & (data["section"] == section)
        assert names == data["name"][rows].tolist()
    # the embeddings of the last ensemble epoch's model
    clips = {(c.machine, c.name): c for c in scan_dataset(toy_root, splits=("test",)).clips}
    pick = [0, len(files) - 1, len(files) // 2]
    ref = det.embed([clips[(data["machine"][i], data["name"][i])] for i in pick], epoch=max(det.nets_))
    assert np.allclose(emb[pick], ref, atol=1e-5)
    other = det.embed([clips[(data["machine"][i], data["name"][i])] for i in pick], epoch=1)
    assert not np.allclose(emb[pick], other, atol=1e-3)


def test_the_report_projects_train_and_test_embeddings_of_each_machine(disc_run):
    from sklearn.decomposition import PCA

    report = write_report([disc_run], save_png=True)
    text = report.path.read_text(encoding="utf-8")
    page = _parse(text)
    figs = {f.id: f for f in report.figures}
    for machine in MACHINES:
        fig = figs[f"embeddings-{machine}"]
        assert f"embeddings-{machine}" in page.ids and fig.caption.startswith("train and test embeddings")
        assert fig.png.startswith(PNG_MAGIC) and (disc_run / f"embeddings_{machine}.png").is_file()
    assert "train and test embeddings of epoch 2" in text
    # the test points: a PCA fitted on the machine's training embeddings, applied to its test ones
    det = Detector.load(disc_run / "models" / "all.pt")
    with np.load(disc_run / "results" / "test_embeddings.npz") as npz:
        test, machines, labels = npz["embeddings"].astype(np.float64), npz["machine"], npz["label"]
    emb = report.runs[0].embeddings
    train = det.train_embeddings_[2]
    for machine in MACHINES:
        entry = emb["machines"][machine]
        rows = [i for i, m in enumerate(det.train_machine_of_) if m == machine]
        pca = PCA(n_components=2).fit(train[rows])
        assert _same_up_to_sign(entry["test"], pca.transform(test[machines == machine]), atol=1e-6)
        assert _same_up_to_sign(entry["train"], pca.transform(train[rows]), atol=1e-6)
        assert entry["test_label"].tolist() == labels[machines == machine].tolist()
    # an older run without the npz: training clips only, with a note
    (disc_run / "results" / "test_embeddings.npz").unlink()
    try:
        text = write_report([disc_run], save_png=False).path.read_text(encoding="utf-8")
        assert "training clips only" in text and "training embeddings — fan" in text
    finally:
        pipeline.test(disc_run, progress=False, score="kmeans")


def test_a_run_from_before_the_run_record_is_reported_without_its_model(runs, disc_run, tmp_path):
    """No thresholds.csv / train_embeddings.npz: thresholds from the decisions, no embedding
    figure, and a note saying why; nothing is loaded from models/."""
    import shutil

    for name, run in (("ae", runs[0]), ("disc", disc_run)):
        old = tmp_path / name
        shutil.copytree(run, old)
        for f in ("thresholds.csv", "decision_scores.csv", "train_embeddings.npz", "test_thresholds.csv"):
            (old / f).unlink(missing_ok=True)
        shutil.rmtree(old / "models")  # proof that the report does not need them
        data = load_run(old)
        for md in data.modes.values():
            for sec in md.sections:
                normal, anomalous = sec.scores[sec.decisions == 0], sec.scores[sec.decisions == 1]
                if normal.size and anomalous.size:
                    assert normal.max() < sec.threshold < anomalous.min()
        assert data.embeddings is None and "no train_embeddings.npz" in data.embedding_note
        text = write_report([old], save_png=False).path.read_text(encoding="utf-8")
        _parse(text)
        assert "has no thresholds.csv (trained before stetho recorded it" in text
        assert "no train_embeddings.npz" in text


def test_the_report_imports_neither_torch_nor_the_models(runs, disc_run, tmp_path):
    code = (
        "import sys\n"
        "from stetho.outputs.report import report_runs, write_report\n"
        f"report = write_report([{str(runs[0])!r}, {str(disc_run)!r}], {str(tmp_path / 'r.html')!r})\n"
        f"report_runs([{str(disc_run)!r}], {str(tmp_path / 'locked.html')!r})  # `stetho report`: locks too\n"
        "ids = sorted(f.id for f in report.figures)\n"
        "assert any(i.startswith('run1-embeddings-') for i in ids), ids\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'stetho.models')))\n"
        "assert not bad, bad\n"
        "print('ok', len(ids))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]
    assert (tmp_path / "r.html").is_file() and (tmp_path / "locked.html").is_file()


# -- issue 23 item 7: flagged files, histograms not squashed by outliers, no star below chance,
#    runs tested on unlabelled data ------------------------------------------------------------------
def _tables(text: str) -> dict[str, list[list[tuple[str, str]]]]:
    """Rows of every table by its class: per cell (data-value or "", text)."""

    class _T(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.out: dict[str, list[list[tuple[str, str]]]] = {}
            self.cls: list[str] = []
            self.row: list[tuple[str, str]] | None = None
            self.cell: tuple[str, list[str]] | None = None

        def handle_starttag(self, tag, attrs):
            a = {k: v or "" for k, v in attrs}
            if tag == "table":
                self.cls.append(a.get("class", ""))
            elif tag == "tr":
                self.row = []
            elif tag == "td":
                self.cell = (a.get("data-value", ""), [])

        def handle_endtag(self, tag):
            if tag == "table":
                self.cls.pop()
            elif tag == "td" and self.cell is not None and self.row is not None:
                self.row.append((self.cell[0], "".join(self.cell[1])))
                self.cell = None
            elif tag == "tr" and self.row:
                self.out.setdefault(self.cls[-1], []).append(self.row)
                self.row = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell[1].append(data)

    t = _T()
    t.feed(text)
    return t.out


def _submission(folder: Path, kind: str, machine: str) -> dict[str, float]:
    with open(folder / f"{kind}_{machine}_section_00_test.csv", newline="") as fh:
        return {r[0]: float(r[1]) for r in csv.reader(fh)}


def _expected_flagged(run: Path, mode: str, machine: str, labels: dict[str, str]) -> list[list[object]]:
    """Independent: the rows the flagged table must hold, from the run's own CSVs."""
    folder = run / "results" / mode
    scores, decisions = _submission(folder, "anomaly_score", machine), _submission(folder, "decision_result", machine)
    thr = {(r["mode"], r["machine"]): float(r["threshold"]) for r in _csv(run / "test_thresholds.csv")}[(mode, machine)]
    files = {r["name"]: r for r in _csv(run / "test_files.csv") if r["machine"] == machine}
    rows = [[n, "00", files[n]["domain"] or "-", labels.get(files[n]["label"], "unknown"), s, thr, s - thr]
            for n, s in scores.items() if decisions[n] == 1]
    return sorted(rows, key=lambda r: -r[6])


def _cells(row: list[tuple[str, str]]) -> list[object]:
    return [float(v) if v else t for v, t in row]


def test_the_flagged_table_lists_the_flagged_files_of_each_machine_with_score_threshold_and_excess(runs, tmp_path):
    run = runs[0]
    text = write_report([run], tmp_path / "r.html", save_png=False).path.read_text(encoding="utf-8")
    tables = _tables(text)
    labels = {"0": "normal", "1": "anomalous"}
    n_flagged = 0
    for mode in ("mahalanobis", "mse"):
        for m in MACHINES:
            expected = _expected_flagged(run, mode, m, labels)
            got = [_cells(r) for r in tables.get(f"flagged-table flagged-{mode}-{m}", [])]
            assert got == expected, (mode, m)
            assert all(r[4] > r[5] and r[6] > 0 for r in got)  # every flagged score is above its threshold
            assert f"{m}: {len(expected)} of 16 files flagged" in text
            n_flagged += len(expected)
    assert n_flagged > 0
    # file names are plain text: nothing in the page links anywhere
    assert "<a " not in text and "href" not in text


def _outlier_copy(run: Path, tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A copy of ``run`` whose first mse score of fan is 10^6 (one wild outlier)."""
    import shutil

    copy = tmp_path / "outlier"
    shutil.copytree(run, copy)
    path = copy / "results" / "mse" / "anomaly_score_fan_section_00_test.csv"
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    rows[0][1] = "1000000.0"
    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return copy, np.array([float(r[1]) for r in rows])


def test_histograms_clip_an_outlier_at_the_99th_percentile_and_say_how_many_scores_they_clipped(runs, tmp_path):
    from stetho.outputs.report_figures import histogram_figure

    copy, scores = _outlier_copy(runs[0], tmp_path)
    thr = {(r["mode"], r["machine"]): float(r["threshold"]) for r in _csv(copy / "test_thresholds.csv")}
    # independent: the clipped range's end (the 99th percentile taken as one of the scores)
    hi = max(float(np.sort(scores)[int(np.floor(0.99 * (len(scores) - 1)))]), thr[("mse", "fan")])
    clipped = int((scores > hi).sum())
    assert clipped >= 1
    report = write_report([copy], tmp_path / "r.html", save_png=False)
    captions = {f.id: f.caption for f in report.figures}
    assert (f"range clipped at the 99th percentile of the scores ({hi:.4g}): {clipped} higher score(s) counted in "
            "the last bin") in captions["hist-mse-fan-00"]
    assert "not a log scale" in captions["hist-mse-fan-00"]
    assert captions["hist-mse-valve-00"].endswith("; full score range")  # no outlier: nothing clipped
    assert captions["hist-mahalanobis-fan-00"].endswith("; full score range")
    # the drawn axes end at the clipped range, not at the outlier
    sec = next(s for s in report.runs[0].modes["mse"].sections if s.machine == "fan")
    fig = histogram_figure(sec, "mse")
    for ax in fig.axes:
        lo = min(scores.min(), thr[("mse", "fan")])
        assert ax.get_xlim() == pytest.approx((lo, hi))
    # every clip is still counted: the bars of each panel add up to its clips
    for ax, domain in zip(fig.axes, ("source", "target")):
        n = sum(int(p.get_height()) for p in ax.patches)
        assert n == sum(d == domain for d in sec.domains)


def test_no_best_star_on_values_at_or_below_chance():
    from stetho.outputs.report import CHANCE, _machine_table, _table
    from stetho.outputs.report_data import ModeData

    md = ModeData(mode="mse", formula="dcase2023", official=0.45, sections_table=[], machines=[
        {"machine": "fan", "AUC (source)": 0.40, "hmean": 0.42, "F1 score (source)": 0.30},
        {"machine": "valve", "AUC (source)": 0.45, "hmean": 0.47, "F1 score (source)": 0.60}])
    text = _machine_table(md)
    cells = _parse(text).cells
    best = [(a["data-value"], t) for a, t in cells if a.get("class") == "best"]
    assert best == [("0.6", "0.6000")]  # F1 has no chance floor at 0.5; no AUC or hmean starred
    # above chance the best value is marked; a column at chance is not
    page = _parse(_table(["m", "AUC"], [["a", 0.30], ["b", 0.70]], best=[False, CHANCE]))
    assert [a["data-value"] for a, _ in page.cells if a.get("class") == "best"] == ["0.7"]
    page = _parse(_table(["m", "AUC"], [["a", 0.30], ["b", 0.50]], best=[False, CHANCE]))
    assert not [a for a, _ in page.cells if a.get("class") == "best"]


@pytest.fixture(scope="module")
def unlabelled_root(toy_root, tmp_path_factory) -> Path:
    """The toy test clips renamed without labels or domains (an evaluation set as delivered)."""
    import shutil

    root = tmp_path_factory.mktemp("unlabelled")
    for m in MACHINES:
        (root / m / "test").mkdir(parents=True)
        (root / m / "train").mkdir(parents=True)
        for i, f in enumerate(sorted((toy_root / m / "test").glob("*.wav"))):
            shutil.copy(f, root / m / "test" / f"section_00_{i:04d}.wav")
        for f in sorted((toy_root / m / "train").glob("*.wav"))[:2]:
            shutil.copy(f, root / m / "train" / f.name)
    return root


def test_a_run_tested_on_unlabelled_data_is_reported_with_scores_and_decisions_and_no_metrics(
        runs, unlabelled_root, tmp_path, capsys):
    import shutil

    run = tmp_path / "unlabelled_run"
    shutil.copytree(runs[0], run)
    outcome = pipeline.test(run, data=unlabelled_root, progress=False)
    assert all(r is None for r in outcome.results.values()) and not (run / "summary.csv").exists()
    assert main(["-q", "report", str(run)]) == 0  # `stetho report` on it works
    assert "report written to" in capsys.readouterr().out
    text = (run / "report.html").read_text(encoding="utf-8")
    page = _parse(text)
    tables = _tables(text)
    for mode in ("mahalanobis", "mse"):
        assert page.ids[f"official-{mode}"]["data-status"] == "unlabelled"
        for m in MACHINES:
            expected = _expected_flagged(run, mode, m, {})
            assert [_cells(r) for r in tables.get(f"flagged-table flagged-{mode}-{m}", [])] == expected
            assert all(r[3] == "unknown" for r in expected)
            assert f"hist-{mode}-{m}-00" in page.ids and f"roc-{mode}-{m}-00" not in page.ids
    assert "machines" not in tables and "official score" not in text
    assert "unlabelled: scores and decisions, no metrics" in text
    # beside a labelled run, the comparison leaves the unlabelled one out of the rankings
    text = write_report([runs[0], run], tmp_path / "cmp.html", save_png=False).path.read_text(encoding="utf-8")
    _parse(text)
    assert "no score mode in common tested on labelled data" in text
