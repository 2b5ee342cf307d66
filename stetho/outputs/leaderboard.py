"""The leaderboard of a benchmark (``stetho benchmark``): every (dataset, method, seed) cell's
tested run folder read back, aggregated over seeds and ranked.

A *cell* is one run folder tested in one or several score modes; an *entry* is what competes:
``<method>/<mode>`` (``ae/mse``, ``discriminative/density``) or a fusion's name. For each cell
and mode :func:`cell_metrics` reads

- the official score (``summary.csv``; each dataset's own formula) and its status,
- AUC (source), AUC (target) and pAUC, each the mean over the machine types' sections
  (``results/<mode>/sections.csv``; without domains "AUC (source)" is the plain AUC and
  "AUC (target)" is empty),
- the false-alarm rate: the share of normal test clips the run's calibrated threshold flags
  (``decision_result_*`` with ``test_files.csv``), which the threshold aims at 0.1,
- train and test seconds (``timings.json``).

:func:`leaderboard` then gives, per dataset and entry, the mean and sample std over seeds of
each number, the entry's rank on that dataset (1 = highest mean official score; ties share the
mean rank) and, per entry, the mean official score over the datasets and the mean rank.
:func:`write_leaderboard` writes ``leaderboard_cells.csv`` (one row per cell and mode),
``leaderboard.csv`` (per dataset and entry), ``leaderboard_overall.csv``, ``leaderboard.txt``
(the printed table), ``leaderboard.md`` (the overall table in markdown, for a README) and a
self-contained ``leaderboard.html``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from stetho.fileio import atomic_write_text, write_dict_csv

#: The numbers of a cell, in the order the tables show them.
METRICS = ("official", "AUC (source)", "AUC (target)", "pAUC", "false alarms", "train s", "test s", "peak MB")


def _float(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _mean(values: Sequence[float]) -> float:
    v = [x for x in values if math.isfinite(x)]
    return statistics.fmean(v) if v else math.nan


def decision_flags(run_dir: str | Path, mode: str) -> dict[tuple[str, str], list[int]]:
    """The decisions (0/1) ``mode``'s decision files give the labelled test clips, grouped by
    (``"normal"``/``"anomaly"``, domain; ``"source"`` for clips without one)."""
    run_dir = Path(run_dir)
    truth = {(r["machine"], r["name"]): r for r in _rows(run_dir / "test_files.csv")}
    machines = sorted({m for m, _ in truth}, key=len, reverse=True)  # "fan2" before "fan"
    flags: dict[tuple[str, str], list[int]] = {}
    for f in sorted((run_dir / "results" / mode).glob("decision_result_*.csv")):
        machine = next((m for m in machines if f.name.startswith(f"decision_result_{m}_")), None)
        if machine is None:
            continue
        with open(f, newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                t = truth.get((machine, row[0])) if len(row) >= 2 else None
                if t is not None and t["label"] in ("0", "1"):
                    key = ("anomaly" if t["label"] == "1" else "normal", t["domain"] or "source")
                    flags.setdefault(key, []).append(int(row[1]))
    return flags


def false_alarm_rate(run_dir: str | Path, mode: str) -> tuple[float, int]:
    """The share of normal test clips that ``mode``'s decision files flag as anomalous, and the
    number of normal test clips (NaN, 0 without labelled normals)."""
    flags = [d for (label, _), ds in decision_flags(run_dir, mode).items() if label == "normal" for d in ds]
    return (sum(flags) / len(flags) if flags else math.nan), len(flags)


def cell_metrics(run_dir: str | Path, mode: str) -> dict[str, Any]:
    """The numbers of one tested run folder in one score mode (see the module docstring)."""
    run_dir = Path(run_dir)
    summary = {r["score"]: r for r in _rows(run_dir / "summary.csv")}.get(mode, {})
    sections = _rows(run_dir / "results" / mode / "sections.csv")

    def col(*names: str) -> float:
        for name in names:
            vals = [v for v in (_float(r.get(name)) for r in sections) if math.isfinite(v)]
            if vals:
                return _mean(vals)
        return math.nan

    fa, n_normal = false_alarm_rate(run_dir, mode)
    timings: dict[str, Any] = {}
    if (run_dir / "timings.json").is_file():
        timings = json.loads((run_dir / "timings.json").read_text(encoding="utf-8"))
    return {
        "official": _float(summary.get("official score")),
        "status": summary.get("status", "missing") or "missing",
        "formula": summary.get("formula", ""),
        "AUC (source)": col("AUC (source)", "AUC"),
        "AUC (target)": col("AUC (target)"),
        "pAUC": col("pAUC"),
        "false alarms": fa,
        "normal test clips": n_normal,
        "train s": _float(timings.get("train", {}).get("seconds")),
        "test s": _float(timings.get("test", {}).get("seconds")),
    }


@dataclass
class Leaderboard:
    """Aggregated benchmark results.

    Attributes:
        cells: one dict per (dataset, entry, seed): ``dataset``, ``entry``, ``seed``, ``status``
            (``ok``, ``failed: ...``) and the :data:`METRICS`.
        table: one dict per (dataset, entry): ``<metric>`` means, ``<metric> std``, ``seeds``
            (finished / planned), ``rank``.
        overall: one dict per entry: ``mean official`` (over the datasets it ran on), ``mean
            rank``, ``datasets``, sorted best first (mean rank, then mean official score).
        datasets: the datasets, in suite order.
    """

    cells: list[dict[str, Any]]
    table: list[dict[str, Any]] = field(default_factory=list)
    overall: list[dict[str, Any]] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)


def leaderboard(cells: Sequence[Mapping[str, Any]]) -> Leaderboard:
    """Aggregate cell records (see :class:`Leaderboard`) over seeds and rank the entries."""
    datasets = list(dict.fromkeys(c["dataset"] for c in cells))
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["dataset"], c["entry"]), []).append(c)
    table = []
    for (ds, entry), group in groups.items():
        ok = [c for c in group if c.get("status") == "ok"]
        row: dict[str, Any] = {"dataset": ds, "entry": entry, "seeds": f"{len(ok)}/{len(group)}"}
        for m in METRICS:
            vals = np.array([_float(c.get(m)) for c in ok], dtype=np.float64)
            row[m] = float(vals.mean()) if vals.size and np.isfinite(vals).all() else math.nan
            row[f"{m} std"] = float(vals.std(ddof=1)) if vals.size > 1 and np.isfinite(vals).all() else math.nan
        table.append(row)
    for ds in datasets:
        rows = [r for r in table if r["dataset"] == ds]
        scored = [r for r in rows if math.isfinite(r["official"])]
        ranks = scipy.stats.rankdata([-r["official"] for r in scored], method="average")
        for r, k in zip(scored, ranks):
            r["rank"] = float(k)
        for r in rows:
            r.setdefault("rank", math.nan)
    overall = []
    for entry in dict.fromkeys(r["entry"] for r in table):
        rows = [r for r in table if r["entry"] == entry and math.isfinite(r["official"])]
        overall.append({"entry": entry, "mean official": _mean([r["official"] for r in rows]),
                        "mean rank": _mean([r["rank"] for r in rows]), "datasets": len(rows)})
    overall.sort(key=lambda r: (-r["datasets"], _key(r["mean rank"]), _key(-r["mean official"])))
    table.sort(key=lambda r: (datasets.index(r["dataset"]), _key(r["rank"])))
    return Leaderboard(cells=[dict(c) for c in cells], table=table, overall=overall, datasets=datasets)


def _key(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def _fmt(v: object, digits: int = 3) -> str:
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"
    return str(v)


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f"±{std:.{digits}f}" if math.isfinite(std) else "")


def overall_rows(board: Leaderboard) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the overall table: entry, mean official score, mean rank, and per
    dataset the official score's mean ± std over seeds with the rank in brackets."""
    header = ["entry", "mean score", "mean rank", *board.datasets]
    cell = {(r["dataset"], r["entry"]): r for r in board.table}
    rows = []
    for o in board.overall:
        per = []
        for ds in board.datasets:
            r = cell.get((ds, o["entry"]))
            per.append("" if r is None else f"{_pm(r['official'], r['official std'])} ({_fmt(r['rank'], 1)})")
        rows.append([o["entry"], _fmt(o["mean official"]), _fmt(o["mean rank"], 2), *per])
    return header, rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table with aligned columns."""
    widths = [max(len(str(h)), *(len(str(r[j])) for r in rows)) if rows else len(str(h)) for j, h in enumerate(header)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def detail_rows(board: Leaderboard, dataset: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one dataset's table: every metric as mean ± std over seeds."""
    header = ["rank", "entry", "seeds", *METRICS]
    rows = []
    for r in (r for r in board.table if r["dataset"] == dataset):
        digits = {"train s": 1, "test s": 1, "peak MB": 0}
        rows.append([_fmt(r["rank"], 1), r["entry"], r["seeds"],
                     *(_pm(r[m], r[f"{m} std"], digits.get(m, 3)) for m in METRICS)])
    return header, rows


def format_leaderboard(board: Leaderboard, about: Mapping[str, str] | None = None) -> str:
    """The printed leaderboard: the overall table, then one table per dataset."""
    parts = ["Leaderboard (official score, mean ± std over seeds; rank per dataset in brackets; "
             "best mean rank first)", format_table(*overall_rows(board))]
    for ds in board.datasets:
        parts += ["", f"{ds}" + (f": {about[ds]}" if about and about.get(ds) else ""),
                  format_table(*detail_rows(board, ds))]
    failed = [c for c in board.cells if c.get("status") != "ok"]
    if failed:
        parts += ["", "Cells without results:"] + [f"  {c['dataset']} {c['entry']} seed {c['seed']}: {c['status']}"
                                           for c in failed]
    return "\n".join(parts) + "\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (for a README)."""
    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)]) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def leaderboard_html(board: Leaderboard, title: str, about: Mapping[str, str] | None = None,
                     notes: Sequence[str] = ()) -> str:
    """A self-contained HTML page of the leaderboard (inline styles, no network)."""
    from stetho.outputs.report import html_page  # the report's page and styles (matplotlib only then)

    body = [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    body += ["<h2>Overall</h2>", "<p>Official score: mean ± sample std over seeds, each dataset's own formula; "
             "rank per dataset in brackets (1 = best); entries sorted by mean rank.</p>",
             _html_table(*overall_rows(board))]
    for ds in board.datasets:
        body.append(f"<h2>{html.escape(ds)}</h2>")
        if about and about.get(ds):
            body.append(f"<p>{html.escape(about[ds])}</p>")
        body.append(_html_table(*detail_rows(board, ds)))
    failed = [c for c in board.cells if c.get("status") != "ok"]
    if failed:
        items = (html.escape(f"{c['dataset']} {c['entry']} seed {c['seed']}: {c['status']}") for c in failed)
        body.append("<h2>Cells without results</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    return html_page(title, "\n".join(body))


def write_leaderboard(out: str | Path, board: Leaderboard, title: str = "stetho benchmark",
                      about: Mapping[str, str] | None = None, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write the leaderboard files into ``out``; returns them by kind."""
    out = Path(out)
    cell_cols = ["dataset", "entry", "seed", "status", *METRICS, "normal test clips", "formula"]
    files = {
        "cells": write_dict_csv(out / "leaderboard_cells.csv", [{k: c.get(k, "") for k in cell_cols}
                                                                for c in board.cells], columns=cell_cols),
        "table": write_dict_csv(out / "leaderboard.csv", board.table,
                                columns=["dataset", "rank", "entry", "seeds",
                                         *(k for m in METRICS for k in (m, f"{m} std"))]),
        "overall": write_dict_csv(out / "leaderboard_overall.csv", board.overall,
                                  columns=["entry", "mean official", "mean rank", "datasets"]),
        "text": atomic_write_text(out / "leaderboard.txt", format_leaderboard(board, about)),
        "markdown": atomic_write_text(out / "leaderboard.md", markdown_table(*overall_rows(board))),
        "html": atomic_write_text(out / "leaderboard.html", leaderboard_html(board, title, about, notes)),
    }
    return files
