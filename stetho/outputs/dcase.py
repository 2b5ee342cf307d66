"""DCASE submission files and result tables, written and read in the organisers' format.

- ``anomaly_score_<machine>_section_<XX>_test.csv``: ``file name,score`` rows, no header.
- ``decision_result_<machine>_section_<XX>_test.csv``: ``file name,0|1`` rows, no header.
- ``result_<machine>.csv``: the DCASE result table (METHODS.md §2) with mean rows.
- ``summary.csv``: one row per machine type and the official score.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stetho.errors import EvaluationError
from stetho.metrics import EvaluationResult
from stetho.outputs.io import write_csv, write_dict_csv

SCORE_FILE = re.compile(r"^anomaly_score_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")
DECISION_FILE = re.compile(r"^decision_result_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$")


def score_filename(machine: str, section: str) -> str:
    return f"anomaly_score_{machine}_section_{section}_test.csv"


def decision_filename(machine: str, section: str) -> str:
    return f"decision_result_{machine}_section_{section}_test.csv"


def write_submission(
    out_dir: str | Path, machine: str, section: str, names: Sequence[str],
    scores: np.ndarray, decisions: np.ndarray | None = None,
) -> list[Path]:
    """Write the anomaly-score file (and decision file) of one machine type and section."""
    out_dir = Path(out_dir)
    if len(names) != len(scores) or (decisions is not None and len(decisions) != len(names)):
        raise ValueError("names, scores and decisions must have the same length")
    written = [write_csv(out_dir / score_filename(machine, section),
                         ((n, float(s)) for n, s in zip(names, scores)))]
    if decisions is not None:
        written.append(write_csv(out_dir / decision_filename(machine, section),
                                 ((n, int(d)) for n, d in zip(names, decisions))))
    return written


@dataclass
class SubmissionFiles:
    """Score and decision rows read from a folder, per (machine, section), in file order."""

    scores: dict[tuple[str, str], list[tuple[str, float]]] = field(default_factory=dict)
    decisions: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)


def _read_rows(path: Path, kind: str) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise EvaluationError(f"{path}:{lineno}: expected 'file name,{kind}', got {len(row)} field(s)")
            try:
                value = float(row[1])
            except ValueError:
                raise EvaluationError(f"{path}:{lineno}: {kind} '{row[1]}' is not a number") from None
            if kind == "decision" and value not in (0.0, 1.0):
                raise EvaluationError(f"{path}:{lineno}: decision must be 0 or 1, got '{row[1]}'")
            if kind == "score" and not math.isfinite(value):
                raise EvaluationError(f"{path}:{lineno}: score of {row[0]} is {row[1]} (not finite)")
            rows.append((row[0].strip(), value))
    return rows


def read_submission(folder: str | Path) -> SubmissionFiles:
    """Read every ``anomaly_score_*`` / ``decision_result_*`` file in ``folder``.

    Raises:
        EvaluationError: no score files, malformed rows, or a decision file without scores.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: score folder does not exist")
    out = SubmissionFiles()
    for path in sorted(folder.iterdir()):
        if m := SCORE_FILE.match(path.name):
            out.scores[(m["machine"], m["section"])] = _read_rows(path, "score")
        elif m := DECISION_FILE.match(path.name):
            out.decisions[(m["machine"], m["section"])] = [
                (n, int(v)) for n, v in _read_rows(path, "decision")
            ]
    if not out.scores:
        raise EvaluationError(
            f"{folder}: no anomaly_score_<machine>_section_<XX>_test.csv files found"
        )
    orphans = sorted(set(out.decisions) - set(out.scores))
    if orphans:
        raise EvaluationError(
            f"{folder}: decision files without score files: "
            + ", ".join(decision_filename(m, s) for m, s in orphans)
        )
    return out


def write_results(out_dir: str | Path, result: EvaluationResult) -> list[Path]:
    """Write ``result_<machine>.csv`` per machine type and ``summary.csv`` (official score last)."""
    out_dir = Path(out_dir)
    written = []
    for machine in result.machines():
        rows = result.table(machine)
        written.append(write_dict_csv(out_dir / f"result_{machine}.csv", rows))
    summary = result.machine_summary()
    columns = list(summary[0].keys()) if summary else ["machine"]
    rows = list(summary) + [{columns[0]: "official score", columns[-1]: result.official_score}]
    written.append(write_dict_csv(out_dir / "summary.csv", rows, columns))
    return written
