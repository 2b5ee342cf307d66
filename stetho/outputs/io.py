"""Atomic file writing: a reader never sees a half-written CSV (temp file + ``os.replace``)."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (same-folder temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
