"""Where the audio of a scored recording is kept, and where it is found again.

:class:`AudioArchive` is a content-addressed folder: the bytes whose SHA-256 is ``h`` live at
``ROOT/<h[:2]>/<h><suffix>`` (``.wav``, ``.flac`` ...), so the same recording sent twice, or by
two assets, is kept once, and a file is never rewritten once there. Writes are atomic (a
temporary file beside it, fsync, rename: :mod:`stetho.fileio`), so a reader or a crash never
leaves half a recording under its final name.

Default (``stetho serve`` / ``stetho watch``, :func:`default_archive`): with a SQLite database the
archive is the folder ``<db file stem>_audio`` beside the database file -- the database and its
audio are one thing to back up or move; with PostgreSQL there is none unless ``--archive DIR`` is
given, because the database may be on another machine and several services may share it: only
the operator knows which folder they all reach. ``--archive none`` turns it off.

:func:`find_audio` finds a recording's bytes: in the archive by SHA-256; else at its recorded path
if that file still has the same SHA-256; else where the watcher's ``--move`` put it
(``INBOX/done/<asset>/...``, also its ``.1``, ``.2`` ... variants); else ``None`` ("not kept").
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from sqlalchemy.engine import make_url

from stetho.errors import ConfigError
from stetho.fileio import atomic_write_bytes, file_sha256

#: Suffix of the folder beside a SQLite database file that holds its audio by default.
DEFAULT_SUFFIX = "_audio"
#: The folder the watcher's ``--move`` puts scored files in (``stetho.monitor.watch.DONE``; named
#: here too so this layer does not import the watcher).
DONE = "done"
#: How many ``.1``, ``.2`` ... variants of a moved file's name are tried (the watcher adds them when
#: a file of the same name is already in ``done/``).
MOVED_VARIANTS = 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Leading bytes of the formats whose file suffix can be told from the data (an upload without a name).
_MAGIC = ((b"RIFF", ".wav"), (b"RIFX", ".wav"), (b"RF64", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"),
          (b"FORM", ".aiff"), (b"ID3", ".mp3"))
#: Content type of each suffix (what ``GET /v1/recordings/{id}/audio`` answers).
CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".oga": "audio/ogg",
                 ".mp3": "audio/mpeg", ".aiff": "audio/aiff", ".aif": "audio/aiff", ".au": "audio/basic",
                 ".opus": "audio/ogg"}


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a SHA-256 (64 lower-case hex digits): {sha256!r}")
    return sha256


def audio_suffix(name: str | None, data: bytes) -> str:
    """The file suffix to keep ``data`` under: ``name``'s when it is a known audio suffix, else the
    one its header shows (``.wav``, ``.flac``, ``.ogg``, ``.aiff``, ``.mp3``), else ``""``."""
    suffix = Path(name or "").suffix.lower()
    if suffix in CONTENT_TYPES:
        return suffix
    return next((s for magic, s in _MAGIC if data.startswith(magic)), "")


def content_type(path: str | Path) -> str:
    """The HTTP content type of an audio file by its suffix (``audio/wav`` for ``.wav``);
    ``application/octet-stream`` when unknown."""
    return CONTENT_TYPES.get(Path(path).suffix.lower(), "application/octet-stream")


class AudioArchive:
    """The recordings kept under ``root`` by SHA-256 (see the module docstring); the folder is
    created on the first :meth:`put`."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"{self.root}: the audio archive must be a folder, and this is a file")

    def __repr__(self) -> str:
        return f"AudioArchive({str(self.root)!r})"

    def path_for(self, sha256: str, suffix: str = "") -> Path:
        """Where the bytes of ``sha256`` are kept with ``suffix`` (``ROOT/<h[:2]>/<h><suffix>``)."""
        return self.root / _check_sha256(sha256)[:2] / f"{sha256}{suffix}"

    def put(self, sha256: str, data: bytes, suffix: str = "") -> Path:
        """Keep ``data`` (whose SHA-256 is ``sha256``) and return its path. Atomic (a reader never
        sees a partial file) and idempotent: bytes already kept (under any suffix) are not written
        again, and their path comes back.

        Raises:
            ValueError: ``sha256`` is not a SHA-256, or not the SHA-256 of ``data``.
            StorageError: the archive cannot be written (disk full, read-only, no permission),
                naming the file.
        """
        found = self.find(sha256)
        if found is not None and found.stat().st_size == len(data):
            return found
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ValueError(f"{self.path_for(sha256, suffix)}: the data's SHA-256 is {actual}, not {sha256}")
        return atomic_write_bytes(found or self.path_for(sha256, suffix), data)

    def find(self, sha256: str) -> Path | None:
        """The kept file of ``sha256``, or ``None``."""
        folder = self.path_for(sha256).parent
        if not folder.is_dir():
            return None
        for candidate in sorted(folder.glob(f"{sha256}*")):
            if candidate.is_file() and (candidate.name == sha256 or candidate.name[64] == "."):
                return candidate
        return None


def default_archive(db_url: str) -> Path | None:
    """The default archive folder of the database ``db_url``: ``<db file stem>_audio`` beside a
    SQLite file; ``None`` for PostgreSQL and in-memory SQLite (see the module docstring)."""
    try:
        url = make_url(db_url)
    except Exception:
        return None  # open_database says what is wrong with the URL
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    db_file = Path(url.database).expanduser()
    return db_file.with_name(db_file.stem + DEFAULT_SUFFIX)


def _same_bytes(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and file_sha256(path) == sha256
    except OSError:
        return False


def find_audio(sha256: str, path: str | None = None, asset: str | None = None,
               archive: AudioArchive | None = None) -> Path | None:
    """Where the bytes of a stored recording are now: the ``archive``'s copy of ``sha256``; else
    ``path`` (as recorded) if that file still has this SHA-256; else, for a file the watcher
    scored at ``INBOX/<asset>/...``, its moved copy ``INBOX/done/<asset>/...`` (or a ``.N``
    variant) with this SHA-256; else ``None``: the audio was not kept."""
    if archive is not None:
        found = archive.find(sha256)
        if found is not None:
            return found
    if not path:
        return None
    recorded = Path(path)
    if _same_bytes(recorded, sha256):
        return recorded
    if asset:
        parts = recorded.parts
        for i in range(len(parts) - 1, 0, -1):  # the asset folder: INBOX/<asset>/...
            if parts[i] != asset or parts[i - 1] == DONE:
                continue
            moved = Path(*parts[:i], DONE, *parts[i:])
            for candidate in [moved, *(moved.with_name(f"{moved.name}.{n}") for n in range(1, MOVED_VARIANTS + 1))]:
                if _same_bytes(candidate, sha256):
                    return candidate
                if not candidate.exists():
                    break
    return None


__all__ = ["AudioArchive", "CONTENT_TYPES", "DEFAULT_SUFFIX", "audio_suffix", "content_type", "default_archive",
           "find_audio"]
