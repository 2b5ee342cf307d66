"""A manifest CSV: one row per clip, for any layout (``--data clips.csv``).

Columns (header required, any order):

==============  ===========================================================================
``path``        the audio file (any format libsndfile reads), absolute or relative to the
                manifest's folder (required)
``machine``     machine type (required; a safe name: :mod:`stetho.datasets.names`)
``split``       ``train`` or ``test`` (required)
``label``       normal/anomaly (0/1, abnormal); empty = unknown (unlabeled test clip); any
                other value is an error naming its line
``domain``      source/target; empty = no domains
``section``     evaluation unit (DCASE section, machine ID ...; a safe name); default ``00``
``attributes``  operating condition, ``name=value;name=value``
``key``         the name used in score files (default: the file name); needed when file
                names repeat within a machine type
``meta``        other facts, ``name=value;name=value`` (e.g. ``snr=-6``)
``dataset``     the layout the clips come from (``dcase2021`` ...), which sets the official
                score formula and submission file names; the same on every row
==============  ===========================================================================

Every row has as many cells as the header (leave a value unknown with an empty cell: a short
row is an error, not a row of unknowns). Rows may mix labeled and unlabeled test clips; each
clip keeps what its own row says.

``stetho label`` writes such a file for an evaluation set and its ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from stetho.datasets.base import (
    SPLITS, Scan, check_unique_names, choose_machines, format_pairs, listing, parse_label, parse_pairs, table_rows,
)
from stetho.datasets.clip import DOMAINS, NORMAL, Clip
from stetho.datasets.names import name_message
from stetho.errors import DatasetError
from stetho.fileio import atomic_write_text, csv_text

REQUIRED = ("path", "machine", "split")
COLUMNS = ("path", "machine", "split", "label", "domain", "section", "attributes", "key", "meta", "dataset")


def read_manifest(path: str | Path) -> tuple[list[Clip], str | None]:
    """Clips of a manifest (in file order) and its ``dataset`` value (``None`` if absent).

    Raises:
        DatasetError: unreadable file, missing, unknown or repeated columns, rows with more or
            fewer cells than the header, bad values (a machine type or section that is not a
            safe name among them), duplicated paths or differing ``dataset`` values; every bad
            row is listed with its line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest file does not exist")
    base = path.parent
    clips: list[Clip] = []
    problems: list[str] = []
    datasets: set[str] = set()
    seen: dict[Path, int] = {}
    rows = table_rows(
        path, REQUIRED, COLUMNS,
        f"a manifest needs a header with {', '.join(REQUIRED)} (optional: {', '.join(COLUMNS[3:])})",
        f"known: {', '.join(COLUMNS)}",
    )
    for lineno, row in rows:
        where = f"line {lineno}"
        try:
            if not row["path"] or not row["machine"]:
                raise ValueError("path and machine must not be empty")
            bad_name = name_message(row["machine"], "machine type") or (
                row.get("section") and name_message(row["section"], "section"))
            if bad_name:
                raise ValueError(bad_name)
            if "\x00" in row["path"]:
                raise ValueError("the path contains a NUL character")
            file = Path(row["path"])
            file = file if file.is_absolute() else base / file
            if row["split"] not in SPLITS:
                raise ValueError(f"split '{row['split']}' is not train or test")
            label = parse_label(row["label"]) if row.get("label") else None
            if row["split"] == "train" and label not in (None, NORMAL):
                raise ValueError("training clips must be normal")
            domain = row.get("domain") or None
            if domain is not None and domain not in DOMAINS:
                raise ValueError(f"domain '{domain}' is not source or target")
            clip = Clip(
                path=file, machine=row["machine"], section=row.get("section") or "00",
                split=row["split"], domain=domain,
                label=NORMAL if row["split"] == "train" else label,
                attributes=parse_pairs(row.get("attributes", "")), key=row.get("key") or None,
                meta=parse_pairs(row.get("meta", "")),
            )
        except ValueError as exc:
            problems.append(f"{where} ({row.get('path', '')}): {exc}")
            continue
        # The path as the user's layout gives it (a symlink keeps its own name): two rows name the
        # same clip when their absolute paths are equal, not when two links share a target.
        absolute = Path(os.path.abspath(file))
        if absolute in seen:
            problems.append(f"{where}: {row['path']} is already listed on line {seen[absolute]}")
            continue
        seen[absolute] = lineno
        if row.get("dataset"):
            datasets.add(row["dataset"])
        clips.append(clip)
    if len(datasets) > 1:
        problems.append(f"the dataset column holds several values ({', '.join(sorted(datasets))}); "
                        "one manifest describes one dataset")
    if problems:
        raise DatasetError(f"{path}: {len(problems)} bad row(s):\n  " + listing(problems))
    return clips, (datasets.pop() if datasets else None)


def scan(path: str | Path, machines: list[str] | None = None, splits: tuple[str, ...] = SPLITS) -> Scan:
    """A :class:`Scan` of a manifest's clips (missing files are left to audio validation).

    ``Scan.dataset`` is ``"manifest"``, or ``"manifest:<dataset>"`` when the manifest names the
    layout its clips come from.
    """
    path = Path(path)
    clips, dataset = read_manifest(path)
    if not clips:
        raise DatasetError(f"{path}: the manifest lists no clips")
    chosen = choose_machines(sorted({c.machine for c in clips}), machines, path)
    out = Scan(dataset=f"manifest:{dataset}" if dataset else "manifest", root=path)
    out.clips = [c for c in clips if c.machine in chosen and c.split in splits]
    check_unique_names(out.clips, path)
    return out.sort()


def write_manifest(path: str | Path, clips: Sequence[Clip], dataset: str | None = None) -> Path:
    """Write ``clips`` as a manifest (absolute paths), atomically; ``dataset`` fills that column.

    Paths are made absolute without resolving symlinks: a clip linked into an evaluation set keeps
    the link's name (the name its score-file row must carry), not its target's."""
    rows = (
        [os.path.abspath(c.path), c.machine, c.split, "" if c.label is None else c.label, c.domain or "",
         c.section, format_pairs(c.attributes), c.key or "", format_pairs(c.meta), dataset or ""]
        for c in sorted(clips, key=lambda c: (c.machine, c.split, str(c.path)))
    )
    return atomic_write_text(path, csv_text(rows, header=COLUMNS))
