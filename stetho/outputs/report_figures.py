"""The report's figures: ROC curves, score histograms with the threshold, training histories and
embedding projections, drawn with matplotlib's object API on the Agg canvas (no pyplot state, no
display) from a :class:`~stetho.outputs.report_data.RunData`."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL
from stetho.fileio import atomic_write_bytes
from stetho.metrics import MAX_FPR, auc
from stetho.outputs.report_data import RunData, SectionData

_DPI = 80


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


#: The histograms' range ends at this percentile of the scores when the highest score lies
#: beyond it by more than :data:`OUTLIER_SPAN` times the range up to it.
CLIP_PERCENTILE = 99.0
OUTLIER_SPAN = 0.5


@dataclass
class HistogramRange:
    """The x range of a section's histograms: ``[lo, hi]``; ``clipped`` scores lie above ``hi``
    (drawn in the last bin), 0 when the range is the full one."""

    lo: float
    hi: float
    clipped: int

    def caption(self) -> str:
        """What the range is and why, for the figure's caption."""
        if not self.clipped:
            return "full score range"
        return (f"range clipped at the {CLIP_PERCENTILE:g}th percentile of the scores ({self.hi:.4g}): "
                f"{self.clipped} higher score(s) counted in the last bin, so that outliers do not squash the "
                "rest (a clipped linear range, not a log scale: scores may be negative or near zero)")


def histogram_range(scores: np.ndarray, threshold: float | None = None) -> HistogramRange:
    """The range the histograms of ``scores`` show: all of it, unless the highest scores lie far
    beyond the :data:`CLIP_PERCENTILE` th percentile (more than :data:`OUTLIER_SPAN` times the
    range from the lowest score up to it): then up to that percentile (or the threshold, when it
    is higher, so it stays in view)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return HistogramRange(0.0, 1.0, 0)
    lo, top = float(s.min()), float(s.max())
    # "lower": a score of the section, so a few clips' outlier does not pull the percentile to itself
    hi = float(np.percentile(s, CLIP_PERCENTILE, method="lower"))
    if threshold is not None and math.isfinite(threshold):  # the threshold stays in view
        lo, top, hi = min(lo, float(threshold)), max(top, float(threshold)), max(hi, float(threshold))
    if hi <= lo or top - hi <= OUTLIER_SPAN * (hi - lo):
        return HistogramRange(lo, top, 0)
    return HistogramRange(lo, hi, int((s > hi).sum()))


def histogram_figure(sec: SectionData, mode: str, rng: HistogramRange | None = None) -> Figure:
    """Score histograms per domain over ``rng`` (:func:`histogram_range`; scores above it in the
    last bin), normal vs anomalous clips when the labels are known (else all clips), decision
    threshold drawn."""
    rng = rng or histogram_range(sec.scores, sec.threshold)
    names = [d for d in DOMAINS if d in sec.domains] or [None]
    fig = Figure(figsize=(4.2 * len(names), 3.4))
    inside = sec.scores[(sec.scores >= rng.lo) & (sec.scores <= rng.hi)]
    bins = np.histogram_bin_edges(inside, bins=min(30, max(8, sec.scores.size // 4)), range=(rng.lo, rng.hi))
    shown = np.clip(sec.scores, rng.lo, rng.hi)
    dom = np.array([d or "" for d in sec.domains], dtype=object)
    groups = (((NORMAL, "#3a8f3a", "normal"), (ANOMALY, "#c0392b", "anomalous")) if sec.labelled
              else ((None, "#4a6fa5", "all clips (labels unknown)"),))
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        in_dom = dom == (name or "")
        for label, colour, text in groups:
            sel = in_dom & (sec.labels == label) if label is not None else in_dom
            v = shown[sel]
            ax.hist(v, bins=bins, alpha=0.55, color=colour, label=f"{text} ({v.size})")
        if sec.threshold is not None:
            ax.axvline(sec.threshold, color="black", ls="--", lw=1.2, label=f"threshold {sec.threshold:.4g}")
        n_over = int((sec.scores[in_dom] > rng.hi).sum())
        if n_over:
            ax.plot([], [], " ", label=f"{n_over} score(s) > {rng.hi:.4g} in the last bin")
        ax.set(xlabel=f"anomaly score ({mode})", ylabel="clips", xlim=(bins[0], bins[-1]),
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
            if sec.labelled:  # a ROC curve needs the labels
                _save(roc_figure(sec, mode), _slug(prefix, "roc", mode, sec.machine, sec.section),
                      f"ROC — {sec.machine} section {sec.section} ({mode})",
                      folder / f"roc_{stem}.png" if save_png else None, figs)
            rng = histogram_range(sec.scores, sec.threshold)
            _save(histogram_figure(sec, mode, rng), _slug(prefix, "hist", mode, sec.machine, sec.section),
                  f"score histogram — {sec.machine} section {sec.section} ({mode}); {rng.caption()}",
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
