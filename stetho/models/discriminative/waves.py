"""Many clips' waveforms in one int16 array, cut or tiled to the network's input length; or, for
waveforms that stay on disk (a :class:`~stetho.features.FeatureList`), read clip by clip."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stetho.features import FeatureList, on_disk


def _to_int16(w: np.ndarray) -> np.ndarray:
    """The 16-bit samples of a float waveform (exact for 16-bit PCM audio)."""
    return np.round(np.clip(np.asarray(w, dtype=np.float32), -1.0, 32767 / 32768) * 32768.0).astype(np.int16)


class WaveBank:
    """Waveforms of many clips in one int16 array (half the memory of float32; exact for the
    16-bit PCM audio of every DCASE and MIMII file), cut or tiled to a fixed length on demand.

    Given a :class:`~stetho.features.FeatureList` whose clips are on disk, nothing is loaded up
    front: :meth:`crop` reads the clip it needs (the last one read is kept, so the crops of one
    clip read it once) and quantises it exactly as the in-memory bank does, so both give the
    same samples; memory no longer grows with the number of clips.
    """

    def __init__(self, waves: Sequence[np.ndarray]) -> None:
        if isinstance(waves, FeatureList):
            lengths = np.array([waves.shape(i)[0] for i in range(len(waves))], dtype=np.int64)
        else:
            lengths = np.array([len(w) for w in waves], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.source: FeatureList | None = None
        self._last: tuple[int, np.ndarray] | None = None
        if on_disk(waves):
            self.source = waves
            self.data = None
            return
        self.data = np.empty(int(self.offsets[-1]), dtype=np.int16)
        for i, w in enumerate(waves):
            self.data[self.offsets[i]:self.offsets[i + 1]] = _to_int16(w)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def clip(self, i: int) -> np.ndarray:
        """The int16 samples of clip ``i``."""
        if self.source is None:
            return self.data[self.offsets[i]:self.offsets[i + 1]]
        if self._last is None or self._last[0] != i:
            self._last = (i, _to_int16(self.source[i]))
        return self._last[1]

    def crop(self, i: int, n: int, start: int = 0) -> np.ndarray:
        """``n`` float32 samples of clip ``i`` from ``start``; a clip shorter than ``n`` is
        repeated from its beginning (the seed's "tile")."""
        w = self.clip(i)
        if len(w) < n:
            w = np.tile(w, math.ceil(n / len(w)))
            start = 0
        return w[start:start + n].astype(np.float32) / 32768.0

    @property
    def nbytes(self) -> int:
        """Bytes of samples held in memory."""
        return 0 if self.data is None else int(self.data.nbytes)
