"""Stacked-frame vectors of log-mels, gathered on demand, and the per-clip means of their scores.

The frame-vector detectors (AE, ARAE, BiGAN patches, CANDE-CP) train on the vectors of
:class:`FrameVectors` and score a clip by the mean of its vectors' scores (:class:`ClipMeans`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from stetho.features import FeatureList


class FrameVectors:
    """All stacked-frame vectors of a set of clips, without materialising them.

    The log-mels are concatenated into one float32 tensor ``(total_frames, n_mels)``; a vector is
    gathered on demand as ``frames[start : start + n_frames].reshape(-1)``, which is the DCASE
    stacking order. Memory is that of the log-mels (5x less than the stacked vectors, and float32,
    unlike the original's float64 copies).

    Args:
        logmels: per-clip log-mels ``(n_frames_i, n_mels)``.
        n_frames: frames per vector.
        hop: frame hop between vectors.
    """

    def __init__(self, logmels: Sequence[np.ndarray], n_frames: int = 5, hop: int = 1) -> None:
        if not logmels:
            raise ValueError("no clips to build vectors from")
        shapes = [logmels.shape(i) if isinstance(logmels, FeatureList) else logmels[i].shape
                  for i in range(len(logmels))]
        n_mels = shapes[0][1]
        self.n_frames = n_frames
        self.n_mels = n_mels
        starts, owners, offset = [], [], 0
        for i, shape in enumerate(shapes):
            if shape[1] != n_mels:
                raise ValueError(f"clip {i} has {shape[1]} mel bands, expected {n_mels}")
            count = (shape[0] - n_frames) // hop + 1
            if count < 1:
                raise ValueError(f"clip {i} has {shape[0]} frames, fewer than {n_frames}")
            starts.append(offset + hop * np.arange(count))
            owners.append(np.full(count, i))
            offset += shape[0]
        # Copied clip by clip: log-mels memory-mapped from the cache (a FeatureList) are mapped
        # one at a time, never all at once.
        frames = np.empty((offset, n_mels), dtype=np.float32)
        row = 0
        for i, shape in enumerate(shapes):
            frames[row:row + shape[0]] = logmels[i]
            row += shape[0]
        self.frames = torch.from_numpy(frames)
        self.starts = torch.from_numpy(np.concatenate(starts).astype(np.int64))
        self.clip_index = torch.from_numpy(np.concatenate(owners).astype(np.int64))
        self.n_clips = len(logmels)
        self._offsets = torch.arange(n_frames, dtype=torch.int64)

    @property
    def dim(self) -> int:
        return self.n_frames * self.n_mels

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Vectors ``(len(idx), n_frames * n_mels)`` for vector indices ``idx``."""
        rows = self.starts[idx].unsqueeze(1) + self._offsets
        return self.frames[rows].reshape(len(idx), self.dim)

    def batches(
        self, idx: torch.Tensor, batch_size: int, shuffle: bool = False,
        generator: torch.Generator | None = None, min_batch: int = 1,
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(vectors, clip_index)`` batches over the vector indices ``idx``.

        A trailing batch smaller than ``min_batch`` is dropped (BatchNorm cannot train on one
        vector); the number dropped is below ``min_batch`` per epoch.
        """
        if shuffle:
            idx = idx[torch.randperm(len(idx), generator=generator)]
        for start in range(0, len(idx), batch_size):
            b = idx[start : start + batch_size]
            if len(b) < min_batch:
                break
            yield self.gather(b), self.clip_index[b]


def recompute_batchnorm(
    net: torch.nn.Module, batches: Iterable[torch.Tensor], device: torch.device
) -> None:
    """Set every BatchNorm's running statistics to their averages over ``batches`` ("precise BN").

    With momentum 0.01 (Keras' 0.99) the running statistics trail the weights by ~100 steps; a
    small dataset trains for few steps, so eval-mode outputs would be biased. One pass over the
    training data with the final weights fixes that; on full DCASE data it changes almost nothing.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = net.training
    net.train()
    with torch.no_grad():
        for x in batches:
            net(x.to(device))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.train(was_training)


class ClipMeans:
    """Per-clip means of per-vector values, accumulated batch by batch in float64.

    ``add(values, owner)`` adds the values ``(b, ...)`` of a batch of vectors owned by the clips
    ``owner`` ``(b,)`` (:meth:`FrameVectors.batches` gives both); :meth:`means` is each clip's
    sum divided by its number of vectors (NaN for a clip that got none).

    Args:
        n_clips: number of clips.
        shape: shape of one vector's value (``()``: a scalar score; ``(n_mels,)``: an error block).
    """

    def __init__(self, n_clips: int, *shape: int) -> None:
        self.sums = torch.zeros(n_clips, *shape, dtype=torch.float64)
        self.counts = torch.zeros(n_clips, dtype=torch.float64)

    def add(self, values: torch.Tensor, owner: torch.Tensor) -> None:
        self.sums.index_add_(0, owner, values.double())
        self.counts.index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))

    def means(self) -> np.ndarray:
        """``(n_clips, *shape)`` float64."""
        counts = self.counts.reshape(-1, *([1] * (self.sums.ndim - 1)))
        return (self.sums / counts).numpy()
