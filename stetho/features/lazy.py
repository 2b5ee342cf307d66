"""Per-clip features that stay on disk: a sequence whose items are read when they are used, so
a run over thousands of clips holds none of them in RAM.

* :func:`~stetho.features.extract_logmels` given a :class:`~stetho.features.FeatureCache` returns
  a :class:`FeatureList` in which every clip whose entry is in the cache (found there, or written
  there just now) is a reference to its entry (:class:`CacheRef`), the others (a cache that
  cannot be written) arrays in memory. ``features[i]`` memory-maps entry ``i`` afresh
  (read-only, nothing read until used) and the mapping goes with the last reference to it, so
  the pages a caller touched do not accumulate in the process.
* :func:`~stetho.features.extract_waveforms` with ``stream=True`` keeps each clip as a reference
  to its audio file (:class:`AudioRef`): ``features[i]`` decodes it again, with the very call
  that validated it. Waveforms are not put in the feature cache: as float32 they take twice the
  WAV files' space, and a full development set's would overflow the cache's size cap.

The values are those the in-memory path would hold, bit for bit: results do not change.

Code that takes a subset keeps it on disk with :func:`take` (``features.take(idx)``) rather
than ``[features[i] for i in idx]``, which would map every item at once (each mapping also
holds a file descriptor).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, overload

import numpy as np

from stetho.audio import load_audio
from stetho.errors import AudioError
from stetho.features.cache import FeatureCache


class CacheRef(NamedTuple):
    """Where one clip's feature array lies in a feature cache entry."""

    key: str
    offset: int
    shape: tuple[int, ...]
    dtype: str


class AudioRef(NamedTuple):
    """A clip's waveform as :func:`~stetho.audio.load_audio` gives it (validated once already)."""

    path: Path
    sr: int
    channel: int
    resample: bool
    n_samples: int

    def load(self) -> np.ndarray:
        """The float32 samples ``(n_samples,)`` at ``sr`` Hz.

        Raises:
            AudioError: the file changed since it was validated (naming it).
        """
        y, _ = load_audio(self.path, sr=self.sr, channel=self.channel, resample=self.resample)
        if len(y) != self.n_samples:
            raise AudioError(self.path, f"changed while in use: {len(y)} samples, {self.n_samples} when first read")
        return y


class FeatureList(Sequence[np.ndarray]):
    """Feature arrays of many clips, each in memory or in a feature-cache entry.

    Args:
        items: per clip, an array, a :class:`CacheRef` into ``cache`` or an :class:`AudioRef`.
        cache: the cache the references point into (required when any item is a :class:`CacheRef`).
    """

    def __init__(self, items: Sequence[np.ndarray | CacheRef | AudioRef], cache: FeatureCache | None = None) -> None:
        self._items = list(items)
        if cache is None and any(isinstance(x, CacheRef) for x in self._items):
            raise ValueError("a FeatureList with cache references needs the cache")
        self.cache = cache

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, i: slice) -> FeatureList: ...

    def __getitem__(self, i):
        """Item ``i`` (memory-mapped read-only from the cache, or decoded from its audio file,
        when on disk), or a :class:`FeatureList` for a slice."""
        if isinstance(i, slice):
            return FeatureList(self._items[i], self.cache)
        x = self._items[i]
        if isinstance(x, CacheRef):
            return self.cache.memmap(x.key, x.offset, x.shape, x.dtype)
        if isinstance(x, AudioRef):
            return x.load()
        return x

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self._items)):
            yield self[i]

    def take(self, idx: Sequence[int]) -> FeatureList:
        """The items ``idx`` (in that order), still on disk."""
        return FeatureList([self._items[int(i)] for i in idx], self.cache)

    def shape(self, i: int) -> tuple[int, ...]:
        """Shape of item ``i``, without mapping it."""
        x = self._items[i]
        return (x.n_samples,) if isinstance(x, AudioRef) else tuple(x.shape)

    @property
    def n_on_disk(self) -> int:
        """How many items are read from disk on use rather than held in memory."""
        return sum(isinstance(x, (CacheRef, AudioRef)) for x in self._items)

    @property
    def nbytes_in_memory(self) -> int:
        """Bytes of the items held in memory."""
        return sum(x.nbytes for x in self._items if isinstance(x, np.ndarray))

    def __repr__(self) -> str:
        return f"FeatureList({len(self)} clips, {self.n_on_disk} on disk)"


def take(features: Sequence[np.ndarray], idx: Sequence[int]) -> Sequence[np.ndarray]:
    """``features[i] for i in idx``: a :class:`FeatureList` stays on disk, anything else becomes a list."""
    if isinstance(features, FeatureList):
        return features.take(idx)
    return [features[int(i)] for i in idx]


def on_disk(features: Sequence[np.ndarray]) -> bool:
    """True for a :class:`FeatureList` with items read from disk on use."""
    return isinstance(features, FeatureList) and features.n_on_disk > 0


__all__ = ["AudioRef", "CacheRef", "FeatureList", "on_disk", "take"]
