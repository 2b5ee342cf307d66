"""On-disk cache of per-clip features, keyed by file identity and feature parameters.

A key is the SHA-1 of (absolute path, size, mtime in ns, feature parameters, channel, cache
version): editing, replacing or touching a file, or changing any parameter, misses the cache.
Entries are ``.npy`` files written atomically, so an interrupted run never leaves a bad entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

#: Bump when the feature computation changes so old entries are not reused.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$STETHO_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/stetho`` (``~/.cache/stetho``)."""
    env = os.environ.get("STETHO_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stetho"


class FeatureCache:
    """Per-clip feature arrays stored under ``root/features/<kind>/<key[:2]>/<key>.npy``.

    Args:
        root: cache folder (created on first write).
        kind: feature family name, so different feature types never collide.
    """

    def __init__(self, root: str | Path, kind: str = "logmel") -> None:
        self.root = Path(root)
        self.kind = kind
        self.hits = 0
        self.misses = 0

    def key(self, path: str | Path, params: dict) -> str:
        path = Path(path).resolve()
        st = path.stat()
        ident = json.dumps(
            [str(path), st.st_size, st.st_mtime_ns, params, CACHE_VERSION], sort_keys=True
        )
        return hashlib.sha1(ident.encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / "features" / self.kind / key[:2] / f"{key}.npy"

    def get(self, path: str | Path, params: dict) -> np.ndarray | None:
        """The cached array for ``path`` with ``params``, or ``None``."""
        f = self._file(self.key(path, params))
        try:
            arr = np.load(f, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            self.misses += 1
            return None
        self.hits += 1
        return arr

    def put(self, path: str | Path, params: dict, value: np.ndarray) -> None:
        """Store ``value`` for ``path`` with ``params`` (atomic write)."""
        f = self._file(self.key(path, params))
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=f.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, value, allow_pickle=False)
            os.replace(tmp, f)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
