"""On-disk cache of per-clip features, keyed by file content and feature parameters.

A key is the SHA-256 of (SHA-256 of the file's bytes, feature parameters, channel, cache version):
a clip replaced by other audio misses the cache even if its size and modification time were kept,
while a copied or touched clip with the same bytes hits it. Hashing is cheap next to decoding
(about 0.2 ms for a 10 s 16 kHz WAV).

An entry ``<key>.npy`` is an ordinary ``.npy`` file (``np.load`` reads it) followed by a 56-byte
trailer: a magic string, :data:`CACHE_VERSION`, the clip's native sample rate, the CRC-32 of the
array's bytes and the key itself. Every read is verified (npy header, float dtype, byte count,
CRC-32, the key, finite values); an entry that fails is counted as a miss and rebuilt, never used.

Entries are written atomically with ordinary permissions (:mod:`stetho.fileio`). A cache that cannot
be written (disk full, read-only, permission denied) never fails a run: one warning naming the
folder is logged (once per folder, until a write there succeeds again) and that cache object is
still read but no longer written. Temporary files of writes killed between writing and renaming
are removed when older than an hour, once per cache object for each sub-folder it writes to.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from stetho.errors import StethoError, StorageError
from stetho.features.cache_limit import CacheLimit, touch
from stetho.fileio import atomic_write_with, file_sha256, remove_stale_temp_files, storage_problem

log = logging.getLogger(__name__)

#: Bump when the feature computation or the entry format changes so old entries are not reused.
#: 2: keys on file content (was path, size and mtime); verified entries with a trailer.
CACHE_VERSION = 2

_MAGIC = b"STETHOFC"
#: magic, version, native sample rate (Hz, 0 = unknown), CRC-32 of the array bytes, reserved, key.
_TRAILER = struct.Struct("<8sIIII32s")
#: Temporary files of killed writes older than this (seconds) are removed.
STALE_TEMP_SECONDS = 3600.0


#: Cache folders a "not written" warning was logged for (this process).
_WARNED: set[Path] = set()
_WARNED_LOCK = threading.Lock()


class CachedFeatures(NamedTuple):
    """One verified cache entry: the feature array, the clip's native sample rate in Hz (0 when
    it was stored without one) and where the array's bytes start in the entry file (bytes from
    its beginning; -1 when unknown), for memory-mapping it (:meth:`FeatureCache.memmap`)."""

    features: np.ndarray
    sample_rate: int
    offset: int = -1


def default_cache_dir() -> Path:
    """``$STETHO_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/stetho`` (``~/.cache/stetho``)."""
    env = os.environ.get("STETHO_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stetho"


#: SHA-256 (hex) of a file's bytes: the content part of a cache key.
file_digest = file_sha256


class FeatureCache:
    """Per-clip feature arrays stored under ``root/features/<kind>/<key[:2]>/<key>.npy``.

    Safe to read from several threads at once (``hits`` / ``misses`` are counted under a lock);
    writes come from one thread.

    Args:
        root: cache folder (created on first write).
        kind: feature family name, so different feature types never collide.
        max_bytes: size cap of the whole cache folder, least recently used entries evicted
            beyond it (:mod:`stetho.features.cache_limit`; default ``$STETHO_CACHE_MAX_SIZE``, the
            size ``stetho cache --max-size`` stored, else 2 GB; 0: no cap).

    Attributes:
        hits: verified entries returned.
        misses: lookups that found no entry, or a bad one (``rejected`` counts those).
        rejected: entries that failed verification (rebuilt by the next write).
        writable: False once a write failed (disk full, read-only ...); no more writes are tried.
    """

    def __init__(self, root: str | Path, kind: str = "logmel", max_bytes: int | str | None = None) -> None:
        self.root = Path(root)
        self.limit = CacheLimit(self.root, max_bytes)
        self.kind = kind
        self.hits = 0
        self.misses = 0
        self.rejected = 0
        self.writable = True
        self._lock = threading.Lock()
        self._cleaned: set[Path] = set()

    # -- keys ---------------------------------------------------------------------------------
    def key(self, path: str | Path, params: dict) -> str:
        """Key of the clip at ``path`` (its content) with feature ``params`` (which must include
        everything the features depend on, e.g. the channel).

        Raises:
            OSError: the file cannot be read.
        """
        ident = json.dumps([file_digest(path), params, CACHE_VERSION], sort_keys=True, default=str)
        return hashlib.sha256(ident.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / "features" / self.kind / key[:2] / f"{key}.npy"

    def entry_path(self, key: str) -> Path:
        """The file of the entry stored under ``key`` (which may not exist)."""
        return self._file(key)

    # -- by key -------------------------------------------------------------------------------
    def read(self, key: str) -> CachedFeatures | None:
        """The verified entry stored under ``key``, or ``None`` (missing or bad: a miss)."""
        f = self._file(key)
        entry = None
        try:
            with open(f, "rb") as fh:
                blob = bytearray(os.fstat(fh.fileno()).st_size)
                n = fh.readinto(blob)
            entry = _decode(memoryview(blob)[:n], key)
            if entry is None:
                log.debug("feature cache entry %s is damaged; it will be rebuilt", f)
                with self._lock:
                    self.rejected += 1
            else:
                touch(f)  # the last use, for least-recently-used eviction
        except OSError:
            pass
        with self._lock:
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
        return entry

    def write(self, key: str, value: np.ndarray, sample_rate: int = 0) -> int | None:
        """Store ``value`` (a finite float array) and the clip's native ``sample_rate`` under ``key``,
        atomically. Never raises for a full, read-only or otherwise unwritable cache: the first
        failure logs one warning and turns writing off (``writable``).

        Returns:
            Where the array's bytes start in the entry file (see :meth:`memmap`), or ``None``
            when nothing was written.
        """
        if not self.writable:
            return None
        arr = np.ascontiguousarray(value)
        if arr.dtype.kind != "f" or not np.isfinite(arr).all():
            return None  # would be refused on reading
        f = self._file(key)
        folder = f.parent
        if folder not in self._cleaned:
            self._cleaned.add(folder)
            remove_stale_temp_files(folder, older_than=STALE_TEMP_SECONDS)
        trailer = _TRAILER.pack(_MAGIC, CACHE_VERSION, int(sample_rate), zlib.crc32(arr.data.cast("B")), 0,
                                bytes.fromhex(key))

        offset: list[int] = []

        def dump(fh) -> None:
            start = fh.tell()
            np.save(fh, arr, allow_pickle=False)
            offset.append(fh.tell() - arr.nbytes - start)
            fh.write(trailer)

        try:
            atomic_write_with(f, dump)
            self.limit.wrote(arr.nbytes + _TRAILER.size)
            if self.root in _WARNED:  # writable again: a later failure is news
                with _WARNED_LOCK:
                    _WARNED.discard(self.root)
        except (StorageError, OSError) as exc:
            self.writable = False
            with _WARNED_LOCK:
                first = self.root not in _WARNED
                _WARNED.add(self.root)
            if first:  # once per folder, however many cache objects a run makes
                log.warning("feature cache not written: %s at %s; continuing without the cache",
                            _reason(exc), self.root)
            else:
                log.debug("feature cache not written: %s at %s", _reason(exc), self.root)
            return None
        return offset[0]

    def memmap(self, key: str, offset: int, shape: tuple[int, ...], dtype: np.dtype | str) -> np.ndarray:
        """The array of the entry under ``key`` memory-mapped read-only (nothing is read until
        it is used; the pages it touches belong to the OS page cache, not to the process heap),
        from a verified read or a write that gave its ``offset``, ``shape`` and ``dtype``.
        Unmapped when the last reference to it goes.

        Raises:
            StethoError: the entry file is gone or shorter than the array (the cache was
                cleared or changed while the features were in use), naming the file.
        """
        f = self._file(key)
        try:
            return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape)
        except (OSError, ValueError) as exc:
            raise StethoError(f"feature cache entry {f} cannot be memory-mapped ({exc}): it was deleted while a "
                              "run was using it (the cache cleared, or evicted by a size cap smaller than the run's "
                              "features: raise $STETHO_CACHE_MAX_SIZE or `stetho cache --max-size`); run again, or "
                              "pass --no-cache to hold the features in memory") from None

    # -- by file ------------------------------------------------------------------------------
    def get(self, path: str | Path, params: dict) -> np.ndarray | None:
        """The cached array for the clip at ``path`` with ``params``, or ``None`` (also when the
        file cannot be read)."""
        try:
            key = self.key(path, params)
        except OSError:
            return None
        entry = self.read(key)
        return None if entry is None else entry.features

    def put(self, path: str | Path, params: dict, value: np.ndarray, sample_rate: int = 0) -> None:
        """Store ``value`` for the clip at ``path`` with ``params`` (see :meth:`write`)."""
        self.write(self.key(path, params), value, sample_rate)


def _decode(blob: memoryview, key: str) -> CachedFeatures | None:
    """The entry in ``blob`` if it is whole and belongs to ``key``, else None."""
    if len(blob) < _TRAILER.size + 16:
        return None
    magic, version, sample_rate, crc, _, stored_key = _TRAILER.unpack(blob[-_TRAILER.size :])
    if magic != _MAGIC or version != CACHE_VERSION or stored_key != bytes.fromhex(key):
        return None
    # The npy header (magic, version, header length, then a dict literal), parsed by numpy from
    # its own bytes only: the array's bytes are not copied.
    major = blob[6] if bytes(blob[:6]) == b"\x93NUMPY" else 0
    if major == 1:
        start = 10 + struct.unpack("<H", blob[8:10])[0]
    elif major in (2, 3):
        start = 12 + struct.unpack("<I", blob[8:12])[0]
    else:
        return None
    if start > len(blob) - _TRAILER.size:
        return None
    parsed = _npy_header(bytes(blob[:start]))
    if parsed is None:
        return None
    shape, dtype = parsed
    data = blob[start : len(blob) - _TRAILER.size]
    if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or zlib.crc32(data) != crc:
        return None
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    if not np.isfinite(arr).all():
        return None
    return CachedFeatures(arr, int(sample_rate), start)


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` of a C-order float ``.npy`` header, else None. Memoised: the entries of
    one run share a handful of headers, and numpy parses them with ``ast.literal_eval``."""
    fh = io.BytesIO(header)
    try:
        major, _ = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, UnicodeDecodeError, MemoryError):
        return None
    if fortran or dtype.kind != "f" or dtype.hasobject or any(n < 0 for n in shape):
        return None
    return tuple(shape), dtype


def _reason(exc: BaseException) -> str:
    """Short words for why a cache write failed."""
    for e in (exc, exc.__context__):
        problem = storage_problem(e) if e is not None else None
        if problem:
            return problem
    text = str(exc)
    return "a part of the path is a file, not a folder" if "is a file, not a folder" in text else text
