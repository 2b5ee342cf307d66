"""The one training loop every method uses, and the pieces around it.

A detector's ``fit`` opens one :class:`Trainer` and trains inside it::

    with Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress) as tr:
        net = AENet(dim).to(tr.device)            # weights from the trainer's seeded global RNG
        opt = torch.optim.Adam(net.parameters())
        ckpt = context.work_dir / "ae.ckpt" if context.work_dir is not None else None
        self.history_ = tr.run(step, lambda e: batches(generator=tr.generator), self.epochs,
                               evaluate=validate, desc="AE epochs", checkpoint=ckpt,
                               state={"net": net, "opt": opt},
                               fingerprint=(training_settings(self.get_params()), feats))

The trainer owns the device, the torch threads, the seed (a local ``torch.Generator`` and
``numpy.random.Generator``; the global RNGs are forked, so the caller's state is the same after
``fit``), progress (a bar on a terminal, else one log line per epoch), checkpoints and resume.
A method supplies ``step(batch) -> loss`` and its batches. :func:`run_epochs` is the older entry
point (no checkpoint file, no RNG handling); it shares the same loop.

The pieces around the loop live in their own modules and are importable from here too:
:mod:`stetho.models.runtime` (device, threads, random number generators),
:mod:`stetho.models.checkpoints` (fingerprints, checkpoint state, atomic model files) and
:mod:`stetho.models.frames` (stacked-frame vectors, per-clip means).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from stetho.errors import StethoError
from stetho.models.checkpoints import (CHECKPOINT_FORMAT, RUN_ONLY_PARAMS, _encode, _fingerprint, _get_state,
                                       _global_rng_states, _set_global_rng_states, _set_state, _state_kind,
                                       _structure, atomic_torch_save, fingerprint, keep_checkpoints_requested,
                                       keeping_checkpoints, training_settings)
from stetho.models.frames import ClipMeans, FrameVectors, recompute_batchnorm
from stetho.models.runtime import (available_cores, default_threads, fork_global_rngs, make_generator, make_rng,
                                   resolve_device, resolve_threads, seed_everything, set_threads, torch_fork_rng,
                                   use_threads)

log = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FORMAT", "DIVERGENCE_FACTOR", "HISTORY_COLUMNS", "RUN_ONLY_PARAMS", "BestState", "ClipMeans",
    "FrameVectors", "Trainer", "TrainingDivergedError", "atomic_torch_save", "available_cores", "default_threads",
    "fingerprint", "fork_global_rngs", "keep_checkpoints_requested", "keeping_checkpoints", "make_generator",
    "make_rng", "optimizer_step", "recompute_batchnorm",
    "resolve_device", "resolve_threads", "run_epochs", "seed_everything", "set_threads", "torch_fork_rng",
    "training_settings", "use_threads",
]


class TrainingStopped(StethoError):
    """A training stopped on request (a time budget ran out) before its last epoch, after the
    checkpoint of the epoch it finished was written: running it again resumes there.

    Attributes:
        desc: the run (``"ARAE (linf) epochs"``).
        epoch: epochs finished (and checkpointed, when the run has a checkpoint).
        epochs: epochs asked for.
    """

    def __init__(self, desc: str, epoch: int, epochs: int) -> None:
        self.desc, self.epoch, self.epochs = desc, epoch, epochs
        super().__init__(f"{desc}: stopped after epoch {epoch} of {epochs} (time budget); run again to resume")


class TrainingDivergedError(StethoError, FloatingPointError):
    """A training loss (or validation loss) became NaN or infinite, or grew beyond
    :data:`DIVERGENCE_FACTOR` times its first value: the training diverged and nothing of it
    is kept. A ``FloatingPointError`` too (what the loop raised before).

    ``Detector.fit`` re-raises it with the model, the machine types and the learning rate(s) to
    lower (:meth:`with_context`).

    Attributes:
        desc: the run (``"AE epochs"``).
        epoch: 1-based epoch.
        step: 1-based step in the epoch (``None``: the validation loss after the epoch).
        loss: the offending value.
        first: the first step's loss of the run (for a loss that grew, else ``None``).
    """

    def __init__(self, desc: str, epoch: int, step: int | None, loss: float, first: float | None = None,
                 context: str = "", hint: str = "lower the learning rate or normalise the inputs") -> None:
        self.desc, self.epoch, self.step, self.loss, self.first = desc, epoch, step, loss, first
        self.context, self.hint = context, hint
        where = f"epoch {epoch}, step {step}" if step is not None else f"epoch {epoch} (validation)"
        what = "validation loss" if step is None else "training loss"
        if math.isfinite(loss):
            problem = f"{what} grew from {first:.4g} to {loss:.4g}"
        else:
            problem = f"{what} is {'nan' if math.isnan(loss) else 'inf'}"
        prefix = f"{context}: " if context else ""
        super().__init__(f"{prefix}{desc}: {problem} at {where}: the training diverged; {hint}")

    def with_context(self, context: str, hint: str | None = None) -> "TrainingDivergedError":
        """The same error naming ``context`` (model and machine types) and ``hint``."""
        return TrainingDivergedError(self.desc, self.epoch, self.step, self.loss, self.first, context,
                                     self.hint if hint is None else hint)


#: A training loss above this many times its run's first step loss (at least 1) is a divergence,
#: like NaN or inf: no training of these methods recovers from it (``lr=1e6`` gave an AE loss of
#: 1e24, finite, and a threshold of 1.2e24 with a saved model).
DIVERGENCE_FACTOR = 1e6


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One training step of ``opt`` on ``loss``: clear the gradients, backpropagate, step; returns
    the loss as a float (what a ``step`` function given to :meth:`Trainer.run` returns)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


# -- the loop ------------------------------------------------------------------------------------
#: Columns every history has; ``val_loss`` is NaN for epochs without validation.
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss")


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x)


class _Progress:
    """A tqdm bar over epochs when ``progress`` is on and stderr is a terminal; otherwise one
    ``log.info`` line per epoch, rate-limited: the first and the last epoch of a run always, the
    others when ``log_interval`` seconds passed since the last line."""

    def __init__(self, desc: str, epochs: int, start: int, progress: bool, log_interval: float) -> None:
        self.desc, self.epochs, self.start, self.log_interval = desc, epochs, start, log_interval
        self.bar = (tqdm(total=epochs, initial=start, desc=desc, unit="epoch", leave=False)
                    if progress and _stderr_is_terminal() and start < epochs else None)
        self.last_line: float | None = None

    def epoch_done(self, epoch: int, history: Mapping[str, list], seconds: float) -> None:
        train, val = history["train_loss"][-1], history["val_loss"][-1]
        extras = [(k, v[-1]) for k, v in history.items()
                  if k not in HISTORY_COLUMNS and len(v) == len(history["epoch"]) and _finite(v[-1])]
        if self.bar is not None:
            post = {"loss": f"{train:.4g}"}
            if _finite(val):
                post["val"] = f"{val:.4g}"
            post.update((k, f"{v:.4g}") for k, v in extras)
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
            return
        now = time.monotonic()
        due = (epoch == self.start + 1 or epoch == self.epochs or self.last_line is None
               or now - self.last_line >= self.log_interval)
        if not due:
            return
        self.last_line = now
        text = f"{self.desc}: epoch {epoch}/{self.epochs} loss {train:.4g}" if _finite(train) else \
            f"{self.desc}: epoch {epoch}/{self.epochs} (no training batches)"
        if _finite(val):
            text += f" (val {val:.4g})"
        text += "".join(f" {k} {v:.4g}" for k, v in extras)
        log.info("%s %.1f s", text, seconds)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _loop(
    step: Callable[[Any], float],
    epoch_batches: Callable[[int], Iterable],
    epochs: int,
    evaluate: Callable[[], float | None] | None,
    on_epoch: Callable[[int, dict], None] | None,
    desc: str,
    progress: bool,
    start_epoch: int,
    history: dict[str, list] | None,
    log_interval: float,
    save: Callable[[int, dict], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, list]:
    history = history if history is not None else {k: [] for k in HISTORY_COLUMNS}
    bar = _Progress(desc, epochs, start_epoch, progress, log_interval)
    warned_empty = False
    first: float | None = None  # the run's first step loss: the scale of a divergence
    try:
        for epoch in range(start_epoch, epochs):
            if stop is not None and epoch > start_epoch and stop():
                raise TrainingStopped(desc, epoch, epochs)
            t0 = time.perf_counter()
            total, count = 0.0, 0
            for batch in epoch_batches(epoch):
                loss = float(step(batch))
                count += 1
                if first is None and math.isfinite(loss):
                    first = loss
                if not math.isfinite(loss) or abs(loss) > DIVERGENCE_FACTOR * max(abs(first), 1.0):
                    raise TrainingDivergedError(desc, epoch + 1, count, loss, first)
                total += loss
            if count == 0 and not warned_empty:
                log.warning("%s: epoch %d had no training batch (fewer vectors than one batch?)", desc, epoch + 1)
                warned_empty = True
            val = evaluate() if evaluate is not None else None
            if val is not None and not math.isfinite(float(val)):
                raise TrainingDivergedError(desc, epoch + 1, None, float(val))
            history["epoch"].append(epoch + 1)
            history["train_loss"].append(total / count if count else float("nan"))
            history["val_loss"].append(float(val) if val is not None else float("nan"))
            if on_epoch is not None:
                on_epoch(epoch + 1, history)
            bar.epoch_done(epoch + 1, history, time.perf_counter() - t0)
            if save is not None:
                save(epoch + 1, history)
    finally:
        bar.close()
    return history


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
    log_interval: float = 10.0,
) -> dict[str, list[float]]:
    """Run ``epochs`` epochs of ``step`` over ``epoch_batches(epoch)`` (the loop of
    :meth:`Trainer.run` without its checkpoint file and RNG handling; kept for older callers).

    Args:
        step: trains on one batch, returns its loss; a non-finite or exploding loss raises
            :class:`TrainingDivergedError` (a ``FloatingPointError``).
        evaluate: returns the validation loss (``None``: no validation that epoch; NaN or inf
            raises :class:`TrainingDivergedError`).
        epoch_batches: batches of an epoch (called once per epoch with the 0-based epoch).
        epochs: total number of epochs.
        progress: a bar over epochs when stderr is a terminal; otherwise (and when ``progress``
            is off) one ``log.info`` line per epoch, at most one per ``log_interval`` seconds
            besides the first and the last epoch.
        checkpoint: called after every epoch with (epochs done, history), e.g. to save state.
        start_epoch: epochs already done (resume).
        history: history to extend (resume).

    Returns:
        ``{"epoch": [...], "train_loss": [...], "val_loss": [...]}`` (and any columns
        ``checkpoint`` appended).
    """
    return _loop(step, epoch_batches, epochs, evaluate, checkpoint, desc, progress, start_epoch, history,
                 log_interval)


class Trainer:
    """Owns one ``fit``'s training: device, threads, seed, progress, checkpoints and resume.

    Use one trainer per ``fit`` as a context manager; build networks inside the block and train
    them with :meth:`run` (once per network or stage)::

        with Trainer(seed, device=..., threads=..., progress=..., checkpoint_every=5) as tr:
            net = Net().to(tr.device)
            history = tr.run(step, batches, epochs, checkpoint=work / "net.ckpt", state={"net": net, ...})

    Inside the block, torch's intra-op threads are ``threads`` and the global RNGs (torch CPU,
    ``np.random``, ``random``) are seeded with ``seed`` (as :func:`seed_everything` seeds them, so
    results are those of the older code); the caller's threads and RNG states come back on exit.
    Draw your own random numbers from :attr:`generator` (torch) and :attr:`rng` (NumPy).

    Checkpoints: :meth:`run` saves a checkpoint every ``checkpoint_every`` epochs and after the
    last one, and resumes from it when it exists, was written with the same fingerprint and the
    same state structure, and ``resume`` is on (otherwise it warns and starts from epoch 0). A
    stage that finished is restored at once, so a crash in a later stage of the same ``fit``
    costs no retraining of the earlier ones. The checkpoints are deleted when the block exits
    without an exception (``keep_checkpoints=True``, :func:`keeping_checkpoints` or
    ``$STETHO_KEEP_CHECKPOINTS=1`` keep them: one file per training, of its last epoch); after an
    exception or an interruption they stay for the next run to resume from.

    Args:
        seed: seeds :attr:`generator`, :attr:`rng` and (inside the block) the global RNGs.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ... (:func:`resolve_device`).
        threads: torch intra-op threads (:func:`resolve_threads`; ``None``: :func:`default_threads`).
        progress: a bar over epochs on a terminal; log lines otherwise (see :func:`run_epochs`).
        checkpoint_every: epochs between checkpoints (0: none are written or read).
        resume: resume from a matching checkpoint.
        keep_checkpoints: keep the checkpoint files after a successful ``fit``.
        log_interval: seconds between per-epoch log lines besides a run's first and last epoch.
    """

    def __init__(
        self, seed: int = 0, *, device: str | torch.device = "auto", threads: int | str | None = None,
        progress: bool = False, checkpoint_every: int = 1, resume: bool = True, keep_checkpoints: bool = False,
        log_interval: float = 10.0,
    ) -> None:
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        self.seed = int(seed)
        self.device = resolve_device(device)
        self.threads = resolve_threads(threads)
        self.progress = progress
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.keep_checkpoints = keep_checkpoints
        self.log_interval = log_interval
        self.generator = make_generator(self.seed)
        self.rng = make_rng(self.seed)
        #: Epoch each checkpointed run resumed after (``{path: epoch}``; 0 = trained from scratch).
        self.resumed_: dict[Path, int] = {}
        self._written: set[Path] = set()
        self._stack: contextlib.ExitStack | None = None

    # -- context --------------------------------------------------------------------------------
    def __enter__(self) -> "Trainer":
        if self._stack is not None:
            raise RuntimeError("this Trainer is already in use (one `with` block at a time)")
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        stack = contextlib.ExitStack()
        stack.enter_context(use_threads(self.threads))
        stack.enter_context(fork_global_rngs(self.seed, cuda))
        self._stack = stack
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()
        if exc_type is None and not self.keep_checkpoints:
            self.remove_checkpoints()

    def remove_checkpoints(self) -> None:
        """Delete every checkpoint this trainer wrote or resumed from (none inside
        :func:`keeping_checkpoints`: the user asked to keep them)."""
        if keep_checkpoints_requested():
            return
        for path in sorted(self._written | set(self.resumed_)):
            path.unlink(missing_ok=True)
        self._written.clear()

    # -- training -------------------------------------------------------------------------------
    def run(
        self,
        step: Callable[[Any], float],
        epoch_batches: Callable[[int], Iterable],
        epochs: int,
        *,
        evaluate: Callable[[], float | None] | None = None,
        on_epoch: Callable[[int, dict], None] | None = None,
        desc: str = "train",
        checkpoint: str | Path | None = None,
        state: Mapping[str, Any] | None = None,
        fingerprint: Any = None,
        stop: Callable[[], bool] | None = None,
    ) -> dict[str, list]:
        """Train ``epochs`` epochs (resuming from ``checkpoint`` when it matches).

        Args:
            step: trains on one batch, returns its loss (a float; a non-finite one, or one above
                :data:`DIVERGENCE_FACTOR` times the run's first, raises
                :class:`TrainingDivergedError` naming the epoch and step).
            epoch_batches: the batches of an epoch, called once per epoch with the 0-based epoch.
            epochs: total number of epochs (a resumed run trains the remaining ones).
            evaluate: the validation loss after an epoch (``None``: none; NaN or inf raises
                :class:`TrainingDivergedError`).
            on_epoch: called after every epoch with (epochs done, history), before the
                checkpoint is written: keep snapshots, update a :class:`BestState`, append
                history columns. Whatever it changes must be in ``state`` to survive a resume.
            desc: name of the run in the bar and the log lines (``"AE epochs"``).
            checkpoint: the checkpoint file of this run (``work_dir / "ae.ckpt"``); ``None``:
                no checkpoints.
            state: everything the training changes, by name: ``nn.Module``, optimizers,
                schedulers, :class:`BestState`, anything with ``state_dict()`` /
                ``load_state_dict()`` or ``get_state()`` / ``set_state()``, torch/NumPy/Python
                generators, and dicts of plain values (tensors, numbers, strings, NumPy arrays;
                restored in place). :attr:`generator`, :attr:`rng` and the global RNGs are
                always saved.
            fingerprint: hyper-parameters and data (anything :func:`fingerprint` digests); a
                checkpoint written with another one is never resumed.
            stop: asked before every epoch but the run's first; when it returns True the run
                raises :class:`TrainingStopped` (the last epoch's checkpoint is written by then
                and kept, so the next run resumes there).

        Returns:
            The history, ``{"epoch", "train_loss", "val_loss", ...}``, one entry per epoch
            (those of a resumed checkpoint included).
        """
        if self._stack is None:
            with self:
                return self.run(step, epoch_batches, epochs, evaluate=evaluate, on_epoch=on_epoch, desc=desc,
                                checkpoint=checkpoint, state=state, fingerprint=fingerprint, stop=stop)
        state = dict(state or {})
        kinds = {name: _state_kind(name, obj) for name, obj in state.items()}
        path = Path(checkpoint) if checkpoint is not None and self.checkpoint_every > 0 else None
        start, history = 0, None
        if path is not None:
            digest = _fingerprint(fingerprint, _structure(state, kinds))
            if self.resume:
                blob = self._load(path, digest, epochs, desc)
                if blob is not None:
                    for name, obj in state.items():
                        _set_state(kinds[name], obj, blob["state"][name])
                    self.generator.set_state(blob["trainer"]["generator"])
                    self.rng.bit_generator.state = json.loads(blob["trainer"]["rng"])
                    _set_global_rng_states(blob["trainer"]["global"])
                    start, history = int(blob["epoch"]), {k: list(v) for k, v in blob["history"].items()}
                    log.info("%s: resuming after epoch %d of %d (%s)", desc, start, epochs, path)
            self.resumed_[path] = start

        def save(epoch: int, hist: dict) -> None:
            if epoch % self.checkpoint_every and epoch != epochs:
                return
            blob = {
                "format": CHECKPOINT_FORMAT, "fingerprint": digest, "epoch": epoch, "epochs": epochs,
                "history": _encode(hist),
                "state": {name: _get_state(kinds[name], obj) for name, obj in state.items()},
                "trainer": {"generator": self.generator.get_state(), "rng": json.dumps(self.rng.bit_generator.state),
                            "global": _global_rng_states()},
            }
            atomic_torch_save(blob, path)
            self._written.add(path)

        return _loop(step, epoch_batches, epochs, evaluate, on_epoch, desc, self.progress, start, history,
                     self.log_interval, save if path is not None else None, stop)

    def _load(self, path: Path, digest: str, epochs: int, desc: str) -> dict | None:
        """The checkpoint at ``path`` if it can be resumed (else ``None``, with a warning why)."""
        if not path.exists():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file: train from the start
            log.warning("%s: checkpoint %s is unreadable (%s); training from the start", desc, path, exc)
            return None
        if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
            log.warning("%s: %s is not a checkpoint of this stetho version; training from the start", desc, path)
            return None
        if blob.get("fingerprint") != digest:
            log.warning("%s: checkpoint %s was written with other settings, data or networks; training from "
                        "the start", desc, path)
            return None
        if int(blob["epoch"]) > epochs:
            log.warning("%s: checkpoint %s is after epoch %d, beyond the %d asked for; training from the start",
                        desc, path, blob["epoch"], epochs)
            return None
        return blob


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

    def state_dict(self) -> dict[str, Any]:
        """The best epoch, value and weights (for checkpoints; see :meth:`Trainer.run`)."""
        return {"epoch": self.epoch, "value": self.value, "weights": self._state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = None if state["epoch"] is None else int(state["epoch"])
        self.value = float(state["value"])
        self._state = None if state["weights"] is None else dict(state["weights"])
