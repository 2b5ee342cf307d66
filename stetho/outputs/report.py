"""An HTML report of one or several run folders (``stetho report RUN [RUN ...]``).

The report is one self-contained file: every figure is a PNG embedded as a ``data:`` URI, the
styles are inline, and nothing refers to the network. It reads only what a run folder holds
(see :mod:`stetho.pipeline`):

- ``results/<mode>/summary.csv`` and ``sections.csv``: the official score (or, for a partial
  result, the partial score labelled PARTIAL with what is missing) and the per-machine table
  (AUC (source), AUC (target), pAUC, hmean, precision/recall/F1), best value per column marked
  (never an AUC-like value at or below chance, 0.5);
- the flagged files per machine type: each file decided anomalous with its score, the threshold
  and by how much it exceeds it (names as plain text, nothing linked);
- ``results/<mode>/anomaly_score_*`` / ``decision_result_*`` with ``test_files.csv`` (labels and
  domains of the test clips; older runs without it are re-scanned from the recorded data root):
  ROC curves per machine type and section (source: source normals + all anomalies; target:
  target normals + all anomalies, as ``AUC (source|target)`` are defined; pAUC's FPR range
  shaded) and score histograms of normal vs anomalous clips per domain with the decision
  threshold (``test_thresholds.csv`` the test decided with, else ``thresholds.csv`` as
  trained: :mod:`stetho.outputs.run_record`; runs trained before it existed: the midpoint between the highest score decided normal and the lowest decided
  anomalous, with a note), the range clipped at the 99th percentile when outliers would squash
  it (the caption says how many scores were clipped);
- ``history_*.csv``: training curves; ``train_embeddings.npz`` and ``results/test_embeddings.npz``:
  for detectors that keep training embeddings (the discriminative model), per machine type a 2-D
  PCA fitted on the training embeddings of the last ensemble epoch, the test embeddings of that
  epoch projected with it; colour = domain, marker = train normal / test normal / test anomaly
  (runs tested before the test npz existed: training clips only, with a note);
- ``config.yaml``, ``versions.json``, ``timings.json``.

A run tested on data without labels (no ``summary.csv``) is reported with its scores, decisions,
flagged files and histograms of all clips: no metrics, no ROC curves.

No model is loaded: neither torch nor :mod:`stetho.models` is imported. The modules:
:mod:`~stetho.outputs.report_data` reads a run folder (:func:`load_run`),
:mod:`~stetho.outputs.report_figures` draws, this module fills the Jinja2 templates in
``stetho/outputs/templates/`` (``report.html``, ``fragments.html``) with them.

With several runs the report starts with a comparison: official score and per-machine hmean of
every run side by side (best marked), mean ± sample std over the runs of one setting (runs that
differ only in seed), and ROC curves of all runs overlaid per machine type and section; every
run's own section follows. A partial run has no official score: its number stands in a separate
"partial score" column and is never averaged with official ones.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from stetho.datasets.clip import ANOMALY, NORMAL
from stetho.errors import StethoError
from stetho.fileio import atomic_write_text
from stetho.outputs.report_data import (  # noqa: F401  (the report's names, importable from here)
    ModeData, RunData, SectionData, _embeddings, _float, load_run,
)
from stetho.outputs.report_figures import (  # noqa: F401
    FigureRef, _png, _save, _slug, embedding_figure, histogram_figure, history_figure, overlaid_roc_figure,
    roc_figure, run_figures,
)
from stetho.outputs.summary import format_mean_std, mean_std
from stetho.run_folder import recover_run, run_lock

log = logging.getLogger(__name__)

#: Per-machine columns shown in the report's table, when the run's summary.csv has them.
TABLE_COLUMNS: tuple[str, ...] = (
    "AUC (source)", "AUC (target)", "pAUC (source)", "pAUC (target)", "pAUC", "AUC", "hmean", "score",
    "precision (source)", "precision (target)", "recall (source)", "recall (target)",
    "F1 score (source)", "F1 score (target)",
)
#: Columns whose chance level is 0.5 (AUC, McClish-standardised pAUC, their harmonic means): a
#: value at or below it is never marked best.
CHANCE = 0.5
#: Flagged files listed per machine type and score mode (the rest are counted).
MAX_FLAGGED_ROWS = 200
#: Config keys that do not make two runs different settings (a seed's runs share everything else).
_NOT_SETTING = ("seed", "out", "overwrite", "progress", "device", "cache", "cache_dir")


# -- HTML -----------------------------------------------------------------------------------------
# Every tag is written by the Jinja2 templates in stetho/outputs/templates/ (report.html: the page;
# fragments.html: tables, figures, scores, notes), autoescaped; this module decides what goes in.


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("stetho.outputs", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["fmt"] = _fmt
    env.filters["repr"] = repr
    return env


def _frag(name: str, *args: Any, **kwargs: Any) -> Markup:
    """The HTML of the macro ``name`` of ``fragments.html``."""
    return Markup(getattr(_env().get_template("fragments.html").module, name)(*args, **kwargs))


def _html(parts: Iterable[str]) -> Markup:
    """Fragments (already HTML) one per line."""
    return Markup("\n".join(parts))


def _fmt(v: object, digits: int = 4) -> str:
    """A cell's text: floats with ``digits`` decimals ("-" when not finite), else ``str(v)``."""
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]],
           best: Sequence[bool | float] | None = None, cls: str = "") -> Markup:
    """An HTML table; in columns flagged in ``best`` the highest finite value is marked. A float
    flag is the column's chance level (e.g. :data:`CHANCE` for AUC): a best value not above it
    is not marked (a "best" below chance would mislead)."""
    marks: set[tuple[int, int]] = set()
    for j, flag in enumerate(best or []):
        if flag is False:
            continue
        vals = [r[j] for r in rows if isinstance(r[j], float) and math.isfinite(r[j])]
        if len(rows) > 1 and len(set(vals)) > 1:  # a column where every row ties marks nothing
            top = max(vals)
            if flag is not True and top <= float(flag):
                continue
            marks |= {(i, j) for i, r in enumerate(rows) if isinstance(r[j], float) and r[j] == top}
    cells = [[{"text": v if isinstance(v, Markup) else _fmt(v), "best": (i, j) in marks,
               "value": repr(v) if isinstance(v, float) and math.isfinite(v) else None}
              for j, v in enumerate(r)] for i, r in enumerate(rows)]
    return _frag("table", list(header), cells, cls)


def _figures_html(figs: Iterable[FigureRef], cls: str = "") -> Markup:
    return _frag("figures", [{"id": f.id, "caption": f.caption, "data": base64.b64encode(f.png).decode("ascii"),
                              "saved": f.path.name if f.path is not None else ""} for f in figs], cls)


def _chance(column: str) -> bool | float:
    """The ``best`` flag of a metric column: its chance level for AUC-like ones, else True."""
    return CHANCE if column.startswith(("AUC", "pAUC", "hmean", "official", "score")) or column.endswith(
        (" hmean", " score")) else True


def _official_html(md: ModeData) -> Markup:
    return _frag("official", md)


def _machine_table(md: ModeData) -> Markup:
    if md.unlabelled:
        return Markup("")
    cols = [c for c in TABLE_COLUMNS if any(c in m for m in md.machines)]
    rows = [[m["machine"], *[float(m.get(c, math.nan)) for c in cols]] for m in md.machines]
    return _table(["machine", *cols], rows, best=[False] + [_chance(c) for c in cols], cls="machines")


def _flagged_html(md: ModeData, limit: int = MAX_FLAGGED_ROWS) -> Markup:
    """Per machine type, the files decided anomalous in this mode: name (plain text, no link),
    section, domain, label when known, score, threshold and the excess score − threshold, the
    highest excess first (at most ``limit`` listed, the rest counted)."""
    machines = []
    for machine in sorted({s.machine for s in md.sections}):
        secs = [s for s in md.sections if s.machine == machine]
        rows: list[list[object]] = []
        for sec in secs:
            thr = math.nan if sec.threshold is None else float(sec.threshold)
            for i in sec.flagged():
                label = {NORMAL: "normal", ANOMALY: "anomalous"}.get(int(sec.labels[i]), "unknown")
                score = float(sec.scores[i])
                rows.append([sec.names[i], sec.section, sec.domains[i] or "-", label, score, thr, score - thr])
        rows.sort(key=lambda r: -r[6] if math.isfinite(r[6]) else -r[4])
        table = _table(["file", "section", "domain", "label", "score", "threshold", "score − threshold"],
                       rows[:limit], cls=f"flagged-table flagged-{_slug(md.mode, machine)}") if rows else None
        machines.append({"machine": machine, "n": len(rows), "total": sum(len(s.names) for s in secs),
                         "table": table, "more": max(0, len(rows) - limit)})
    return _frag("flagged", md.mode, machines) if machines else Markup("")


def _info_html(run: RunData) -> Markup:
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
    parts = [_table(["", "value"], [[k, "-" if v is None else str(v)] for k, v in facts], cls="facts")]
    if ver:
        parts.append(_frag("details", "versions", _table(["package", "version"], [[k, str(v)] for k, v in ver.items()])))
    parts.append(_frag("details", "resolved config (config.yaml)", _frag("pre", run.config_text)))
    return Markup("".join(parts))


def _run_html(run: RunData, figs: Mapping[str, list[FigureRef]], heading: str = "h2") -> Markup:
    sub = "h3" if heading == "h2" else "h4"
    labelled = {mode: md for mode, md in run.modes.items() if not md.unlabelled}
    if not labelled:
        glance = _table(["score mode", "test data"], [[mode, "unlabelled: scores and decisions, no metrics"]
                                                      for mode in run.modes], cls="glance")
    elif any(md.partial for md in labelled.values()):
        glance = _table(["score mode", "formula", "official score", "partial score (not official)"],
                        [[mode, md.formula or "-", md.official, md.partial_score if md.partial else math.nan]
                         for mode, md in labelled.items()],
                        best=[False, False, CHANCE, False], cls="glance")
    else:
        glance = _table(["score mode", "formula", "official score"],
                        [[mode, md.formula or "-", md.official] for mode, md in labelled.items()],
                        best=[False, False, CHANCE], cls="glance")
    parts = [_frag("heading", heading, f"Run {run.path}", f"run-{_slug(run.label)}"), glance, _info_html(run)]
    if run.record_note:
        parts.append(_frag("note", run.record_note))
    for mode, md in run.modes.items():
        parts.append(_frag("heading", sub, f"Score mode {mode}"))
        parts.append(_official_html(md))
        parts.append(_machine_table(md))
        parts.append(_flagged_html(md))
        if md.sections_table:
            cols = list(md.sections_table[0])
            rows = [[r[c] if c in ("machine", "section", "files", "anomalies") else _float(r[c]) for c in cols]
                    for r in md.sections_table]
            parts.append(_frag("details", "per section (sections.csv)", _table(cols, rows)))
        if md.note:
            parts.append(_frag("note", md.note))
        parts.append(_figures_html(figs.get(mode, [])))
    parts.append(_frag("heading", sub, "Training"))
    parts.append(_figures_html(figs.get("history", []), cls="wide") or _frag("note", "no training history recorded"))
    parts.append(_frag("heading", sub, "Embeddings"))
    if run.embeddings is not None:
        parts.append(_figures_html(figs.get("embeddings", []), cls="wide"))
    parts.append(_frag("note", run.embedding_note))
    return _html(parts)


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


def _comparison_html(runs: Sequence[RunData], labels: Sequence[str]) -> tuple[Markup, list[FigureRef]]:
    common = [m for m in runs[0].modes if all(m in r.modes and not r.modes[m].unlabelled for r in runs)]
    parts = [_frag("heading", "h2", "Comparison", "comparison")]
    figs: list[FigureRef] = []
    if not common:
        parts.append(_frag("note", "the runs have no score mode in common tested on labelled data; see each run below"))
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
        parts.append(_frag("heading", "h3", f"Score mode {mode} ({', '.join(formulas)})"))
        best = [False, False, False, CHANCE] + [False] * (len(scores) - 1) + [CHANCE] * len(machines)
        parts.append(_table(header, rows, best=best, cls="comparison"))
        if partial:
            parts.append(_frag("note", "PARTIAL (not the official score): " + "; ".join(
                f"{label}: {'; '.join(md.missing) or 'missing parts not recorded'}"
                for label, md in zip(labels, mds) if md.partial)))
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
            parts.append(_frag("para", "Mean ± sample standard deviation over runs of the same setting (differing "
                                       "only in seed):"))
            parts.append(_table(header, stats_rows, cls="mean-std"))
        sections = sorted({(s.machine, s.section) for md in mds for s in md.sections})
        for machine, section in sections:
            curves = [(label, s) for label, md in zip(labels, mds) for s in md.sections
                      if (s.machine, s.section) == (machine, section) and s.labelled]
            if curves:
                _save(overlaid_roc_figure(machine, section, curves), _slug("compare-roc", mode, machine, section),
                      f"ROC of every run — {machine} section {section} ({mode})", None, figs)
        parts.append(_figures_html(f for f in figs if f.id.startswith(_slug("compare-roc", mode) + "-")))
    return _html(parts), figs


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
    body: list[Markup] = []
    labels = _labels(runs)
    if len(runs) > 1:
        text, figs = _comparison_html(runs, labels)
        body.append(text)
        figures += figs
    for i, (label, run) in enumerate(zip(labels, runs)):
        figs = run_figures(run, save_png=save_png, prefix=f"run{i}" if len(runs) > 1 else "")
        figures += [f for group in figs.values() for f in group]
        section = _run_html(run, figs)
        body.append(section if len(runs) == 1 else _frag("details", label, section, open=True))
    title = f"stetho report — {labels[0]}" if len(runs) == 1 else f"stetho report — {len(runs)} runs"
    return html_page(title, _html(body)), figures


def html_page(title: str, body: str) -> str:
    """A self-contained page of the report's look (``templates/report.html``: inline styles, no
    network) around ``body``, HTML that is already escaped (e.g. the leaderboard's tables)."""
    return _env().get_template("report.html").render(title=title, body=Markup(body))


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, save_png: bool = True) -> Report:
    """Write the self-contained HTML report of one or several tested run folders.

    Args:
        run_dirs: tested run folders (on labelled data; unlabelled: scores and decisions only).
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


def report_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """``stetho report``: :func:`write_report` with every run folder locked (no run changes under
    the report's feet) and recovered from an interrupted write first; returns the HTML file.
    Imports neither torch nor the models, so the command starts fast."""
    with contextlib.ExitStack() as stack:
        for run_dir in dict.fromkeys(Path(r) for r in run_dirs):
            if run_dir.is_dir():
                stack.enter_context(run_lock(run_dir, "report"))
                recover_run(run_dir)
        return write_report(run_dirs, out).path
