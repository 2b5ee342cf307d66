"""Pieces every method's training shares: device choice, seeding, frame-vector batches, epochs.

The loop is deliberately small: a method supplies ``step(batch) -> loss`` and its batches; the
loop handles epochs, validation loss, progress, history and optional checkpoint/resume.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


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
        n_mels = logmels[0].shape[1]
        self.n_frames = n_frames
        self.n_mels = n_mels
        self.frames = torch.from_numpy(
            np.concatenate([np.asarray(m, dtype=np.float32) for m in logmels], axis=0)
        )
        starts, owners, offset = [], [], 0
        for i, m in enumerate(logmels):
            if m.shape[1] != n_mels:
                raise ValueError(f"clip {i} has {m.shape[1]} mel bands, expected {n_mels}")
            count = (m.shape[0] - n_frames) // hop + 1
            if count < 1:
                raise ValueError(f"clip {i} has {m.shape[0]} frames, fewer than {n_frames}")
            starts.append(offset + hop * np.arange(count))
            owners.append(np.full(count, i))
            offset += m.shape[0]
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


def run_epochs(
    step: Callable[[torch.Tensor], float],
    evaluate: Callable[[], float] | None,
    epoch_batches: Callable[[int], Iterable],
    epochs: int,
    progress: bool = False,
    desc: str = "train",
    checkpoint: Callable[[int, dict], None] | None = None,
    start_epoch: int = 0,
    history: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Run ``epochs`` epochs of ``step`` over ``epoch_batches(epoch)``.

    Args:
        step: trains on one batch, returns its loss.
        evaluate: returns the validation loss (or ``None`` for no validation).
        epoch_batches: batches of an epoch (called once per epoch).
        epochs: total number of epochs.
        progress: show a bar over epochs with the current losses.
        checkpoint: called after every epoch with (epochs done, history), e.g. to save state.
        start_epoch: epochs already done (resume).
        history: history to extend (resume).

    Returns:
        ``{"epoch": [...], "train_loss": [...], "val_loss": [...]}``.
    """
    history = history or {"epoch": [], "train_loss": [], "val_loss": []}
    bar = tqdm(range(start_epoch, epochs), desc=desc, unit="epoch", leave=False,
               disable=None if progress else True)  # None: no bar when stderr is not a terminal
    for epoch in bar:
        total, count = 0.0, 0
        for batch in epoch_batches(epoch):
            total += step(batch)
            count += 1
        train_loss = total / max(count, 1)
        val_loss = evaluate() if evaluate is not None else float("nan")
        history["epoch"].append(epoch + 1)
        history["train_loss"].append(train_loss)
        history["val_loss"].append(val_loss)
        bar.set_postfix(loss=f"{train_loss:.4g}", val=f"{val_loss:.4g}")
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"{desc}: training loss became {train_loss} at epoch {epoch + 1}")
        if checkpoint is not None:
            checkpoint(epoch + 1, history)
    bar.close()
    return history


class BestState:
    """The weights of a network at its best epoch by a validation value.

    ``update(epoch, value)`` after each epoch keeps a copy of the weights when ``value`` is
    strictly better than every earlier one (so a tie keeps the earliest epoch); NaN never counts.
    ``restore()`` loads the kept weights back (nothing to restore: the last epoch's stay).

    Args:
        net: the network being trained.
        higher_is_better: ``True`` for accuracies, ``False`` for losses.
    """

    def __init__(self, net: torch.nn.Module, higher_is_better: bool = False) -> None:
        self.net = net
        self.higher_is_better = higher_is_better
        self.epoch: int | None = None
        self.value = float("nan")
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, value: float) -> bool:
        """Record ``value`` of ``epoch``; True when it is the new best."""
        if not np.isfinite(value):
            return False
        if self.epoch is not None and not (value > self.value if self.higher_is_better else value < self.value):
            return False
        self.epoch, self.value = epoch, float(value)
        self._state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return True

    def restore(self) -> int | None:
        """Load the best weights into the network; returns the best epoch (``None``: none kept)."""
        if self._state is not None:
            self.net.load_state_dict(self._state)
        return self.epoch


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` to a temporary file, then rename (never a half-written model file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
