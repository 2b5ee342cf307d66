"""Atomic file writing: a reader never sees a half-written CSV (temp file + ``os.replace``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from stetho.fileio import atomic_write_text


def format_value(v: object) -> str:
    """CSV text of a value: floats in full precision (``repr``), NaN as ``nan``."""
    if isinstance(v, float):
        return repr(v)
    return "" if v is None else str(v)


def write_csv(path: str | Path, rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> Path:
    """Write rows (and an optional header) as CSV, atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    for row in rows:
        w.writerow([format_value(v) for v in row])
    return atomic_write_text(path, buf.getvalue())


def write_dict_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows with a header (columns default to the first row's keys), atomically."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return write_csv(path, ([r.get(c) for c in columns] for r in rows), header=columns)
