"""One's own recordings: ``ROOT/<machine>/{train,test}/**/*.wav`` with any file names.

Every audio format libsndfile reads is scanned (``.wav``, ``.flac``, ``.ogg`` ...); other files
are listed in :attr:`Scan.ignored`. Machine folders and sections must be safe names
(:mod:`stetho.datasets.names`): they become file names of the run.

- ``train/`` holds normal recordings (sub-folders allowed).
- ``test/`` holds the recordings to score. Their labels, when known, come from a ``labels.csv``
  with the columns ``file,label[,domain][,section]``: ``file`` is the path relative to the folder
  holding that ``labels.csv`` (``ROOT/labels.csv`` → ``fan/test/a.wav``;
  ``ROOT/fan/labels.csv`` → ``test/a.wav``), ``label`` is normal/anomaly (or 0/1, abnormal),
  ``domain`` source/target (optional; empty = no domains), ``section`` a unit name (default
  ``00``; a safe name). Rows for training files may give their domain and section (their label must be normal).
  Every test file of a machine type must be listed once ``ROOT/labels.csv`` or that machine
  type's ``labels.csv`` exists (a partial table would silently misalign); without one, its test
  files are scored but not evaluated.
- The name of a clip in score files is its path below ``<machine>/<split>/``.
"""

from __future__ import annotations

from pathlib import Path

from stetho.datasets.base import (
    SPLITS, Scan, audio_files, choose_machines, finish_scan, found_machines, listing, parse_label,
    table_rows,
)
from stetho.datasets.names import name_message
from stetho.datasets.clip import DOMAINS, NORMAL, Clip
from stetho.errors import DatasetError

LABELS_FILE = "labels.csv"
REQUIRED = ("file", "label")
OPTIONAL = ("domain", "section")


def read_labels(path: Path) -> dict[Path, tuple[int, str | None, str | None]]:
    """Rows of one ``labels.csv``: absolute file → (label, domain or None, section or None).

    Raises:
        DatasetError: missing columns, bad values or duplicated files, all listed with line numbers.
    """
    base = path.parent
    out: dict[Path, tuple[int, str | None, str | None]] = {}
    problems: list[str] = []
    expected = "file,label[,domain][,section]"
    for lineno, row in table_rows(path, REQUIRED, REQUIRED + OPTIONAL, f"expected a header {expected}",
                                  f"expected {expected}"):
        name = row["file"]
        if not name or "\x00" in name:
            problems.append(f"line {lineno}: {'empty file name' if not name else 'the file name contains a NUL character'}")
            continue
        try:
            label = parse_label(row["label"])
        except ValueError as exc:
            problems.append(f"line {lineno} ({name}): {exc}")
            continue
        domain = row.get("domain") or None
        if domain is not None and domain not in DOMAINS:
            problems.append(f"line {lineno} ({name}): domain '{domain}' is not source or target")
            continue
        bad_section = row.get("section") and name_message(row["section"], "section")
        if bad_section:
            problems.append(f"line {lineno} ({name}): {bad_section}")
            continue
        file = (base / name).resolve()
        if file in out:
            problems.append(f"line {lineno}: {name} is listed twice")
            continue
        out[file] = (label, domain, row.get("section") or None)
    if problems:
        raise DatasetError(f"{path}: {len(problems)} bad row(s):\n  " + listing(problems))
    return out


def scan(root: str | Path, machines: list[str] | None = None, splits: tuple[str, ...] = SPLITS) -> Scan:
    """Scan one's own recordings (see the module docstring).

    Returns:
        A :class:`Scan`; files of a machine folder whose name is not a safe name are in its
        ``problems``, files that are not audio in its ``ignored``.

    Raises:
        DatasetError: no machine folders, bad ``labels.csv`` rows (an unsafe section among them),
            listed files that do not exist, test files a ``labels.csv`` does not list, or names
            repeated within a machine type.
    """
    root = Path(root)
    available = found_machines(root, SPLITS, f"{root}/<machine>/train/*.wav and/or <machine>/test/*.wav "
                                             "(one's own recordings)")
    chosen = choose_machines(available, machines, root)
    tables = [root / LABELS_FILE] + [root / m / LABELS_FILE for m in available]
    labels: dict[Path, tuple[int, str | None, str | None]] = {}
    for table in tables:
        if table.is_file():
            for file, value in read_labels(table).items():
                if file in labels:
                    raise DatasetError(f"{table}: {file} is also listed in another labels.csv")
                labels[file] = value
    # A machine type is labeled when ROOT/labels.csv or its own labels.csv exists.
    labeled = {m for m in available if (root / LABELS_FILE).is_file() or (root / m / LABELS_FILE).is_file()}

    out = Scan(dataset="folder", root=root)
    unlisted: list[Path] = []
    seen: set[Path] = set()
    for machine in available:
        for split in SPLITS:
            folder = root / machine / split
            for path in audio_files(folder, recursive=True,
                                    ignored=out.ignored if machine in chosen and split in splits else None):
                resolved = path.resolve()
                seen.add(resolved)
                if machine not in chosen or split not in splits:
                    continue
                label, domain, section = labels.get(resolved, (None, None, None))
                if split == "train":
                    if label not in (None, NORMAL):
                        out.problems.append((path, "a labels.csv marks this training file as an anomaly "
                                                   "(training clips must be normal)"))
                        continue
                    label = NORMAL
                elif machine in labeled and resolved not in labels:
                    unlisted.append(path)
                    continue
                key = path.relative_to(folder).as_posix()
                out.clips.append(Clip(path=path, machine=machine, section=section or "00", split=split,
                                      domain=domain, label=label, key=None if key == path.name else key))
    absent = sorted(str(f) for f in labels if f not in seen)
    if absent:
        raise DatasetError(f"{root}: {len(absent)} file(s) listed in labels.csv do not exist under "
                           "<machine>/{train,test}/:\n  " + listing(absent))
    if unlisted:
        raise DatasetError(f"{root}: {len(unlisted)} test file(s) are not listed in labels.csv (list every "
                           "test file, or remove labels.csv to score without evaluating):\n  "
                           + listing([str(p) for p in unlisted]))
    return finish_scan(out, root)
