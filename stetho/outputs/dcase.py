"""DCASE submission files and result tables, written and read in the organisers' format.

Submission files hold ``file name,value`` rows without a header: ``anomaly_score_*`` files the
anomaly scores (higher = more anomalous), ``decision_result_*`` files 0/1 decisions (1 = anomaly).
Their names follow one of three *namings*, each year's baseline and evaluator's:

``"section"`` (2022-2025, the default)
    ``anomaly_score_<machine>_section_<XX>_test.csv``, ``decision_result_<machine>_section_<XX>_test.csv``
``"section_domain"`` (2021: one file per section and domain)
    ``anomaly_score_<machine>_section_<XX>_<source|target>_test.csv``, ``decision_result_...``
``"id"`` (2020 and MIMII: the unit is the machine ID, possibly with more, e.g. ``00_-6dB``)
    ``anomaly_score_<machine>_id_<ID>.csv``, ``decision_result_<machine>_id_<ID>.csv``

``<XX>`` is the section's digits; ``<ID>`` is any text without ``/``. Names are parsed by anchoring
on the last ``_section_<digits>`` / ``_id_`` (so a machine type may contain underscores), and
:func:`submission_filenames` refuses a (machine, section) pair whose file name would not parse
back to itself.

Result files: ``result_<machine>.csv``, the formula's result table
(:meth:`stetho.metrics.EvaluationResult.table`), and ``summary.csv``, the machine summary plus
the official score, or the partial score and what is missing for it to be official
(:func:`write_results`).
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stetho.datasets.clip import DOMAINS
from stetho.errors import EvaluationError
from stetho.fileio import write_csv, write_dict_csv
from stetho.metrics import EvaluationResult

log = logging.getLogger(__name__)

#: The submission-file namings, default first.
NAMINGS: tuple[str, ...] = ("section", "section_domain", "id")
#: First cell of the last row of ``summary.csv`` when the result is the official score ...
OFFICIAL_SCORE_ROW = "official score"
#: ... and when it is partial (:attr:`stetho.metrics.EvaluationResult.partial`).
PARTIAL_SCORE_ROW = "partial score"
#: ``summary.csv`` columns added after the machine-summary columns, in this order.
SUMMARY_FORMULA_COLUMN = "formula"
SUMMARY_SCORE_COLUMN = "official score"  # empty when partial
SUMMARY_STATUS_COLUMN = "status"  # "official" or "partial"
SUMMARY_PARTIAL_COLUMN = "partial score"  # empty when official
SUMMARY_MISSING_COLUMN = "missing"  # what is missing, "; "-separated
SUMMARY_EXTRA_COLUMNS: tuple[str, ...] = (
    SUMMARY_FORMULA_COLUMN, SUMMARY_SCORE_COLUMN, SUMMARY_STATUS_COLUMN, SUMMARY_PARTIAL_COLUMN,
    SUMMARY_MISSING_COLUMN,
)
#: Separator of the reasons in a ``missing`` cell.
MISSING_SEPARATOR = "; "

_KINDS = {"score": "anomaly_score", "decision": "decision_result"}
# One pattern per naming; ``(?P<machine>.+)`` is greedy so that the *last* anchor counts.
_PATTERNS: dict[str, re.Pattern[str]] = {
    "section_domain": re.compile(
        r"^(?P<kind>anomaly_score|decision_result)_(?P<machine>.+)_section_(?P<section>\d+)"
        r"_(?P<domain>source|target)_test\.csv$"
    ),
    "section": re.compile(
        r"^(?P<kind>anomaly_score|decision_result)_(?P<machine>.+)_section_(?P<section>\d+)_test\.csv$"
    ),
    "id": re.compile(r"^(?P<kind>anomaly_score|decision_result)_(?P<machine>.+)_id_(?P<section>[^/]+)\.csv$"),
}


@dataclass(frozen=True)
class SubmissionName:
    """What a submission file name says.

    Attributes:
        kind: ``"score"`` or ``"decision"``.
        machine: machine type.
        section: section digits (``"00"``) or, for naming ``"id"``, the machine ID text.
        naming: one of :data:`NAMINGS`.
        domain: ``"source"`` / ``"target"`` for naming ``"section_domain"``, else ``None``.
    """

    kind: str
    machine: str
    section: str
    naming: str
    domain: str | None = None


def parse_submission_filename(name: str) -> SubmissionName | None:
    """Parse a submission file name (without folder); ``None`` when it follows no naming.

    The patterns are tried most specific first (``section_domain``, ``section``, ``id``), so a
    name matches one naming only.
    """
    for naming in ("section_domain", "section", "id"):
        if m := _PATTERNS[naming].match(name):
            kind = "score" if m["kind"] == "anomaly_score" else "decision"
            return SubmissionName(kind, m["machine"], m["section"], naming, m.groupdict().get("domain"))
    return None


def _check_naming(naming: str) -> str:
    if naming not in NAMINGS:
        raise EvaluationError(f"unknown submission naming {naming!r}; known namings: {', '.join(NAMINGS)}")
    return naming


def submission_filenames(
    machine: str, section: str, naming: str = "section", domain: str | None = None
) -> tuple[str, str]:
    """The ``(anomaly-score, decision-result)`` file names of one machine type and section.

    Args:
        machine: machine type (may contain underscores).
        section: section digits (``"00"``) for namings ``"section"`` / ``"section_domain"``;
            the machine ID text for ``"id"`` (``"00"``, MIMII's ``"00_-6dB"``).
        naming: one of :data:`NAMINGS`.
        domain: ``"source"`` / ``"target"``, required by ``"section_domain"`` and refused by the
            other namings (they have one file per section).

    Raises:
        EvaluationError: unknown naming, a wrong or missing domain, or a machine/section that
            the naming cannot express so that it reads back the same (e.g. a non-digit section
            under ``"section"``, a ``/`` in a name).
    """
    _check_naming(naming)
    for what, text in (("machine type", machine), ("section", section)):
        if not text or "/" in text or "\\" in text:
            raise EvaluationError(f"{what} {text!r} cannot be part of a file name (empty, or a '/' or '\\' in it)")
    if naming == "section_domain":
        if domain not in DOMAINS:
            raise EvaluationError(
                f"naming 'section_domain' needs the domain 'source' or 'target' of the file, got {domain!r}"
            )
        stem = f"{machine}_section_{section}_{domain}_test"
    else:
        if domain is not None:
            raise EvaluationError(f"naming {naming!r} has one file per section: give no domain (got {domain!r})")
        stem = f"{machine}_section_{section}_test" if naming == "section" else f"{machine}_id_{section}"
    names = (f"anomaly_score_{stem}.csv", f"decision_result_{stem}.csv")
    expected = SubmissionName("score", machine, section, naming, domain)
    if parse_submission_filename(names[0]) != expected:
        what = "section digits" if naming != "id" else "an ID without '/'"
        raise EvaluationError(
            f"machine type {machine!r} and section {section!r} cannot be written with naming {naming!r} "
            f"(its file name {names[0]!r} would not read back the same; the naming needs {what})"
        )
    return names


def score_filename(machine: str, section: str, naming: str = "section", domain: str | None = None) -> str:
    """The anomaly-score file name (see :func:`submission_filenames`)."""
    return submission_filenames(machine, section, naming, domain)[0]


def decision_filename(machine: str, section: str, naming: str = "section", domain: str | None = None) -> str:
    """The decision-result file name (see :func:`submission_filenames`)."""
    return submission_filenames(machine, section, naming, domain)[1]


def write_submission(
    out_dir: str | Path,
    machine: str,
    section: str,
    names: Sequence[str],
    scores: np.ndarray,
    decisions: np.ndarray | None = None,
    naming: str = "section",
    domains: Sequence[str | None] | None = None,
) -> list[Path]:
    """Write the anomaly-score file (and decision file) of one machine type and section.

    Args:
        out_dir: the folder (created if missing).
        machine, section: as in :func:`submission_filenames`.
        names: the file names written in the first column (``Clip.name``), one per file.
        scores: anomaly scores, shape ``(len(names),)``.
        decisions: optional 0/1 decisions, shape ``(len(names),)``.
        naming: one of :data:`NAMINGS`.
        domains: ``"source"`` / ``"target"`` per file; required by ``"section_domain"``, which
            writes one pair of files per domain present (rows in the given order), and ignored
            by the other namings.

    Returns:
        The written paths: per file group the score file, then the decision file (source before
        target for ``"section_domain"``). Each file is written atomically.
    """
    out_dir = Path(out_dir)
    _check_naming(naming)
    n = len(names)
    if len(scores) != n or (decisions is not None and len(decisions) != n):
        raise ValueError("names, scores and decisions must have the same length")
    if naming == "section_domain":
        if domains is None or len(domains) != n:
            raise EvaluationError(
                f"{machine} section {section}: naming 'section_domain' needs the domain of every file "
                f"({n} files, {'no' if domains is None else len(domains)} domains given)"
            )
        bad = sorted({repr(d) for d in domains if d not in DOMAINS})
        if bad:
            raise EvaluationError(
                f"{machine} section {section}: naming 'section_domain' needs domains 'source' or "
                f"'target', got {', '.join(bad)}"
            )
        groups = [(d, [i for i in range(n) if domains[i] == d]) for d in DOMAINS]
        groups = [(d, idx) for d, idx in groups if idx]
    else:
        groups = [(None, list(range(n)))]

    written: list[Path] = []
    for domain, idx in groups:
        score_name, decision_name = submission_filenames(machine, section, naming, domain)
        written.append(write_csv(out_dir / score_name, ((names[i], float(scores[i])) for i in idx)))
        if decisions is not None:
            written.append(write_csv(out_dir / decision_name, ((names[i], int(decisions[i])) for i in idx)))
    return written


@dataclass
class SubmissionFiles:
    """Score and decision rows read from a folder, per (machine, section), in file order.

    Attributes:
        scores: ``(machine, section) -> [(file name, score), ...]``; with naming
            ``"section_domain"`` the source file's rows, then the target file's.
        decisions: the same for the decision files, values 0/1.
        naming: the naming of the folder's files (one of :data:`NAMINGS`).
    """

    scores: dict[tuple[str, str], list[tuple[str, float]]] = field(default_factory=dict)
    decisions: dict[tuple[str, str], list[tuple[str, int]]] = field(default_factory=dict)
    naming: str = "section"


def _read_rows(path: Path, kind: str) -> list[tuple[str, float]]:
    rows: list[tuple[str, float]] = []
    # utf-8-sig: a byte-order mark (spreadsheet programs write one) is not part of the first name.
    with open(path, newline="", encoding="utf-8-sig") as fh:
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

    Any of the three namings is recognised; all files of a folder must follow the same one.
    Files of one (machine, section) are merged (the two domain files of ``"section_domain"``).
    A ``.csv`` file with one of the two prefixes that follows no naming is skipped with a
    logged warning.

    Raises:
        EvaluationError: missing folder, no score files, files of several namings (listed),
            malformed rows, or a decision file without its score file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: score folder does not exist")
    parsed: list[tuple[Path, SubmissionName]] = []
    for path in sorted(folder.iterdir()):
        if not path.name.startswith(tuple(f"{p}_" for p in _KINDS.values())):
            continue
        info = parse_submission_filename(path.name)
        if info is None:
            if path.suffix == ".csv":
                log.warning("%s: not a submission file name of any naming (%s); skipped", path, ", ".join(NAMINGS))
            continue
        parsed.append((path, info))

    namings = sorted({info.naming for _, info in parsed}, key=NAMINGS.index)
    if len(namings) > 1:
        lines = [
            f"  {naming}: " + ", ".join(p.name for p, info in parsed if info.naming == naming)
            for naming in namings
        ]
        raise EvaluationError(
            f"{folder}: submission files of {len(namings)} namings in one folder (one year's naming per "
            "folder; remove the stale files):\n" + "\n".join(lines)
        )
    if not namings:
        raise EvaluationError(
            f"{folder}: no anomaly_score_*.csv files found (expected anomaly_score_<machine>_section_<XX>_test.csv, "
            "anomaly_score_<machine>_section_<XX>_<source|target>_test.csv or anomaly_score_<machine>_id_<ID>.csv)"
        )

    out = SubmissionFiles(naming=namings[0])
    score_files = {(i.machine, i.section, i.domain) for _, i in parsed if i.kind == "score"}
    orphans = [
        p.name for p, i in parsed if i.kind == "decision" and (i.machine, i.section, i.domain) not in score_files
    ]
    if orphans:
        raise EvaluationError(f"{folder}: decision files without score files: {', '.join(orphans)}")
    if not score_files:
        raise EvaluationError(f"{folder}: decision files but no anomaly_score_*.csv files")
    # Source before target within a (machine, section), whatever the sort order of the names.
    order = {None: 0, **{d: k for k, d in enumerate(DOMAINS)}}
    for path, info in sorted(parsed, key=lambda x: (x[1].machine, x[1].section, order[x[1].domain], x[0].name)):
        key = (info.machine, info.section)
        if info.kind == "score":
            out.scores.setdefault(key, []).extend(_read_rows(path, "score"))
        else:
            out.decisions.setdefault(key, []).extend((n, int(v)) for n, v in _read_rows(path, "decision"))
    return out


def score_cells(result: EvaluationResult) -> dict[str, object]:
    """The ``official score``, ``status``, ``partial score`` and ``missing`` cells of a result:
    exactly one of the two scores is filled (a partial score never sits in the official column)."""
    return {
        SUMMARY_SCORE_COLUMN: "" if result.partial else result.official_score,
        SUMMARY_STATUS_COLUMN: result.status,
        SUMMARY_PARTIAL_COLUMN: result.partial_score if result.partial else "",
        SUMMARY_MISSING_COLUMN: MISSING_SEPARATOR.join(result.missing),
    }


def summary_rows(result: EvaluationResult) -> tuple[list[dict[str, object]], list[str]]:
    """The rows and columns of ``summary.csv`` (see :func:`write_results`)."""
    summary = result.machine_summary()
    columns: list[str] = []
    for row in summary:  # union in order of appearance: machine types may differ in their keys
        columns += [k for k in row if k not in columns]
    columns = (columns or ["machine"]) + list(SUMMARY_EXTRA_COLUMNS)
    rows = [{**r, SUMMARY_FORMULA_COLUMN: result.formula} for r in summary]
    rows.append({
        columns[0]: PARTIAL_SCORE_ROW if result.partial else OFFICIAL_SCORE_ROW,
        SUMMARY_FORMULA_COLUMN: result.formula,
        **score_cells(result),
    })
    return rows, columns


def write_results(out_dir: str | Path, result: EvaluationResult) -> list[Path]:
    """Write ``result_<machine>.csv`` per machine type and ``summary.csv``, atomically.

    ``result_<machine>.csv``: :meth:`EvaluationResult.table` of the result's formula (header =
    :meth:`EvaluationResult.columns`). ``summary.csv``: the :meth:`EvaluationResult.machine_summary`
    columns, then ``formula`` (the formula name, on every row), ``official score``, ``status``,
    ``partial score`` and ``missing``; one row per machine type, then a last row whose first cell
    is ``"official score"`` (status ``official``: the ``official score`` cell holds it) or
    ``"partial score"`` (status ``partial``: ``official score`` is empty, ``partial score``
    holds the mean over what was scored and ``missing`` says what is missing, ``"; "``-separated).

    Returns:
        The written paths, the result tables in machine order, ``summary.csv`` last.
    """
    out_dir = Path(out_dir)
    written = []
    for machine in result.machines():
        table = result.table(machine)
        written.append(write_dict_csv(out_dir / f"result_{machine}.csv", table, result.columns(machine)))
    rows, columns = summary_rows(result)
    written.append(write_dict_csv(out_dir / "summary.csv", rows, columns))
    return written


#: Columns of ``sections.csv`` (:func:`write_section_metrics`).
SECTION_COLUMNS: tuple[str, ...] = (
    "machine", "section", "files", "anomalies", "AUC", "pAUC", "PR-AUC", "AUC (source)", "AUC (target)",
)


def write_section_metrics(path: str | Path, result: EvaluationResult) -> Path:
    """Write ``sections.csv``: one row per (machine type, section) with its number of files and
    anomalies, ``AUC``, ``pAUC`` and ``PR-AUC`` over all its files, and the domain AUCs (NaN
    without domains). For MIMII a section is a (machine ID, SNR) setting, so this is the
    per-setting table MIMII papers report; :mod:`stetho.outputs.compare` reads it."""
    rows = [{"machine": s.machine, "section": s.section, "files": s.n_files, "anomalies": s.n_anomalies,
             **{k: s.metrics[k] for k in SECTION_COLUMNS[4:]}} for s in result.sections]
    return write_dict_csv(path, rows, SECTION_COLUMNS)
