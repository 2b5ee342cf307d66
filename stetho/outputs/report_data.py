"""What the report shows of one run folder, read from its plain files (no model is loaded).

:func:`load_run` reads ``config.yaml``, ``versions.json``, ``timings.json``, ``history_*.csv``,
``test_files.csv`` and every ``results/<mode>/`` (summary, sections and submission files), the
thresholds of :mod:`stetho.outputs.run_record` (``thresholds.csv``) and, for detectors that keep
training embeddings, ``train_embeddings.npz`` with ``results/test_embeddings.npz`` for the PCA.
Neither torch nor the models are imported.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stetho.datasets.clip import ANOMALY, NORMAL
from stetho.errors import StethoError
from stetho.outputs.dcase import read_submission
from stetho.outputs.run_record import (
    TEST_THRESHOLDS, THRESHOLDS, TRAIN_EMBEDDINGS, read_npz, read_tested_run, read_thresholds, read_train_embeddings,
)
from stetho.outputs.summary import read_summary_file

log = logging.getLogger(__name__)


# -- what a run folder holds --------------------------------------------------------------------
@dataclass
class SectionData:
    """The test clips of one machine type and section in one score mode (file order of the scores)."""

    machine: str
    section: str
    names: list[str]
    scores: np.ndarray
    labels: np.ndarray  # 1 anomaly / 0 normal
    domains: list[str | None]
    decisions: np.ndarray | None
    threshold: float | None

    @property
    def labelled(self) -> bool:
        """True when every clip's label is known (ROC curves and normal/anomalous histograms)."""
        return bool(np.isin(self.labels, (NORMAL, ANOMALY)).all())

    def flagged(self) -> np.ndarray:
        """Indices of the clips decided anomalous (the decision files; without them, the scores
        above the threshold), highest excess over the threshold first."""
        if self.decisions is not None:
            idx = np.flatnonzero(self.decisions == 1)
        elif self.threshold is not None:
            idx = np.flatnonzero(self.scores > self.threshold)
        else:
            return np.zeros(0, dtype=np.int64)
        return idx[np.argsort(-self.scores[idx], kind="stable")]


@dataclass
class ModeData:
    """One score mode's results: ``summary.csv`` rows, ``sections.csv`` rows and the clips."""

    mode: str
    formula: str
    official: float  # NaN when partial
    machines: list[dict[str, Any]]  # per machine: {"machine": ..., metric: float}
    sections_table: list[dict[str, str]]
    sections: list[SectionData] = field(default_factory=list)
    note: str = ""
    status: str = "official"  # or "partial"
    partial_score: float = math.nan  # the score over what was scored (= official when not partial)
    missing: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.status == "partial"

    @property
    def unlabelled(self) -> bool:
        """Tested on data without labels: scores and decisions, no summary.csv, no metrics."""
        return self.status == "unlabelled"


@dataclass
class RunData:
    """Everything the report shows of one run folder."""

    path: Path
    config: dict[str, Any]
    config_text: str
    versions: dict[str, Any]
    timings: dict[str, Any]
    modes: dict[str, ModeData]
    histories: dict[str, dict[str, list[float]]]
    embeddings: dict[str, Any] | None  # see _embeddings: {"epoch", "has_test", "machines": {m: ...}}
    embedding_note: str
    record_note: str = ""  # what is missing for a run trained before the run record existed

    @property
    def label(self) -> str:
        return self.path.name


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _test_truth(run_dir: Path, config: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    """``(machine, name) -> (section, label, domain)`` of the test clips the run was tested on."""
    path = run_dir / "test_files.csv"
    if path.is_file():
        return {(r["machine"], r["name"]): (r["section"], int(r["label"]) if r["label"] != "" else -1,
                                            r["domain"] or None)
                for r in _read_rows(path)}
    # Runs tested before test_files.csv existed: the test split of the recorded data root.
    from stetho.datasets import scan_dataset

    root = (config.get("test") or {}).get("data") or config.get("data")
    scan = scan_dataset(root, config.get("dataset") or "auto", config.get("machines"), splits=("test",),
                        subset=config.get("subset"), mimii_split=config.get("mimii_split") or "baseline")
    return {(c.machine, c.name): (c.section, -1 if c.label is None else int(c.label), c.domain) for c in scan.clips}


def _threshold(recorded: Mapping[tuple[str, str], float] | None, mode: str, machine: str, scores: np.ndarray,
               decisions: np.ndarray | None) -> float | None:
    """The recorded threshold of ``mode`` and ``machine``; else the midpoint between the highest
    score decided normal and the lowest decided anomalous (None when the decisions are all one)."""
    if recorded is not None and (mode, machine) in recorded:
        return recorded[(mode, machine)]
    if decisions is None or decisions.min() == decisions.max():
        return None
    return float((scores[decisions == 0].max() + scores[decisions == 1].min()) / 2)


def _mode_data(run_dir: Path, mode: str, truth, thresholds) -> ModeData:
    folder = run_dir / "results" / mode
    if (folder / "summary.csv").is_file():
        summary = read_summary_file(folder / "summary.csv")
        machines = [{"machine": m, **values} for m, values in summary.machines.items()]
        sections_path = folder / "sections.csv"
        data = ModeData(mode=mode, formula=summary.formula, official=summary.official, machines=machines,
                        sections_table=_read_rows(sections_path) if sections_path.is_file() else [],
                        status=summary.status, partial_score=summary.partial_score, missing=summary.missing)
    else:  # tested on unlabelled data: scores and decisions only
        data = ModeData(mode=mode, formula="", official=math.nan, machines=[], sections_table=[],
                        status="unlabelled")
    sub = read_submission(folder)
    unknown = []
    for (machine, section), rows in sorted(sub.scores.items()):
        names = [n for n, _ in rows]
        known = [truth.get((machine, n)) for n in names]
        if any(k is None or k[1] not in (NORMAL, ANOMALY) for k in known):
            unknown.append(f"{machine} section {section}")
        known = [k if k is not None else (section, -1, None) for k in known]
        scores = np.array([s for _, s in rows], dtype=np.float64)
        decisions = None
        if (machine, section) in sub.decisions:
            dec = dict(sub.decisions[(machine, section)])
            decisions = np.array([dec.get(n, 0) for n in names], dtype=np.int64)
        data.sections.append(SectionData(
            machine=machine, section=section, names=names, scores=scores,
            labels=np.array([k[1] for k in known], dtype=np.int64), domains=[k[2] for k in known],
            decisions=decisions,
            threshold=_threshold(thresholds, mode, machine, scores, decisions),
        ))
    if unknown and not data.unlabelled:
        data.note = (f"{'; '.join(unknown)}: the labels of some scored files are unknown; ROC curves are left out "
                     "and the histograms show all clips together")
    return data


def _histories(run_dir: Path) -> dict[str, dict[str, list[float]]]:
    out = {}
    for path in sorted(run_dir.glob("history_*.csv")):
        rows = _read_rows(path)
        if rows:
            out[path.stem.removeprefix("history_")] = {c: [_float(r[c]) for r in rows] for c in rows[0]}
    return out


TEST_EMBEDDINGS = "test_embeddings.npz"


def _read_test_embeddings(run_dir: Path | None) -> dict[str, np.ndarray] | None:
    """``results/test_embeddings.npz`` of the run's last test (None when absent or unreadable)."""
    if run_dir is None:
        return None
    return read_npz(run_dir / "results" / TEST_EMBEDDINGS, {"embeddings", "machine", "domain", "label"})


def _subset(n: int, max_points: int) -> np.ndarray:
    """A fixed, evenly spaced subset of ``range(n)`` (keeps a figure readable and fast)."""
    return np.linspace(0, n - 1, max_points).astype(int) if n > max_points else np.arange(n)


def _embeddings(train: Mapping[str, np.ndarray] | None, run_dir: Path | None = None, max_points: int = 4000,
                model: str = "?") -> tuple[dict[str, Any] | None, str]:
    """Per machine type, the 2-D PCA of the training embeddings the run recorded (``train``: the
    arrays of ``train_embeddings.npz``, last ensemble epoch) with the test embeddings of
    ``run_dir/results/test_embeddings.npz`` projected by the same PCA; or None and why not
    (``model``: the method's name, for that note).

    Returns ``({"epoch", "has_test", "machines": {machine: {"train", "train_domain", "test",
    "test_domain", "test_label", "test_name", "explained"}}}, note)``; ``train`` / ``test`` are
    ``(n, 2)`` coordinates (at most ``max_points`` of each, evenly spaced; the PCA is fitted on
    all training embeddings of the machine type).
    """
    if train is None or not len(train["embeddings"]):
        return None, (f"no embedding figure: the model ({model}) stores no embeddings "
                      "(only embedding methods such as 'discriminative' do)")
    from sklearn.decomposition import PCA

    test = _read_test_embeddings(run_dir)
    machines: dict[str, dict[str, Any]] = {}
    epochs, mismatched = set(), []
    x = np.asarray(train["embeddings"], dtype=np.float64)
    domains = [str(d) or None for d in train["domain"]]
    for machine in sorted(set(train["machine"].tolist())):
        rows = np.flatnonzero(train["machine"] == machine)
        epoch = int(train["epoch"][rows].max())  # the last ensemble member
        rows = rows[train["epoch"][rows] == epoch]
        if len(rows) < 3:
            continue
        pca = PCA(n_components=2, random_state=0).fit(x[rows])
        keep = rows[_subset(len(rows), max_points)]
        entry = {"train": pca.transform(x[keep]), "train_domain": [domains[i] for i in keep],
                 "test": np.zeros((0, 2)), "test_domain": [], "test_label": np.zeros(0, dtype=np.int64),
                 "test_name": [], "explained": pca.explained_variance_ratio_.tolist(), "epoch": epoch}
        if test is not None:
            sel = np.flatnonzero(test["machine"] == machine)
            if "epoch" in test and sel.size and np.any(test["epoch"][sel] != epoch):
                mismatched.append(f"{machine} (test epoch {int(test['epoch'][sel][0])}, training epoch {epoch})")
                sel = sel[:0]
            sel = sel[_subset(sel.size, max_points)]
            if sel.size:
                entry.update(test=pca.transform(np.asarray(test["embeddings"][sel], dtype=np.float64)),
                             test_domain=[str(d) or None for d in test["domain"][sel]],
                             test_label=np.asarray(test["label"][sel], dtype=np.int64),
                             test_name=[str(n) for n in test["name"][sel]] if "name" in test else [])
        machines[machine] = entry
        epochs.add(epoch)
    if not machines:
        return None, "no embedding figure: fewer than 3 training embeddings stored per machine type"
    has_test = any(len(e["test"]) for e in machines.values())
    ep = ", ".join(map(str, sorted(epochs)))
    if has_test:
        note = (f"train and test embeddings of epoch {ep}: PCA fitted per machine type on the training "
                "embeddings, test embeddings projected with it")
        missing = [m for m, e in machines.items() if not len(e["test"])]
        if missing:
            note += f"; no test embeddings of {', '.join(missing)} (training clips only)"
    elif test is None:
        note = (f"training clips only (epoch {ep}): the run has no results/{TEST_EMBEDDINGS} "
                "(tested before test embeddings were stored; run `stetho test` again to add them)")
    else:
        note = f"training clips only (epoch {ep}): results/{TEST_EMBEDDINGS} has no rows of these machine types"
    if mismatched:
        note += "; test embeddings left out, of another epoch than the training ones: " + ", ".join(mismatched)
    return {"epoch": max(epochs), "has_test": has_test, "machines": machines}, note


def load_run(run_dir: str | Path) -> RunData:
    """Read a tested run folder for the report, or an evaluation folder of ``stetho test --out
    DIR`` (its results, with the config, thresholds and histories of the run it records).

    A run tested on unlabelled data (no ``summary.csv``) is read too: its modes have the scores,
    decisions and thresholds, no metrics (:attr:`ModeData.unlabelled`).

    Raises:
        StethoError: not a run folder, or no ``results/<mode>/`` score files (untested).
    """
    run_dir = Path(run_dir)
    # An evaluation folder of `stetho test --out DIR` holds the test's results; the run it
    # evaluated holds the config, trained thresholds, histories and training embeddings.
    source = read_tested_run(run_dir) or run_dir
    cfg_path = source / "config.yaml"
    if not cfg_path.is_file():
        raise StethoError(f"{run_dir}: not a stetho run folder (no config.yaml)")
    config_text = cfg_path.read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    summaries = sorted(p.parent / "summary.csv" for p in (run_dir / "results").glob("*/anomaly_score_*.csv"))
    summaries = sorted(set(summaries))
    if not summaries:
        raise StethoError(f"{run_dir}: no results/<mode>/anomaly_score_*.csv; run `stetho test` first")

    def _json(name: str, folder: Path = source) -> dict[str, Any]:
        p = folder / name
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    truth = _test_truth(run_dir, config)
    thresholds = read_thresholds(run_dir) if (run_dir / TEST_THRESHOLDS).is_file() else read_thresholds(source)
    modes = {p.parent.name: _mode_data(run_dir, p.parent.name, truth, thresholds) for p in summaries}
    if not (source / THRESHOLDS).is_file():  # trained before the run record: no model is loaded
        emb, note = None, (f"no embedding figure: the run has no {TRAIN_EMBEDDINGS} (trained before stetho "
                           "recorded it; the report does not load models)")
    else:
        emb, note = _embeddings(read_train_embeddings(source), run_dir, model=str(config.get("model", "?")))
    return RunData(path=run_dir, config=config, config_text=config_text, versions=_json("versions.json"),
                   timings={**_json("timings.json"), **(_json("timings.json", run_dir) if source != run_dir else {})},
                   modes=modes, histories=_histories(source),
                   embeddings=emb, embedding_note=note, record_note="" if thresholds is not None else (
                       f"this run has no {THRESHOLDS} (trained before stetho recorded it; the report does not "
                       "load models): each histogram's threshold is the midpoint between the highest score "
                       "decided normal and the lowest decided anomalous"))
