"""Mean and spread of the results of several independent runs (``stetho summarize RUN [RUN ...]``),
and the text of one evaluation (:func:`result_lines`).

A run folder holds ``results/<mode>/summary.csv`` per score mode, as :func:`stetho.outputs.write_results`
writes it: one row per machine type and a last ``official score`` (or ``partial score``) row. Runs
are independent experiments of one setup (other seeds, say): for every score mode that all runs
have, this module gives per machine type and numeric column the mean over runs and the sample
standard deviation (``ddof=1``), and the same for the official score.

A partial run (its score is not the official score: some of the data was not scored, or a term of
the formula is undefined) is never averaged into an official score: when any run is partial the
official score's mean is NaN and the summary gives the *partial score* (the mean over the runs of
each run's score over what it scored), labelled partial with what is missing.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stetho.errors import EvaluationError
from stetho.fileio import write_dict_csv
from stetho.metrics import FORMULAS, SUMMARY_PRINT_COLUMNS, EvaluationResult
from stetho.outputs.dcase import (
    MISSING_SEPARATOR, OFFICIAL_SCORE_ROW, PARTIAL_SCORE_ROW, SUMMARY_EXTRA_COLUMNS, SUMMARY_FORMULA_COLUMN,
    SUMMARY_MISSING_COLUMN, SUMMARY_PARTIAL_COLUMN, SUMMARY_SCORE_COLUMN, SUMMARY_STATUS_COLUMN,
)

log = logging.getLogger(__name__)

#: ``summary.csv`` columns that are not per-machine metrics.
_NOT_METRICS = ("machine", *SUMMARY_EXTRA_COLUMNS)


@dataclass
class SummaryFile:
    """One run's ``results/<mode>/summary.csv``.

    ``official`` is NaN for a partial run; ``partial_score`` is the run's score over what it
    scored (equal to ``official`` for an official run). Files written before the status column
    count as official."""

    path: Path
    formula: str  # "" when the file predates the formula column
    columns: list[str]  # metric columns, in file order
    machines: dict[str, dict[str, float]]
    official: float
    status: str = "official"  # or "partial"
    partial_score: float = math.nan
    missing: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.status == "partial"


def _float(text: str, path: Path, lineno: int, column: str) -> float:
    if text.strip() == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise EvaluationError(f"{path}:{lineno}: {column} {text!r} is not a number") from None


def read_summary_file(path: Path) -> SummaryFile:
    """Read and check a ``results/<mode>/summary.csv`` (one row per machine type, a last
    official-score or partial-score row; every metric cell a number or empty)."""
    with open(path, newline="", encoding="utf-8") as fh:
        table = [r for r in csv.reader(fh) if r and "".join(r).strip()]
    if not table or table[0][0] != "machine":
        raise EvaluationError(f"{path}: not a stetho summary.csv (its header must start with 'machine')")
    header, body = table[0], table[1:]
    if not body or body[-1][0] not in (OFFICIAL_SCORE_ROW, PARTIAL_SCORE_ROW):
        raise EvaluationError(f"{path}: the last row must be the {OFFICIAL_SCORE_ROW!r} or {PARTIAL_SCORE_ROW!r} row")
    columns = [c for c in header if c not in _NOT_METRICS]
    col_index = {c: header.index(c) for c in header}
    last = body[-1]
    if len(last) != len(header):
        raise EvaluationError(f"{path}:{len(table)}: {len(last)} cells for {len(header)} columns")

    def cell(column: str) -> str:
        return last[col_index[column]] if column in col_index else ""

    formula = cell(SUMMARY_FORMULA_COLUMN)
    # Files written before the status column hold the official score in their last cell.
    official = _float(last[col_index.get(SUMMARY_SCORE_COLUMN, -1)], path, len(table), SUMMARY_SCORE_COLUMN)
    status = cell(SUMMARY_STATUS_COLUMN) or ("partial" if last[0] == PARTIAL_SCORE_ROW else "official")
    if status not in ("official", "partial"):
        raise EvaluationError(f"{path}:{len(table)}: status {status!r} is neither 'official' nor 'partial'")
    if status == "partial":
        official = math.nan  # never an official number for a partial run
        partial_score = _float(cell(SUMMARY_PARTIAL_COLUMN), path, len(table), SUMMARY_PARTIAL_COLUMN)
    else:
        partial_score = official
    missing = [m for m in cell(SUMMARY_MISSING_COLUMN).split(MISSING_SEPARATOR.strip()) if m.strip()]
    missing = [m.strip() for m in missing]
    machines: dict[str, dict[str, float]] = {}
    for lineno, row in enumerate(body[:-1], 2):
        if len(row) != len(header):
            raise EvaluationError(f"{path}:{lineno}: {len(row)} cells for {len(header)} columns")
        if row[0] in machines:
            raise EvaluationError(f"{path}:{lineno}: machine type {row[0]!r} appears twice")
        machines[row[0]] = {c: _float(row[col_index[c]], path, lineno, c) for c in columns}
    return SummaryFile(path, formula, columns, machines, official, status, partial_score, missing)


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof=1) over axis 0; std NaN for a single run.
    A NaN in any run makes that cell NaN (it is not silently averaged away)."""
    mean = values.mean(axis=0)
    if values.shape[0] < 2:
        return mean, np.full_like(mean, math.nan)
    return mean, values.std(axis=0, ddof=1)


def format_mean_std(mean: float, std: float, digits: int = 4) -> str:
    """``"0.7123 ± 0.0150"``; ``"-"`` for an undefined mean, ``"0.7123 ± -"`` for one run."""
    if not math.isfinite(mean):
        return "-"
    spread = "-" if not math.isfinite(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"


@dataclass
class ModeSummary:
    """The runs' results of one score mode.

    Attributes:
        mode: the score mode (the folder name under ``results/``).
        formula: the official-score formula all runs used (``""`` if their files predate it).
        machines: the machine types, sorted.
        metrics: the numeric summary columns (``AUC (source)``, ``hmean`` ...), in file order.
        values: shape ``(n_runs, len(machines), len(metrics))``, run order as given.
        official: the official score of each run, shape ``(n_runs,)`` (NaN for a partial run).
        partial: whether each run is partial, shape ``(n_runs,)``.
        partial_scores: each run's score over what it scored, shape ``(n_runs,)`` (its official
            score when it is not partial).
        missing: what the partial runs miss, each reason once, in order of appearance.
    """

    mode: str
    formula: str
    machines: list[str]
    metrics: list[str]
    values: np.ndarray
    official: np.ndarray
    partial: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    partial_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing: list[str] = field(default_factory=list)

    @property
    def is_partial(self) -> bool:
        """True when any run is partial: then there is no official score to average."""
        return bool(np.any(self.partial))


@dataclass
class RunsSummary:
    """Mean and sample standard deviation over runs, per score mode (see :func:`summarize_runs`).

    Attributes:
        runs: the run folders, in the order given.
        modes: score mode -> :class:`ModeSummary`, for the modes present in every run (sorted).
    """

    runs: list[Path]
    modes: dict[str, ModeSummary]

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    def _mode(self, mode: str) -> ModeSummary:
        if mode not in self.modes:
            raise EvaluationError(f"no score mode {mode!r} in the summary; modes: {', '.join(self.modes)}")
        return self.modes[mode]

    def official(self, mode: str) -> tuple[float, float]:
        """Mean and sample standard deviation (NaN for one run) of the official score; NaN when
        any run is partial (see :meth:`partial_score`)."""
        mean, std = mean_std(self._mode(mode).official[:, None])
        return float(mean[0]), float(std[0])

    def partial_score(self, mode: str) -> tuple[float, float]:
        """Mean and sample standard deviation over the runs of each run's score over what it
        scored; NaN unless some run is partial (then it is what there is instead of an official
        score, labelled partial)."""
        ms = self._mode(mode)
        if not ms.is_partial:
            return math.nan, math.nan
        mean, std = mean_std(ms.partial_scores[:, None])
        return float(mean[0]), float(std[0])

    def status(self, mode: str) -> str:
        """``"official"``, or ``"partial"`` when any run is partial."""
        return "partial" if self._mode(mode).is_partial else "official"

    def columns(self, mode: str) -> list[str]:
        """The keys of :meth:`rows`, in order."""
        ms = self._mode(mode)
        cols = ["machine"] + [f"{m} {stat}" for m in ms.metrics for stat in ("mean", "std")]
        return cols + [f"{OFFICIAL_SCORE_ROW} mean", f"{OFFICIAL_SCORE_ROW} std", SUMMARY_STATUS_COLUMN,
                       f"{PARTIAL_SCORE_ROW} mean", f"{PARTIAL_SCORE_ROW} std", SUMMARY_MISSING_COLUMN,
                       "n_runs", "formula"]

    def rows(self, mode: str) -> list[dict[str, object]]:
        """One row per machine type (``machine``, ``<metric> mean``, ``<metric> std`` for every
        metric, ``n_runs``, ``formula``), then an ``"official score"`` row holding
        ``official score mean`` / ``official score std`` and ``status`` ``official`` — or, when
        any run is partial, a ``"partial score"`` row with status ``partial``, ``partial score
        mean`` / ``std``, ``missing`` (``"; "``-separated) and no official score. Cells a row
        does not have are ``None``."""
        ms = self._mode(mode)
        cols = self.columns(mode)
        mean, std = mean_std(ms.values)
        out: list[dict[str, object]] = []
        for i, machine in enumerate(ms.machines):
            row: dict[str, object] = dict.fromkeys(cols)
            row["machine"] = machine
            for j, metric in enumerate(ms.metrics):
                row[f"{metric} mean"] = float(mean[i, j])
                row[f"{metric} std"] = float(std[i, j])
            row.update(n_runs=self.n_runs, formula=ms.formula)
            out.append(row)
        last: dict[str, object] = dict.fromkeys(cols)
        last.update({"n_runs": self.n_runs, "formula": ms.formula, SUMMARY_STATUS_COLUMN: self.status(mode)})
        if ms.is_partial:
            p_mean, p_std = self.partial_score(mode)
            last.update({"machine": PARTIAL_SCORE_ROW, f"{PARTIAL_SCORE_ROW} mean": p_mean,
                         f"{PARTIAL_SCORE_ROW} std": p_std,
                         SUMMARY_MISSING_COLUMN: MISSING_SEPARATOR.join(self._missing(ms))})
        else:
            o_mean, o_std = self.official(mode)
            last.update({"machine": OFFICIAL_SCORE_ROW, f"{OFFICIAL_SCORE_ROW} mean": o_mean,
                         f"{OFFICIAL_SCORE_ROW} std": o_std})
        out.append(last)
        return out

    def _missing(self, ms: ModeSummary) -> list[str]:
        """What the partial runs miss; says how many runs are partial when not all are."""
        n = int(np.sum(ms.partial))
        head = [] if n == self.n_runs else [f"{n} of {self.n_runs} runs partial"]
        return head + ms.missing

    def score_line(self, mode: str, digits: int = 4) -> str:
        """``"official score: 0.7123 ± 0.0150"``, or for a partial mode ``"partial score: 0.7123 ±
        0.0150 (PARTIAL: not the official score; missing: ...)"``."""
        ms = self._mode(mode)
        if not ms.is_partial:
            return f"official score: {format_mean_std(*self.official(mode), digits)}"
        return (f"partial score: {format_mean_std(*self.partial_score(mode), digits)} (PARTIAL: not the "
                f"official score; missing: {MISSING_SEPARATOR.join(self._missing(ms))})")

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``summary_runs_<mode>.csv`` per score mode into ``out_dir``, atomically.
        Returns the written paths in mode order."""
        out_dir = Path(out_dir)
        return [
            write_dict_csv(out_dir / f"summary_runs_{mode}.csv", self.rows(mode), self.columns(mode))
            for mode in self.modes
        ]

    def format_text(self, columns: Sequence[str] = SUMMARY_PRINT_COLUMNS, digits: int = 4) -> str:
        """A text table per score mode with ``"mean ± std"`` cells and the official score (or
        the partial score, labelled so, with what is missing: :meth:`score_line`).

        Args:
            columns: the metric columns to show, when present (default: the ones the CLI prints
                for a single run).
            digits: decimals of means and standard deviations.
        """
        blocks: list[str] = []
        for mode, ms in self.modes.items():
            mean, std = mean_std(ms.values)
            shown = [j for j, m in enumerate(ms.metrics) if m in columns]
            header = ["machine"] + [ms.metrics[j] for j in shown]
            body = [
                [machine] + [format_mean_std(float(mean[i, j]), float(std[i, j]), digits) for j in shown]
                for i, machine in enumerate(ms.machines)
            ]
            widths = [max(len(r[k]) for r in [header, *body]) for k in range(len(header))]
            lines = [f"{mode} ({ms.formula or 'formula unknown'}, {self.n_runs} run{'s' * (self.n_runs != 1)})"]
            lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body]]
            lines.append(self.score_line(mode, digits))
            if ms.formula in FORMULAS:
                lines.append(f"  ({FORMULAS[ms.formula].description})")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


def summarize_runs(run_dirs: Sequence[str | Path]) -> RunsSummary:
    """Mean and sample standard deviation over independent runs, per score mode.

    Args:
        run_dirs: run folders, each with ``results/<mode>/summary.csv`` for its score modes.

    Returns:
        A :class:`RunsSummary` over the score modes present in every run (a mode missing from
        some runs is left out with a logged warning). Metric columns present in only some runs
        are left out with a warning too. One run gives NaN standard deviations.

    Raises:
        EvaluationError: no runs, a run given twice, a run without any ``summary.csv``, no mode
            common to all runs, or, for a mode, runs that used different official-score formulas
            or evaluated different machine types (the runs are named).
    """
    runs = [Path(r) for r in run_dirs]
    if not runs:
        raise EvaluationError("no runs to summarize: give at least one run folder")
    seen: dict[Path, Path] = {}
    for r in runs:
        key = r.resolve()
        if key in seen:
            raise EvaluationError(f"run {r} is given twice (as {seen[key]} and {r}); runs must be distinct")
        seen[key] = r

    per_run: list[dict[str, SummaryFile]] = []
    for r in runs:
        files = sorted((r / "results").glob("*/summary.csv"))
        if not files:
            raise EvaluationError(
                f"{r}: no results/<mode>/summary.csv (not a run folder, or it was tested on unlabeled data)"
            )
        per_run.append({f.parent.name: read_summary_file(f) for f in files})

    all_modes = sorted(set().union(*per_run))
    common = [m for m in all_modes if all(m in pr for pr in per_run)]
    partial = [m for m in all_modes if m not in common]
    if partial:
        log.warning(
            "score mode(s) %s are not in every run and are left out of the summary",
            ", ".join(partial),
        )
    if not common:
        listing = "; ".join(f"{r}: {', '.join(sorted(pr))}" for r, pr in zip(runs, per_run))
        raise EvaluationError(f"the runs have no score mode in common ({listing})")

    modes: dict[str, ModeSummary] = {}
    for mode in common:
        files = [pr[mode] for pr in per_run]
        formulas = {f.formula for f in files}
        if len(formulas) > 1:
            listing = "; ".join(f"{r}: {f.formula or 'unknown'}" for r, f in zip(runs, files))
            raise EvaluationError(
                f"score mode {mode!r}: the runs used different official-score formulas ({listing}); "
                "only runs scored the same way can be averaged"
            )
        machine_sets = [sorted(f.machines) for f in files]
        if any(ms != machine_sets[0] for ms in machine_sets):
            listing = "; ".join(f"{r}: {', '.join(ms) or 'none'}" for r, ms in zip(runs, machine_sets))
            raise EvaluationError(
                f"score mode {mode!r}: the runs evaluated different machine types ({listing}); "
                "only runs on the same machine types can be averaged"
            )
        metrics = [c for c in files[0].columns if all(c in f.columns for f in files)]
        dropped = sorted({c for f in files for c in f.columns} - set(metrics))
        if dropped:
            log.warning("score mode %s: column(s) %s are not in every run and are left out", mode, ", ".join(dropped))
        machines = machine_sets[0]
        values = np.array(
            [[[f.machines[m][c] for c in metrics] for m in machines] for f in files], dtype=np.float64
        ).reshape(len(files), len(machines), len(metrics))
        modes[mode] = ModeSummary(
            mode=mode,
            formula=files[0].formula,
            machines=machines,
            metrics=metrics,
            values=values,
            official=np.array([f.official for f in files], dtype=np.float64),
            partial=np.array([f.partial for f in files], dtype=bool),
            partial_scores=np.array([f.partial_score for f in files], dtype=np.float64),
            missing=list(dict.fromkeys(m for f in files for m in f.missing)),
        )
    return RunsSummary(runs=runs, modes=modes)


# -- one evaluation, as text ----------------------------------------------------------------------
def _cell(v: object) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def metric_meaning(name: str, value: float, max_fpr: float = 0.1) -> str | None:
    """What the value of metric ``name`` (``AUC``, ``pAUC (source)``, ``precision`` ...) says, in
    one sentence with the value in it; None for a NaN value or a column that is not a metric
    (``hmean``, ``score``)."""
    if not math.isfinite(value):
        return None
    base, _, rest = name.partition(" (")
    domain = rest.rstrip(")").replace(" only", "")
    normal = f"{domain}-domain normal" if domain else "normal"
    among = f" (among the {domain}-domain clips)" if domain else ""
    pct = f"{value * 100:.0f} %"
    if base == "AUC":
        return (f"{name} {value:.2f}: a randomly chosen anomalous clip scores above a randomly chosen {normal} "
                f"one {pct} of the time (0.50 = chance, 1.00 = always)")
    if base == "pAUC":
        return (f"{name} {value:.2f}: the same, counting only the {normal} clips that score highest (false "
                f"alarms up to {max_fpr * 100:.0f} % of them), rescaled so that 0.50 = chance and 1.00 = perfect")
    if base == "precision":
        none = " (0 also when no clip is flagged)" if value == 0 else ""
        return f"{name} {value:.2f}: {pct} of the clips flagged anomalous are anomalous{among}{none}"
    if base == "recall":
        return f"{name} {value:.2f}: {pct} of the anomalous clips are flagged{among}"
    if base == "F1 score":
        return f"{name} {value:.2f}: the harmonic mean of precision and recall{among}"
    return None


#: What the score of one's own recordings averages, per formula (the DCASE descriptions name
#: machine IDs and years that such data does not have).
_PLAIN_SCORES = {
    "dcase2020": "the mean over machine types of (AUC + pAUC) / 2, AUC and pAUC averaged over the sections "
                 "of each type",
    "dcase2021": "the harmonic mean of the within-domain AUC and pAUC of every machine type, section and domain",
}
_PLAIN_2022 = ("the harmonic mean of the AUC (source), AUC (target) and pAUC of every machine type and section "
               "(AUC and pAUC where there are no domains)")


def result_lines(result: EvaluationResult, title: str) -> list[str]:
    """The text ``stetho test`` and ``stetho evaluate`` print of one evaluation: the per-machine
    table, then

    - DCASE data: the official score of its formula's year (or the partial score, labelled
      PARTIAL with what is missing), in the DCASE words;
    - one's own recordings (:attr:`EvaluationResult.dcase_data` False): ``score`` with what it
      averages, never called official, and what each number means in words (the first machine
      type's values as the example): precision, recall and F1 over all clips when the data has
      no domains.
    """
    lines: list[str] = []
    rows = result.machine_summary()
    cols: list[str] = []
    if rows:
        cols = list(dict.fromkeys(c for r in rows for c in r if c in SUMMARY_PRINT_COLUMNS))
        widths = [max(len(c), *(len(_cell(r.get(c, math.nan))) for r in rows)) for c in cols]
        lines += ["", title, "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()]
        lines += ["  ".join(_cell(r.get(c, math.nan)).ljust(w) for c, w in zip(cols, widths)).rstrip() for r in rows]
    if result.dcase_data:
        if result.partial:
            lines.append(f"partial score ({result.formula}): {_cell(result.partial_score)} (PARTIAL: not the "
                         f"official score; missing: {'; '.join(result.missing)})")
        else:
            lines.append(f"official score ({result.formula}): {_cell(result.official_score)}")
        lines.append(f"  ({result.formula_description})")
        return lines
    what = _PLAIN_SCORES.get(result.formula, _PLAIN_2022)
    if result.partial:
        lines.append(f"score over what was scored: {_cell(result.partial_score)} (partial; missing: "
                     f"{'; '.join(result.missing)})")
    else:
        lines.append(f"score: {_cell(result.partial_score)}")
    lines.append(f"  ({what}; own recordings, so no official DCASE score)")
    if rows:
        first = rows[0]
        meanings = [metric_meaning(c, float(first[c]), result.max_fpr) for c in cols[1:]
                    if isinstance(first.get(c), float)]
        meanings = [m for m in meanings if m]
        if meanings:
            lines.append(f"what the numbers mean ({first['machine']}'s):")
            lines += [f"  {m}" for m in meanings]
    return lines
