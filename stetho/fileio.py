"""Atomic file writing (text, bytes, CSV), shared by every layer that writes files (lowest layer, like ``errors``).

Every file stetho writes (run-folder records, cache entries, audio, model files, CSV tables and
submissions) goes through :func:`atomic_path` or a function built on it; CSV text is made here too.

A reader never sees a half-written file: the data goes to a temporary file in the same folder
(``.<name>.<random>.tmp``), is flushed to disk, then renamed over the destination (``os.replace``
is atomic on POSIX and Windows). If anything fails the temporary file is removed and the previous
file, if any, is left as it was.

Files are created with the permissions of an ordinary ``open()`` (``0666`` minus the umask), not
the ``0600`` of :func:`tempfile.mkstemp`: run folders and caches are shared between people.

Operating-system failures a user can cause (a full disk, a read-only or unwritable folder, a
path component that is a file) become :class:`~stetho.errors.StorageError` with a one-line
message that names the file: see :func:`storage_error`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from stetho.errors import StorageError

#: Suffix of every temporary file an atomic write leaves behind when the process is killed
#: between writing and renaming; :func:`remove_stale_temp_files` cleans them.
TEMP_SUFFIX = ".tmp"

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_umask: int | None = None


def umask() -> int:
    """The process umask (read once; ``/proc/self/status`` where available, so no race)."""
    global _umask
    if _umask is None:
        try:
            with open("/proc/self/status", encoding="ascii") as fh:
                line = next(ln for ln in fh if ln.startswith("Umask:"))
            _umask = int(line.split()[1], 8)
        except (OSError, StopIteration, ValueError, IndexError):
            _umask = os.umask(0o022)
            os.umask(_umask)
    return _umask


def file_mode() -> int:
    """Permissions of a newly created file: ``0666`` minus the umask (as ``open()`` gives)."""
    return 0o666 & ~umask()


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of the bytes of the file at ``path`` (``OSError`` when it cannot be read)."""
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def storage_problem(exc: BaseException) -> str | None:
    """Short words for an ``OSError`` a user can cause while writing — ``"disk full"``,
    ``"read-only file system"``, ``"permission denied"`` — or None for any other error."""
    code = getattr(exc, "errno", None)
    if code in _DISK_FULL:
        return "disk full"
    if code == errno.EROFS:
        return "read-only file system"
    if code in _READ_ONLY:
        return "permission denied"
    return None


def storage_error(exc: OSError, path: str | Path, action: str = "write") -> Exception:
    """A one-line :class:`StorageError` for an ``OSError`` a user can cause while writing
    ``path`` (disk full, read-only folder, no permission, a path component that is a file),
    or ``exc`` itself for anything else."""
    path = Path(path)
    code = exc.errno
    problem = storage_problem(exc)
    if problem == "disk full":
        return StorageError(path, f"disk full: cannot {action} {path} ({os.strerror(code)}); "
                                  "the previous file, if any, is unchanged")
    if problem == "read-only file system":
        return StorageError(path, f"cannot {action} {path}: the file system is read-only")
    if problem == "permission denied":
        return StorageError(path, f"cannot {action} {path}: permission denied (the folder is read-only "
                                  "for this user)")
    if code in (errno.ENOTDIR, errno.EEXIST) or isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return StorageError(path, f"cannot {action} {path}: {blocker} is a file, not a folder")
    return exc


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` with the errors of :func:`storage_error` (e.g. a component that is a file)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path, "create the folder") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (``torch.save``,
    ``soundfile.write``, ``np.save``): on success it is synced, given ordinary permissions and
    renamed over ``path``; on any error it is removed and ``path`` is untouched."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise storage_error(exc, path) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise storage_error(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_with(path: str | Path, write: Callable[[io.BufferedWriter], object]) -> Path:
    """Write ``path`` atomically through ``write(fh)`` on a binary file handle."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            write(fh)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (same-folder temp file, fsync, rename)."""
    return atomic_write_with(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: str | Path, older_than: float = 0.0) -> list[Path]:
    """Remove the temporary files (``.<name>.<random>.tmp``) that atomic writes killed between
    writing and renaming left in ``folder`` and below, modified at least ``older_than`` seconds
    ago (0: all — only safe while holding the folder's lock). Returns the files removed."""
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    removed = []
    for f in folder.rglob(f".*{TEMP_SUFFIX}"):
        try:
            if f.is_file() and now - f.stat().st_mtime >= older_than:
                f.unlink()
                removed.append(f)
        except OSError:
            continue  # another process's, or gone meanwhile
    return removed


def _csv(rows: Iterable[Sequence[object]], header: Sequence[str] | None,
         cell: Callable[[object], object]) -> str:
    """CSV text (``\\n`` line ends) of ``rows``, each value passed through ``cell``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header is not None:
        w.writerow(header)
    for row in rows:
        w.writerow([cell(v) for v in row])
    return buf.getvalue()


def csv_text(rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """CSV text (``\\n`` line ends) of ``rows`` with an optional header; ``None`` cells are empty."""
    return _csv(rows, header, lambda v: "" if v is None else v)


def format_value(v: object) -> str:
    """CSV text of a value: floats in full precision (``repr``), NaN as ``nan``."""
    if isinstance(v, float):
        return repr(v)
    return "" if v is None else str(v)


def write_csv(path: str | Path, rows: Iterable[Sequence[object]], header: Sequence[str] | None = None) -> Path:
    """Write rows (and an optional header) as CSV, atomically (values through :func:`format_value`)."""
    return atomic_write_text(path, _csv(rows, header, format_value))


def write_dict_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write dict rows with a header (columns default to the first row's keys), atomically."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return write_csv(path, ([r.get(c) for c in columns] for r in rows), header=columns)
