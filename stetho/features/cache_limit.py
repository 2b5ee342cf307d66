"""The feature cache's size cap: least-recently-used eviction, what ``stetho cache`` shows and clears.

An entry's *last use* is its modification time: :func:`touch` sets it to now whenever
:class:`~stetho.features.cache.FeatureCache` returns a verified entry (file systems mounted with
``noatime`` / ``relatime`` do not keep access times reliably, so the cache records them itself).
When a write takes the cache above its cap, the entries used longest ago are deleted until the
cache holds at most :data:`EVICT_TO` of the cap (a margin, so that the next writes do not each
start an eviction).

The cap, in bytes, is the first of: the ``max_bytes`` a :class:`CacheLimit` is given,
``$STETHO_CACHE_MAX_SIZE`` (``"2G"``, ``"500M"``, ``"1.5GB"``, bytes), the size stored in the
cache folder by ``stetho cache --max-size`` (``ROOT/max_size``), else :data:`DEFAULT_MAX_BYTES`
(2 GB). ``0`` means no cap.

Several processes may share a cache: each keeps its own running estimate of the size (one scan
of the folder at its first write, then the bytes it wrote) and rescans before it evicts, so the
decision rests on what is really on disk; an entry deleted by another process is skipped.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stetho.errors import ConfigError

log = logging.getLogger(__name__)

#: The cap when nothing else is set: 2 GB.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: Environment variable holding the cap (e.g. ``STETHO_CACHE_MAX_SIZE=500M``; ``0``: no cap).
ENV_MAX_SIZE = "STETHO_CACHE_MAX_SIZE"
#: The file in the cache folder where ``stetho cache --max-size`` stores the cap.
MAX_SIZE_FILE = "max_size"
#: An eviction deletes down to this share of the cap.
EVICT_TO = 0.9

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_size(text: str | int, what: str = "size") -> int:
    """Bytes of a size such as ``"2G"``, ``"500M"``, ``"1.5GB"``, ``"300k"`` or ``"1048576"``
    (binary units: 1 K = 1024 bytes).

    Raises:
        ConfigError: not a size (``what`` names where it came from).
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{what}: a size must be >= 0, got {text}")
        return text
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ConfigError(f"{what}: {text!r} is not a size (expected e.g. 2G, 500M, 300K or a number of bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_size(n: float) -> str:
    """``n`` bytes in words: ``"1.5 GB"``, ``"230.0 MB"``, ``"512 B"`` (binary units)."""
    for unit, size in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def stored_max_bytes(root: str | Path) -> int | None:
    """The cap ``stetho cache --max-size`` stored in ``root`` (None when none was, or it is unreadable)."""
    try:
        return parse_size((Path(root) / MAX_SIZE_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ConfigError):
        return None


def store_max_bytes(root: str | Path, max_bytes: int) -> None:
    """Remember ``max_bytes`` as the cap of the cache in ``root`` (``ROOT/max_size``)."""
    from stetho.fileio import atomic_write_text

    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(root) / MAX_SIZE_FILE, f"{int(max_bytes)}\n")


def resolve_max_bytes(root: str | Path, max_bytes: int | str | None = None) -> int:
    """The cap of the cache in ``root``: ``max_bytes`` if given, else ``$STETHO_CACHE_MAX_SIZE``,
    else the stored one, else :data:`DEFAULT_MAX_BYTES` (0: no cap)."""
    if max_bytes is not None:
        return parse_size(max_bytes, "cache max size")
    env = os.environ.get(ENV_MAX_SIZE)
    if env:
        return parse_size(env, f"${ENV_MAX_SIZE}")
    stored = stored_max_bytes(root)
    return DEFAULT_MAX_BYTES if stored is None else stored


def touch(path: Path) -> None:
    """Record a use of the entry at ``path`` (its modification time := now); never raises."""
    try:
        os.utime(path)
    except OSError:
        pass


def _entries(root: Path) -> list[tuple[float, int, Path]]:
    """``(last use, bytes, path)`` of every entry under ``root/features`` (vanished ones skipped)."""
    out = []
    for folder, _, files in os.walk(root / "features"):
        for name in files:
            if not name.endswith(".npy"):
                continue
            p = Path(folder) / name
            try:
                st = p.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, p))
    return out


@dataclass
class CacheInfo:
    """What a cache folder holds: ``entries`` feature files of ``bytes`` in all, per feature kind
    (``{kind: (entries, bytes)}``), its cap and when its entries were last used."""

    root: Path
    entries: int
    bytes: int
    max_bytes: int
    kinds: dict[str, tuple[int, int]] = field(default_factory=dict)
    oldest_use: float | None = None
    newest_use: float | None = None


def cache_info(root: str | Path, max_bytes: int | str | None = None) -> CacheInfo:
    """Entries and size of the cache in ``root`` (an absent folder is an empty cache)."""
    root = Path(root)
    entries = _entries(root)
    kinds: dict[str, tuple[int, int]] = {}
    for _, size, p in entries:
        kind = p.relative_to(root / "features").parts[0]
        n, b = kinds.get(kind, (0, 0))
        kinds[kind] = (n + 1, b + size)
    uses = [t for t, _, _ in entries]
    return CacheInfo(root=root, entries=len(entries), bytes=sum(s for _, s, _ in entries),
                     max_bytes=resolve_max_bytes(root, max_bytes), kinds=dict(sorted(kinds.items())),
                     oldest_use=min(uses) if uses else None, newest_use=max(uses) if uses else None)


def evict(root: str | Path, max_bytes: int, target: int | None = None) -> tuple[int, int]:
    """Delete the entries of ``root`` used longest ago until at most ``target`` bytes remain
    (default: ``max_bytes``); nothing when the cache is within ``max_bytes`` or ``max_bytes`` is 0.
    Returns ``(entries deleted, bytes freed)``."""
    root = Path(root)
    if max_bytes <= 0:
        return 0, 0
    entries = _entries(root)
    total = sum(s for _, s, _ in entries)
    if total <= max_bytes:
        return 0, 0
    goal = max_bytes if target is None else target
    deleted = freed = 0
    for _, size, p in sorted(entries, key=lambda e: (e[0], str(e[2]))):  # least recently used first
        if total - freed <= goal:
            break
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.debug("feature cache: %s not evicted (%s)", p, exc)
            continue
        deleted += 1
        freed += size
    log.info("feature cache %s: %d least recently used entries (%s) evicted to stay under %s", root, deleted,
             format_size(freed), format_size(max_bytes))
    return deleted, freed


def clear(root: str | Path) -> tuple[int, int]:
    """Delete every entry (and left-over temporary file) of the cache in ``root``; the folder and
    its stored cap stay. Returns ``(entries deleted, bytes freed)``."""
    root = Path(root)
    deleted = freed = 0
    features = root / "features"
    for folder, _, files in os.walk(features, topdown=False):
        for name in files:
            p = Path(folder) / name
            try:
                size = p.stat().st_size
                p.unlink()
            except OSError:
                continue
            if name.endswith(".npy"):
                deleted += 1
                freed += size
        if Path(folder) != features:
            try:
                os.rmdir(folder)
            except OSError:
                pass
    return deleted, freed


class CacheLimit:
    """The size bookkeeping of one :class:`~stetho.features.cache.FeatureCache`: call
    :meth:`wrote` after every entry written; it evicts when the cache goes over its cap.

    Args:
        root: the cache folder.
        max_bytes: the cap (see :func:`resolve_max_bytes`; resolved at the first write).
    """

    def __init__(self, root: str | Path, max_bytes: int | str | None = None) -> None:
        self.root = Path(root)
        self._given = max_bytes
        self.max_bytes: int | None = None if max_bytes is None else parse_size(max_bytes, "cache max size")
        self._estimate: int | None = None
        self._lock = threading.Lock()
        #: Entries and bytes this object evicted.
        self.evicted = 0
        self.evicted_bytes = 0
        self.last_eviction: float | None = None

    def wrote(self, nbytes: int) -> None:
        """Account for an entry of ``nbytes`` just written; evict the least recently used entries
        when the cache is over its cap. Never raises (a cache that cannot be trimmed still works)."""
        try:
            with self._lock:
                if self.max_bytes is None:
                    self.max_bytes = resolve_max_bytes(self.root, self._given)
                if self.max_bytes <= 0:
                    return
                if self._estimate is None:
                    self._estimate = sum(s for _, s, _ in _entries(self.root))
                else:
                    self._estimate += int(nbytes)
                if self._estimate <= self.max_bytes:
                    return
                n, freed = evict(self.root, self.max_bytes, int(self.max_bytes * EVICT_TO))
                self.evicted += n
                self.evicted_bytes += freed
                self.last_eviction = time.time()
                self._estimate = sum(s for _, s, _ in _entries(self.root))
        except (OSError, ConfigError) as exc:
            log.warning("feature cache %s: size cap not applied (%s)", self.root, exc)
