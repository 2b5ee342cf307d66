"""An HTML report of one or several run folders (``stetho report RUN [RUN ...]``).

The report is one self-contained file: every figure is a PNG embedded as a ``data:`` URI, the
styles are inline, and nothing refers to the network. It reads only what a run folder holds
(see :mod:`stetho.pipeline`):

- ``results/<mode>/summary.csv`` and ``sections.csv``: the official score (or, for a partial
  result, the partial score labelled PARTIAL with what is missing) and the per-machine table
  (AUC (source), AUC (target), pAUC, hmean, precision/recall/F1), best value per column marked;
- ``results/<mode>/anomaly_score_*`` / ``decision_result_*`` with ``test_files.csv`` (labels and
  domains of the test clips; older runs without it are re-scanned from the recorded data root):
  ROC curves per machine type and section (source: source normals + all anomalies; target:
  target normals + all anomalies, as ``AUC (source|target)`` are defined; pAUC's FPR range
  shaded) and score histograms of normal vs anomalous clips per domain with the decision
  threshold (from the saved model; else the midpoint between the highest score decided normal
  and the lowest decided anomalous);
- ``history_*.csv``: training curves; ``models/*.pt`` and ``results/test_embeddings.npz``: for
  detectors that keep training embeddings (``train_embeddings_``, the discriminative model), per
  machine type a 2-D PCA fitted on the training embeddings of the last ensemble epoch, the test
  embeddings of that epoch projected with it; colour = domain, marker = train normal / test
  normal / test anomaly (runs tested before the npz existed: training clips only, with a note);
- ``config.yaml``, ``versions.json``, ``timings.json``.

With several runs the report starts with a comparison: official score and per-machine hmean of
every run side by side (best marked), mean ± sample std over the runs of one setting (runs that
differ only in seed), and ROC curves of all runs overlaid per machine type and section; every
run's own section follows. A partial run has no official score: its number stands in a separate
"partial score" column and is never averaged with official ones.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL
from stetho.errors import StethoError
from stetho.fileio import atomic_write_bytes
from stetho.metrics import MAX_FPR, auc
from stetho.outputs.dcase import read_submission
from stetho.outputs.io import atomic_write_text
from stetho.outputs.summary import format_mean_std, mean_std, read_summary_file

log = logging.getLogger(__name__)

#: Per-machine columns shown in the report's table, when the run's summary.csv has them.
TABLE_COLUMNS: tuple[str, ...] = (
    "AUC (source)", "AUC (target)", "pAUC (source)", "pAUC (target)", "pAUC", "AUC", "hmean", "score",
    "precision (source)", "precision (target)", "recall (source)", "recall (target)",
    "F1 score (source)", "F1 score (target)",
)
#: Config keys that do not make two runs different settings (a seed's runs share everything else).
_NOT_SETTING = ("seed", "out", "overwrite", "progress", "device", "cache", "cache_dir")
_DPI = 80


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


def _load_detectors(run_dir: Path) -> dict[str, Any]:
    """machine type (or ``"all"``) -> loaded detector (exactly the run's recorded model files);
    unreadable models are left out with a warning."""
    from stetho.models import Detector
    from stetho.run_folder import run_models

    out: dict[str, Any] = {}
    try:
        paths = run_models(run_dir)
    except StethoError as exc:
        log.warning("report: %s", exc)
        return out
    for path in paths:
        try:
            det = Detector.load(path)
        except StethoError as exc:
            log.warning("report: %s", exc)
            continue
        for machine in getattr(det, "machines_", None) or [path.stem]:
            out[machine] = det
    return out


def _threshold(det: Any, mode: str, machine: str, scores: np.ndarray, decisions: np.ndarray | None) -> float | None:
    if det is not None:
        try:
            return float(det.threshold_for(mode, machine))
        except (StethoError, KeyError):
            pass
    if decisions is None or decisions.min() == decisions.max():
        return None
    return float((scores[decisions == 0].max() + scores[decisions == 1].min()) / 2)


def _mode_data(run_dir: Path, mode: str, truth, detectors) -> ModeData:
    folder = run_dir / "results" / mode
    summary = read_summary_file(folder / "summary.csv")
    machines = [{"machine": m, **values} for m, values in summary.machines.items()]
    sections_path = folder / "sections.csv"
    data = ModeData(mode=mode, formula=summary.formula, official=summary.official, machines=machines,
                    sections_table=_read_rows(sections_path) if sections_path.is_file() else [],
                    status=summary.status, partial_score=summary.partial_score, missing=summary.missing)
    sub = read_submission(folder)
    for (machine, section), rows in sorted(sub.scores.items()):
        names = [n for n, _ in rows]
        known = [truth.get((machine, n)) for n in names]
        if any(k is None or k[1] not in (NORMAL, ANOMALY) for k in known):
            data.note = (f"{machine} section {section}: the labels of some scored files are unknown; "
                         "curves and histograms are left out")
            continue
        scores = np.array([s for _, s in rows], dtype=np.float64)
        decisions = None
        if (machine, section) in sub.decisions:
            dec = dict(sub.decisions[(machine, section)])
            decisions = np.array([dec.get(n, 0) for n in names], dtype=np.int64)
        data.sections.append(SectionData(
            machine=machine, section=section, names=names, scores=scores,
            labels=np.array([k[1] for k in known], dtype=np.int64), domains=[k[2] for k in known],
            decisions=decisions,
            threshold=_threshold(detectors.get(machine), mode, machine, scores, decisions),
        ))
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
    path = None if run_dir is None else run_dir / "results" / TEST_EMBEDDINGS
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            data = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        log.warning("report: %s: %s", path, exc)
        return None
    if not {"embeddings", "machine", "domain", "label"} <= set(data):
        log.warning("report: %s lacks embeddings/machine/domain/label", path)
        return None
    return data


def _subset(n: int, max_points: int) -> np.ndarray:
    """A fixed, evenly spaced subset of ``range(n)`` (keeps a figure readable and fast)."""
    return np.linspace(0, n - 1, max_points).astype(int) if n > max_points else np.arange(n)


def _embeddings(detectors: Mapping[str, Any], run_dir: Path | None = None,
                max_points: int = 4000) -> tuple[dict[str, Any] | None, str]:
    """Per machine type, the 2-D PCA of the training embeddings a detector stored (last ensemble
    epoch) with the test embeddings of ``run_dir/results/test_embeddings.npz`` projected by the
    same PCA; or None and why not.

    Returns ``({"epoch", "has_test", "machines": {machine: {"train", "train_domain", "test",
    "test_domain", "test_label", "test_name", "explained"}}}, note)``; ``train`` / ``test`` are
    ``(n, 2)`` coordinates (at most ``max_points`` of each, evenly spaced; the PCA is fitted on
    all training embeddings of the machine type).
    """
    dets = {id(d): d for d in detectors.values()}.values()
    if not any(getattr(d, "train_embeddings_", None) for d in dets):
        kinds = ", ".join(sorted({getattr(d, "name", "?") for d in dets})) or "none"
        return None, (f"no embedding figure: the model ({kinds}) stores no embeddings "
                      "(only embedding methods such as 'discriminative' do)")
    from sklearn.decomposition import PCA

    test = _read_test_embeddings(run_dir)
    machines: dict[str, dict[str, Any]] = {}
    epochs, mismatched = set(), []
    for machine in sorted(detectors):
        det = detectors[machine]
        if not getattr(det, "train_embeddings_", None):
            continue
        epoch = max(det.train_embeddings_)  # the last ensemble member
        x = np.asarray(det.train_embeddings_[epoch], dtype=np.float64)
        domains = list(getattr(det, "train_domains_", None) or [None] * len(x))
        of = getattr(det, "train_machine_of_", None)  # joint models: rows of every machine type
        rows = np.array([i for i, m in enumerate(of) if m == machine] if of is not None else range(len(x)),
                        dtype=int)
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
    """Read a tested run folder for the report.

    Raises:
        StethoError: not a run folder, or no ``results/<mode>/summary.csv`` (untested or tested on
            unlabeled data).
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise StethoError(f"{run_dir}: not a stetho run folder (no config.yaml)")
    config_text = cfg_path.read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    summaries = sorted((run_dir / "results").glob("*/summary.csv"))
    if not summaries:
        raise StethoError(f"{run_dir}: no results/<mode>/summary.csv; run `stetho test` on labeled data first")

    def _json(name: str) -> dict[str, Any]:
        p = run_dir / name
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    truth = _test_truth(run_dir, config)
    detectors = _load_detectors(run_dir)
    modes = {p.parent.name: _mode_data(run_dir, p.parent.name, truth, detectors) for p in summaries}
    emb, note = _embeddings(detectors, run_dir)
    return RunData(path=run_dir, config=config, config_text=config_text, versions=_json("versions.json"),
                   timings=_json("timings.json"), modes=modes, histories=_histories(run_dir),
                   embeddings=emb, embedding_note=note)


# -- figures --------------------------------------------------------------------------------------
@dataclass
class FigureRef:
    """A drawn figure: its id in the HTML, caption, PNG bytes and (optionally) where it was saved."""

    id: str
    caption: str
    png: bytes
    path: Path | None = None


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _domain_subsets(sec: SectionData) -> list[tuple[str, np.ndarray]]:
    """(name, mask) of the ROC subsets: each domain's normals + every anomaly (as AUC (d)); all
    files when the data has no domains."""
    dom = np.array([d or "" for d in sec.domains], dtype=object)
    if all(d is None for d in sec.domains):
        return [("all", np.ones(len(dom), dtype=bool))]
    return [(d, (dom == d) | (sec.labels == ANOMALY)) for d in DOMAINS]


def _roc_axes(ax, title: str) -> None:
    ax.axvspan(0, MAX_FPR, color="#f3d9a4", alpha=0.5, lw=0, label=f"pAUC range (FPR ≤ {MAX_FPR:g})")
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title=title)


def roc_figure(sec: SectionData, mode: str) -> Figure:
    """ROC curves of one section: source and target subsets (pAUC's FPR range shaded)."""
    return overlaid_roc_figure(sec.machine, sec.section, [(mode, sec)])


def histogram_figure(sec: SectionData, mode: str) -> Figure:
    """Score histograms of normal vs anomalous clips per domain, decision threshold drawn."""
    names = [d for d in DOMAINS if d in sec.domains] or [None]
    fig = Figure(figsize=(4.2 * len(names), 3.4))
    bins = np.histogram_bin_edges(sec.scores, bins=min(30, max(8, sec.scores.size // 4)))
    dom = np.array([d or "" for d in sec.domains], dtype=object)
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        in_dom = dom == (name or "")
        for label, colour, text in ((NORMAL, "#3a8f3a", "normal"), (ANOMALY, "#c0392b", "anomalous")):
            v = sec.scores[in_dom & (sec.labels == label)]
            ax.hist(v, bins=bins, alpha=0.55, color=colour, label=f"{text} ({v.size})")
        if sec.threshold is not None:
            ax.axvline(sec.threshold, color="black", ls="--", lw=1.2, label=f"threshold {sec.threshold:.4g}")
        ax.set(xlabel=f"anomaly score ({mode})", ylabel="clips",
               title=f"{sec.machine} section {sec.section} — {name or 'all'}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def history_figure(name: str, table: Mapping[str, Sequence[float]]) -> Figure | None:
    """Every loss column of a history file against the epoch (None when nothing is finite)."""
    epochs = table.get("epoch") or list(range(1, len(next(iter(table.values()), [])) + 1))
    cols = [c for c in table if c != "epoch" and np.isfinite(np.asarray(table[c], dtype=float)).any()]
    if not cols:
        return None
    fig = Figure(figsize=(5.2, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    for c in cols:
        ax.plot(epochs, table[c], marker="o", ms=3, lw=1.4, label=c)
    ax.set(xlabel="epoch", ylabel="loss", title=f"training history: {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: Marker and size of each split + label in the embedding figure.
_EMB_GROUPS = (("train normal", "o", 10), ("test normal", "^", 28), ("test anomaly", "X", 34),
               ("test (label unknown)", "s", 22))
_DOMAIN_COLOURS = {"source": "#1f5fa8", "target": "#e08a1e", None: "#777777"}


def embedding_figure(emb: Mapping[str, Any], machine: str) -> Figure:
    """2-D PCA of one machine type's embeddings (an entry of ``_embeddings(...)["machines"]``):
    colour = domain, marker = train normal / test normal / test anomaly."""
    fig = Figure(figsize=(5.8, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    labels = np.asarray(emb["test_label"], dtype=np.int64)
    groups = {"train normal": (np.asarray(emb["train"]), list(emb["train_domain"])),
              "test normal": (np.asarray(emb["test"])[labels == NORMAL],
                              [d for d, y in zip(emb["test_domain"], labels) if y == NORMAL]),
              "test anomaly": (np.asarray(emb["test"])[labels == ANOMALY],
                               [d for d, y in zip(emb["test_domain"], labels) if y == ANOMALY]),
              "test (label unknown)": (np.asarray(emb["test"])[(labels != NORMAL) & (labels != ANOMALY)],
                                       [d for d, y in zip(emb["test_domain"], labels) if y not in (NORMAL, ANOMALY)])}
    for group, marker, size in _EMB_GROUPS:
        x, domains = groups[group]
        for d in ("source", "target", None):
            sel = np.array([dd == d for dd in domains], dtype=bool)
            if sel.any():
                ax.scatter(x[sel, 0], x[sel, 1], s=size, marker=marker, color=_DOMAIN_COLOURS[d],
                           alpha=0.5 if group == "train normal" else 0.85, linewidths=0.4,
                           edgecolors="black" if group != "train normal" else "none",
                           label=f"{d or 'no domain'} / {group} ({int(sel.sum())})")
    ev = emb["explained"]
    split = "train + test" if len(emb["test"]) else "train only"
    ax.set(xlabel=f"PC 1 ({ev[0]:.0%})", ylabel=f"PC 2 ({ev[1]:.0%})",
           title=f"{machine}: embeddings ({split}, epoch {emb['epoch']}), PCA of train")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def overlaid_roc_figure(machine: str, section: str, curves: Sequence[tuple[str, SectionData]]) -> Figure:
    """ROC curves of one machine type and section per domain subset (each domain's normals +
    every anomaly, as ``AUC (source|target)``), one curve per ``(label, section data)``: the
    score modes or runs compared."""
    subsets = [name for name, _ in _domain_subsets(curves[0][1])]
    fig = Figure(figsize=(4.2 * len(subsets), 3.6))
    for k, name in enumerate(subsets):
        ax = fig.add_subplot(1, len(subsets), k + 1)
        _roc_axes(ax, f"{machine} section {section} — {name}")
        for label, sec in curves:
            mask = dict(_domain_subsets(sec)).get(name)
            if mask is None:
                continue
            y, s = sec.labels[mask], sec.scores[mask]
            if 0 < y.sum() < y.size:
                fpr, tpr, _ = roc_curve(y, s, pos_label=ANOMALY)
                ax.plot(fpr, tpr, lw=1.8 if len(curves) == 1 else 1.4, label=f"{label}: AUC {auc(y, s):.3f}")
        ax.legend(loc="lower right", fontsize=8 if len(curves) == 1 else 7)
    fig.tight_layout()
    return fig


def _save(fig: Figure | None, fid: str, caption: str, path: Path | None, out: list[FigureRef]) -> None:
    if fig is None:
        return
    png = _png(fig)
    if path is not None:
        atomic_write_bytes(path, png)
    out.append(FigureRef(fid, caption, png, path))


def _slug(*parts: str) -> str:
    text = "-".join(p for p in parts if p)
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def run_figures(run: RunData, save_png: bool = True, prefix: str = "") -> dict[str, list[FigureRef]]:
    """The figures of one run by group (``"<mode>"`` ROC + histograms, ``"history"``,
    ``"embeddings"``); PNGs saved next to the CSVs when ``save_png``."""
    groups: dict[str, list[FigureRef]] = {}
    for mode, md in run.modes.items():
        figs: list[FigureRef] = groups.setdefault(mode, [])
        folder = run.path / "results" / mode
        for sec in md.sections:
            stem = f"{sec.machine}_section_{sec.section}"
            _save(roc_figure(sec, mode), _slug(prefix, "roc", mode, sec.machine, sec.section),
                  f"ROC — {sec.machine} section {sec.section} ({mode})",
                  folder / f"roc_{stem}.png" if save_png else None, figs)
            _save(histogram_figure(sec, mode), _slug(prefix, "hist", mode, sec.machine, sec.section),
                  f"score histogram — {sec.machine} section {sec.section} ({mode})",
                  folder / f"histogram_{stem}.png" if save_png else None, figs)
    hist: list[FigureRef] = groups.setdefault("history", [])
    for name, table in run.histories.items():
        _save(history_figure(name, table), _slug(prefix, "history", name), f"training history — {name}",
              run.path / f"history_{name}.png" if save_png else None, hist)
    emb: list[FigureRef] = groups.setdefault("embeddings", [])
    if run.embeddings is not None:
        for machine, entry in run.embeddings["machines"].items():
            what = "train and test" if len(entry["test"]) else "training"
            _save(embedding_figure(entry, machine), _slug(prefix, "embeddings", machine),
                  f"{what} embeddings — {machine} (PCA fitted on train)",
                  run.path / f"embeddings_{machine}.png" if save_png else None, emb)
    return groups


# -- HTML -----------------------------------------------------------------------------------------
_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: right; }
th { background: #f1f3f6; } td:first-child, th:first-child { text-align: left; }
td.best { background: #d9f2d9; font-weight: bold; }
td.best::after { content: " \\2605"; color: #2e7d32; }
.official { font-size: 1.35em; margin: .4em 0; } .official b { color: #1f5fa8; } .official.partial b { color: #8a5a00; }
figure { display: inline-block; margin: .4em .5em .8em 0; vertical-align: top; width: calc(50% - 1.2em); }
figure.wide { width: auto; max-width: 100%; }
figure img { width: 100%; border: 1px solid #e3e3e3; }
figcaption { font-size: .8em; color: #555; }
.note { color: #8a5a00; background: #fff6e0; padding: .3em .6em; border-left: 3px solid #e0a800; }
pre { background: #f6f8fa; padding: .6em; font-size: .8em; overflow-x: auto; }
details { margin: .5em 0; } summary { cursor: pointer; font-weight: bold; }
</style>
</head>
<body>
<h1>$title</h1>
$body
</body>
</html>
""")


def _e(v: object) -> str:
    return html.escape(str(v))


def _fmt(v: object, digits: int = 4) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
    return _e(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], best: Sequence[bool] | None = None,
           cls: str = "") -> str:
    """An HTML table; in columns flagged in ``best`` the highest finite value is marked."""
    marks: set[tuple[int, int]] = set()
    for j, flag in enumerate(best or []):
        if not flag:
            continue
        vals = [r[j] for r in rows if isinstance(r[j], float) and math.isfinite(r[j])]
        if len(rows) > 1 and len(set(vals)) > 1:  # a column where every row ties marks nothing
            top = max(vals)
            marks |= {(i, j) for i, r in enumerate(rows) if isinstance(r[j], float) and r[j] == top}
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for j, v in enumerate(r):
            attrs = ' class="best"' if (i, j) in marks else ""
            if isinstance(v, float) and math.isfinite(v):
                attrs += f' data-value="{v!r}"'
            cells.append(f"<td{attrs}>{v if isinstance(v, _Raw) else _fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>" + "".join(body) + "</tbody></table>"


class _Raw(str):
    """Cell text that is already HTML."""


def _figures_html(figs: Iterable[FigureRef], cls: str = "") -> str:
    out = []
    c = f' class="{cls}"' if cls else ""
    for f in figs:
        data = base64.b64encode(f.png).decode("ascii")
        saved = f" — saved as {_e(f.path.name)}" if f.path is not None else ""
        out.append(f'<figure id="{_e(f.id)}"{c}><img alt="{_e(f.caption)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_e(f.caption)}{saved}</figcaption></figure>")
    return "\n".join(out)


def _official_html(md: ModeData) -> str:
    what = f"({_e(md.mode)}, {_e(md.formula or 'formula unknown')})"
    if not md.partial:
        return (f'<p class="official" id="official-{_e(md.mode)}" data-status="official" data-value="{md.official!r}">'
                f"official score {what}: <b>{_fmt(md.official)}</b></p>")
    return (f'<p class="official partial" id="official-{_e(md.mode)}" data-status="partial" '
            f'data-value="{md.partial_score!r}">partial score {what}: <b>{_fmt(md.partial_score)}</b> '
            f"(PARTIAL: not the official score)</p>"
            f'<p class="note">missing for an official score: {_e("; ".join(md.missing) or "not recorded")}</p>')


def _machine_table(md: ModeData) -> str:
    cols = [c for c in TABLE_COLUMNS if any(c in m for m in md.machines)]
    rows = [[m["machine"], *[float(m.get(c, math.nan)) for c in cols]] for m in md.machines]
    return _table(["machine", *cols], rows, best=[False] + [True] * len(cols), cls="machines")


def _info_html(run: RunData) -> str:
    cfg, ver, tim = run.config, run.versions, run.timings
    facts = [("model", cfg.get("model")), ("seed", cfg.get("seed")), ("data root", cfg.get("data")),
             ("test data", (tim.get("test") or {}).get("data", "-")), ("dataset layout", cfg.get("dataset")),
             ("started", ver.get("started", "-")), ("device", ver.get("device", "-"))]
    train, test = tim.get("train") or {}, tim.get("test") or {}
    if train:
        facts.append(("training time", f"{train.get('seconds', math.nan):.1f} s (features "
                                       f"{train.get('features_seconds', math.nan):.1f} s; "
                                       + ", ".join(f"{k} {v:.1f} s" for k, v in (train.get("fit_seconds") or {}).items())
                                       + ")"))
    else:
        facts.append(("training time", "not recorded by this run"))
    facts.append(("test time", f"{test['seconds']:.1f} s for {test.get('clips', '?')} clips" if test
                  else "not recorded by this run"))
    out = _table(["", "value"], [[k, "-" if v is None else str(v)] for k, v in facts], cls="facts")
    if ver:
        out += "<details><summary>versions</summary>" + _table(["package", "version"], [[k, str(v)] for k, v in ver.items()]) + "</details>"
    out += f"<details><summary>resolved config (config.yaml)</summary><pre>{_e(run.config_text)}</pre></details>"
    return out


def _run_html(run: RunData, figs: Mapping[str, list[FigureRef]], heading: str = "h2") -> str:
    sub = "h3" if heading == "h2" else "h4"
    if any(md.partial for md in run.modes.values()):
        glance = _table(["score mode", "formula", "official score", "partial score (not official)"],
                        [[mode, md.formula or "-", md.official, md.partial_score if md.partial else math.nan]
                         for mode, md in run.modes.items()],
                        best=[False, False, True, False], cls="glance")
    else:
        glance = _table(["score mode", "formula", "official score"],
                        [[mode, md.formula or "-", md.official] for mode, md in run.modes.items()],
                        best=[False, False, True], cls="glance")
    parts = [f"<{heading} id=\"run-{_e(_slug(run.label))}\">Run {_e(run.path)}</{heading}>", glance, _info_html(run)]
    for mode, md in run.modes.items():
        parts.append(f"<{sub}>Score mode {_e(mode)}</{sub}>")
        parts.append(_official_html(md))
        parts.append(_machine_table(md))
        if md.sections_table:
            cols = list(md.sections_table[0])
            rows = [[r[c] if c in ("machine", "section", "files", "anomalies") else _float(r[c]) for c in cols]
                    for r in md.sections_table]
            parts.append(f"<details><summary>per section (sections.csv)</summary>{_table(cols, rows)}</details>")
        if md.note:
            parts.append(f'<p class="note">{_e(md.note)}</p>')
        parts.append(_figures_html(figs.get(mode, [])))
    parts.append(f"<{sub}>Training</{sub}>")
    parts.append(_figures_html(figs.get("history", []), cls="wide") or '<p class="note">no training history recorded</p>')
    parts.append(f"<{sub}>Embeddings</{sub}>")
    if run.embeddings is not None:
        parts.append(_figures_html(figs.get("embeddings", []), cls="wide"))
    parts.append(f'<p class="note">{_e(run.embedding_note)}</p>')
    return "\n".join(parts)


def _setting(cfg: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in cfg.items() if k not in _NOT_SETTING}, sort_keys=True, default=str)


def _labels(runs: Sequence[RunData]) -> list[str]:
    """Short unique names: the folder names, or the paths relative to the runs' common parent."""
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return names
    parts = [r.path.resolve().parts for r in runs]
    k = 0
    while all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
        k += 1
    return ["/".join(p[k:]) for p in parts]


def _comparison_html(runs: Sequence[RunData], labels: Sequence[str]) -> tuple[str, list[FigureRef]]:
    common = [m for m in runs[0].modes if all(m in r.modes for r in runs[1:])]
    parts = ["<h2 id=\"comparison\">Comparison</h2>"]
    figs: list[FigureRef] = []
    if not common:
        parts.append('<p class="note">the runs have no score mode in common; see each run below</p>')
    for mode in common:
        mds = [r.modes[mode] for r in runs]
        machines = sorted(set().union(*({m["machine"] for m in md.machines} for md in mds)))
        key = "hmean" if any("hmean" in m for md in mds for m in md.machines) else "score"
        # A partial run's number has its own column: it is never ranked or averaged as official.
        partial = any(md.partial for md in mds)
        scores = ["official score", "partial score (not official)"] if partial else ["official score"]
        header = ["run", "model", "seed", *scores, *[f"{m} {key}" for m in machines]]
        rows: list[list[object]] = []
        values = []
        for label, run, md in zip(labels, runs, mds):
            per = {m["machine"]: float(m.get(key, math.nan)) for m in md.machines}
            v = [md.official, *([md.partial_score if md.partial else math.nan] if partial else []),
                 *[per.get(m, math.nan) for m in machines]]
            values.append(v)
            rows.append([label, str(run.config.get("model", "-")), str(run.config.get("seed", "-")), *v])
        formulas = sorted({md.formula for md in mds})
        parts.append(f"<h3>Score mode {_e(mode)} ({_e(', '.join(formulas))})</h3>")
        best = [False, False, False, True] + [False] * (len(scores) - 1) + [True] * len(machines)
        parts.append(_table(header, rows, best=best, cls="comparison"))
        if partial:
            parts.append('<p class="note">PARTIAL (not the official score): ' + "; ".join(
                f"{_e(label)}: {_e('; '.join(md.missing) or 'missing parts not recorded')}"
                for label, md in zip(labels, mds) if md.partial) + "</p>")
        # mean ± std over the runs of each setting (runs that differ only in their seed)
        groups: dict[str, list[int]] = {}
        for i, run in enumerate(runs):
            groups.setdefault(_setting(run.config), []).append(i)
        stats_rows = []
        for idx in groups.values():
            if len(idx) < 2:
                continue
            mean, std = mean_std(np.array([values[i] for i in idx], dtype=np.float64))
            seeds = ", ".join(str(runs[i].config.get("seed")) for i in idx)
            stats_rows.append([f"mean ± std ({len(idx)} runs: {', '.join(labels[i] for i in idx)})",
                               str(runs[idx[0]].config.get("model", "-")), seeds,
                               *[format_mean_std(float(a), float(b)) for a, b in zip(mean, std)]])
        if stats_rows:
            parts.append("<p>Mean ± sample standard deviation over runs of the same setting (differing only in seed):</p>")
            parts.append(_table(header, stats_rows, cls="mean-std"))
        sections = sorted({(s.machine, s.section) for md in mds for s in md.sections})
        for machine, section in sections:
            curves = [(label, s) for label, md in zip(labels, mds) for s in md.sections
                      if (s.machine, s.section) == (machine, section)]
            if curves:
                _save(overlaid_roc_figure(machine, section, curves), _slug("compare-roc", mode, machine, section),
                      f"ROC of every run — {machine} section {section} ({mode})", None, figs)
        parts.append(_figures_html(f for f in figs if f.id.startswith(_slug("compare-roc", mode) + "-")))
    return "\n".join(parts), figs


@dataclass
class Report:
    """What :func:`write_report` wrote: the HTML file, the runs and the figures in it."""

    path: Path
    runs: list[RunData]
    figures: list[FigureRef]


def render_report(runs: Sequence[RunData], save_png: bool = True) -> tuple[str, list[FigureRef]]:
    """The HTML text of the report of ``runs`` and its figures."""
    if not runs:
        raise StethoError("no runs to report: give at least one run folder")
    figures: list[FigureRef] = []
    body: list[str] = []
    labels = _labels(runs)
    if len(runs) > 1:
        text, figs = _comparison_html(runs, labels)
        body.append(text)
        figures += figs
    for i, (label, run) in enumerate(zip(labels, runs)):
        figs = run_figures(run, save_png=save_png, prefix=f"run{i}" if len(runs) > 1 else "")
        figures += [f for group in figs.values() for f in group]
        section = _run_html(run, figs)
        body.append(section if len(runs) == 1 else
                    f"<details open><summary>{_e(label)}</summary>{section}</details>")
    title = f"stetho report — {labels[0]}" if len(runs) == 1 else f"stetho report — {len(runs)} runs"
    return _PAGE.substitute(title=_e(title), body="\n".join(body)), figures


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, save_png: bool = True) -> Report:
    """Write the self-contained HTML report of one or several tested run folders.

    Args:
        run_dirs: run folders tested on labeled data.
        out: the HTML file (default: ``RUN/report.html`` for one run, ``report.html`` for several).
        save_png: also save each run's figures as PNGs beside its CSVs (``results/<mode>/roc_*.png``,
            ``histogram_*.png``, ``history_*.png``, ``embeddings_<machine>.png``).
    """
    runs = [load_run(r) for r in run_dirs]
    if out is None:
        out = runs[0].path / "report.html" if len(runs) == 1 else Path("report.html")
    text, figures = render_report(runs, save_png=save_png)
    path = atomic_write_text(Path(out), text)
    log.info("report written to %s (%d figures)", path, len(figures))
    return Report(path=Path(path), runs=runs, figures=figures)
