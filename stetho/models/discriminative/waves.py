"""Many clips' waveforms in one int16 array, cut or tiled to the network's input length."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


class WaveBank:
    """Waveforms of many clips in one int16 array (half the memory of float32; exact for the
    16-bit PCM audio of every DCASE and MIMII file), cut or tiled to a fixed length on demand."""

    def __init__(self, waves: Sequence[np.ndarray]) -> None:
        lengths = np.array([len(w) for w in waves], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.data = np.empty(int(self.offsets[-1]), dtype=np.int16)
        for i, w in enumerate(waves):
            self.data[self.offsets[i]:self.offsets[i + 1]] = np.round(
                np.clip(np.asarray(w, dtype=np.float32), -1.0, 32767 / 32768) * 32768.0)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def crop(self, i: int, n: int, start: int = 0) -> np.ndarray:
        """``n`` float32 samples of clip ``i`` from ``start``; a clip shorter than ``n`` is
        repeated from its beginning (the seed's "tile")."""
        w = self.data[self.offsets[i]:self.offsets[i + 1]]
        if len(w) < n:
            w = np.tile(w, math.ceil(n / len(w)))
            start = 0
        return w[start:start + n].astype(np.float32) / 32768.0
