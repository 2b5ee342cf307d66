"""Labels for unlabeled evaluation sets, from the organisers' ground-truth tables.

DCASE evaluation test clips ship without labels (``section_00_0000.wav``, ``id_01_00000000.wav``);
after the challenge the organisers publish the truth in their evaluators' formats, which
:func:`read_ground_truth` reads (the folder given to ``stetho label --ground-truth``):

- 2020 (``dcase2020_task2_evaluator``): ``eval_data_list.csv``; a line holding only a machine
  type starts its block, then ``<eval name>,<renamed name>,<0|1>``.
- 2021 (``dcase2021_task2_evaluator``): ``ground_truth_data/ground_truth_<machine>_section_<XX>_
  <source|target>_test.csv`` with ``<name>,<0|1>``; the domain is in the table's name.
- 2022-2025 (``dcase202X_task2_evaluator``): ``ground_truth_data/ground_truth_<machine>_section_
  <XX>_test.csv`` (``<name>,<0|1>``) and ``ground_truth_domain/`` (same names, ``0`` source /
  ``1`` target); 2023-2025 add ``ground_truth_attributes/`` (``<name>,<original name>``), whose
  attributes stetho attaches to the clips.

The folder may also be the ``ground_truth_data`` folder itself (then ``ground_truth_domain`` is
looked for beside it). :func:`label_clips` joins the tables to the clips **by machine type and
file name**, and refuses to guess: a clip without a row, a row without a clip, or a machine type
without a table is an error that lists them.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from stetho.datasets import dcase, dcase2020
from stetho.datasets.base import listing, parse_label
from stetho.datasets.clip import SOURCE, TARGET, Clip
from stetho.datasets.names import check_name
from stetho.errors import DatasetError

log = logging.getLogger(__name__)

TABLE_NAME = re.compile(
    r"^ground_truth_(?P<machine>.+?)_section_(?P<section>\d+)_(?:(?P<domain>source|target)_)?test\.csv$"
)


@dataclass(frozen=True)
class Truth:
    """What the ground truth says about one test file."""

    label: int
    domain: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass
class GroundTruth:
    """Ground truth per ``(machine type, file name)``, and the format it was read from."""

    entries: dict[tuple[str, str], Truth]
    format: str
    source: Path

    def machines(self) -> list[str]:
        return sorted({m for m, _ in self.entries})


def _rows(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank rows of a headerless CSV, with their line numbers (blank lines still count)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            return [(reader.line_num, [c.strip() for c in row]) for row in reader if row and "".join(row).strip()]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not a UTF-8 text file (byte {exc.start})") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None


def _two_columns(path: Path, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for lineno, row in _rows(path):
        if len(row) < 2:
            raise DatasetError(f"{path}:{lineno}: expected '<file name>,<{what}>', got {','.join(row)!r}")
        if row[0] in out:
            raise DatasetError(f"{path}:{lineno}: {row[0]} is listed twice")
        out[row[0]] = row[1]
    return out


def _label(path: Path, name: str, text: str) -> int:
    try:
        return parse_label(text)
    except ValueError as exc:
        raise DatasetError(f"{path}: {name}: {exc}") from None


def _read_2020(path: Path) -> dict[tuple[str, str], Truth]:
    entries: dict[tuple[str, str], Truth] = {}
    machine = None
    for lineno, row in _rows(path):
        if len(row) == 1 or (len(row) > 1 and not any(row[1:])):
            if row[0].lower().endswith(".wav"):
                raise DatasetError(f"{path}:{lineno}: expected '<eval name>,<renamed name>,<0|1>', "
                                   f"got only {row[0]}")
            machine = check_name(row[0], "machine type", f"{path}:{lineno}")
            continue
        if machine is None:
            raise DatasetError(f"{path}:{lineno}: a file row before the first machine-type line")
        if len(row) < 3:
            raise DatasetError(f"{path}:{lineno}: expected '<eval name>,<renamed name>,<0|1>'")
        if (machine, row[0]) in entries:
            raise DatasetError(f"{path}:{lineno}: {machine} {row[0]} is listed twice")
        entries[(machine, row[0])] = Truth(label=_label(path, row[0], row[2]))
        renamed = dcase2020.LABELED_PATTERN.match(row[1])
        if renamed and int(renamed["label"] == "anomaly") != entries[(machine, row[0])].label:
            raise DatasetError(f"{path}:{lineno}: the renamed name {row[1]} contradicts the label {row[2]}")
    return entries


def _tables(folder: Path) -> list[tuple[Path, re.Match]]:
    return [(p, m) for p in sorted(folder.glob("ground_truth_*.csv")) if (m := TABLE_NAME.match(p.name))]


def read_ground_truth(folder: str | Path) -> GroundTruth:
    """Read the ground-truth tables in ``folder`` (format detected; see the module docstring).

    Raises:
        DatasetError: no known tables, malformed rows, a data table without its domain table, or
            a machine type that is not a safe name (:mod:`stetho.datasets.names`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: ground-truth folder does not exist")
    if (folder / "eval_data_list.csv").is_file():
        return GroundTruth(_read_2020(folder / "eval_data_list.csv"), "dcase2020", folder)
    data_dir = folder / "ground_truth_data" if (folder / "ground_truth_data").is_dir() else folder
    domain_dir = data_dir.parent / "ground_truth_domain"
    attr_dir = data_dir.parent / "ground_truth_attributes"
    tables = _tables(data_dir)
    if not tables:
        raise DatasetError(
            f"{folder}: no ground-truth tables found; expected eval_data_list.csv (2020) or "
            "ground_truth_data/ground_truth_<machine>_section_<XX>[_<source|target>]_test.csv (2021-2025)"
        )
    entries: dict[tuple[str, str], Truth] = {}
    per_domain = [m["domain"] is not None for _, m in tables]
    if any(per_domain) and not all(per_domain):
        raise DatasetError(f"{data_dir}: mixes 2021 tables (..._<source|target>_test.csv) with 2022-2025 "
                           "tables (..._test.csv)")
    year2021 = all(per_domain)
    with_attributes = False
    for path, m in tables:
        machine = check_name(m["machine"], "machine type", f"{path} (its file name)")
        labels = _two_columns(path, "0|1")
        domains: dict[str, str] = {}
        originals: dict[str, str] = {}
        if not year2021:
            dpath = domain_dir / path.name
            if not dpath.is_file():
                raise DatasetError(f"{path}: its domain table {dpath} is missing (DCASE 2022-2025 ground "
                                   "truth comes as ground_truth_data/ and ground_truth_domain/)")
            domains = _two_columns(dpath, "0|1")
            if set(domains) != set(labels):
                diff = sorted(set(domains) ^ set(labels))
                raise DatasetError(f"{dpath}: does not list the same files as {path}: " + listing(diff, sep=", "))
            apath = attr_dir / path.name
            if apath.is_file():
                with_attributes = True
                originals = _two_columns(apath, "original name")
        for name, text in labels.items():
            label = _label(path, name, text)
            if year2021:
                domain = m["domain"]
            else:
                code = domains[name]
                if code not in ("0", "1"):
                    raise DatasetError(f"{domain_dir / path.name}: {name}: domain '{code}' is not 0 (source) "
                                       "or 1 (target)")
                domain = SOURCE if code == "0" else TARGET
            attributes: tuple[tuple[str, str], ...] = ()
            if name in originals:
                orig = dcase.LABELED_PATTERN.match(originals[name] + ".wav")
                if orig:
                    attributes = dcase.parse_attributes(orig["attrs"])
                    if orig["domain"] != domain or int(orig["label"] == "anomaly") != label:
                        raise DatasetError(f"{attr_dir / path.name}: {name}: the original name "
                                           f"{originals[name]} contradicts the label/domain tables")
            key = (machine, name)
            if key in entries:
                raise DatasetError(f"{path}: {machine} {name} is also listed in another table")
            entries[key] = Truth(label=label, domain=domain, attributes=attributes)
    fmt = "dcase2021" if year2021 else "dcase2023" if with_attributes else "dcase2022"
    return GroundTruth(entries, fmt, folder)


def label_clips(clips: Sequence[Clip], truth: GroundTruth) -> list[Clip]:
    """``clips`` (test clips) with label, domain and attributes from ``truth``, joined by name.

    Raises:
        DatasetError: listing clips without a row, rows without a clip (for the machine types of
            ``clips``), machine types without any row, and domains that contradict the clip's.
    """
    machines = sorted({c.machine for c in clips})
    no_table = [m for m in machines if m not in truth.machines()]
    unused = [m for m in truth.machines() if m not in machines]
    if unused:
        log.warning("ground truth for machine type(s) %s not found in the data: ignored", ", ".join(unused))
    missing = [f"{c.machine}/{c.name}" for c in clips if (c.machine, c.name) not in truth.entries]
    names = {(c.machine, c.name) for c in clips}
    extra = sorted(f"{m}/{n}" for (m, n) in truth.entries if m in machines and (m, n) not in names)
    contradict = [
        f"{c.machine}/{c.name} (file says {c.domain}, table says {truth.entries[(c.machine, c.name)].domain})"
        for c in clips
        if (c.machine, c.name) in truth.entries and c.domain is not None
        and truth.entries[(c.machine, c.name)].domain not in (None, c.domain)
    ]
    problems = []
    if no_table:
        problems.append(f"no ground truth for machine type(s): {', '.join(no_table)}")
    if missing:
        problems.append(f"{len(missing)} test file(s) without a ground-truth row:\n    " + listing(missing, sep="\n    "))
    if extra:
        problems.append(f"{len(extra)} ground-truth row(s) without a test file:\n    " + listing(extra, sep="\n    "))
    if contradict:
        problems.append(f"{len(contradict)} domain(s) contradict the file names:\n    "
                        + listing(contradict, sep="\n    "))
    if problems:
        raise DatasetError(f"{truth.source}: the ground truth does not match the test files "
                           "(joined by machine type and file name):\n  " + "\n  ".join(problems))
    out = []
    for c in clips:
        t = truth.entries[(c.machine, c.name)]
        out.append(replace(c, label=t.label, domain=t.domain if t.domain is not None else c.domain,
                           attributes=t.attributes or c.attributes))
    return out
