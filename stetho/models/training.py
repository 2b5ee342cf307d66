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
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from stetho.errors import ConfigError, StethoError
from stetho.fileio import atomic_write_bytes

log = logging.getLogger(__name__)


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` ... as
    ``torch.device`` reads them, checked here: a CUDA device on a machine (or a torch build)
    without CUDA, or ``cuda:N`` beyond the devices present, is a one-line
    :class:`~stetho.errors.ConfigError` instead of a crash deep inside torch at the first tensor."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise ConfigError(f"--device {device!r} is not a device; expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, " \
                "but no GPU or driver is usable"
            raise ConfigError(f"--device {device} was asked for but CUDA is not available (torch {torch.__version__}, "
                              f"{build}); use --device cpu or auto")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"--device {device} was asked for but this machine has {count} CUDA device(s) "
                              f"(cuda:0 to cuda:{count - 1})")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU ``torch.Generator`` seeded with ``seed``.

    Deprecated inside ``fit``: it reseeds the caller's global RNGs and leaves them changed. Use
    :class:`Trainer` (or :func:`make_generator` and :func:`fork_global_rngs`), which seeds the
    same way but restores the caller's states on exit.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# -- random numbers ----------------------------------------------------------------------------
def make_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (the global RNGs are not touched)."""
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def make_rng(seed: int) -> np.random.Generator:
    """A NumPy ``Generator`` (PCG64) seeded with ``seed`` (the global RNGs are not touched)."""
    return np.random.default_rng(seed)


@contextlib.contextmanager
def torch_fork_rng(seed: int | None = None, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Fork torch's global CPU RNG (and those of ``cuda_devices``), seeded with ``seed`` inside.

    Modules initialise their weights from the global RNG; built inside this block they are the
    same for the same seed, and the caller's RNG state is restored on exit. ``None``: fork without
    seeding (a block that must not consume the caller's random numbers).
    """
    with torch.random.fork_rng(devices=list(cuda_devices)):
        if seed is not None:
            torch.default_generator.manual_seed(seed)  # torch.manual_seed would reseed CUDA too
            for d in cuda_devices:
                torch.cuda.default_generators[d].manual_seed(seed)
        yield


@contextlib.contextmanager
def fork_global_rngs(seed: int, cuda_devices: Sequence[int] = ()) -> Iterator[None]:
    """Inside the block, torch's CPU RNG, NumPy's legacy ``np.random`` and Python's ``random`` are
    seeded with ``seed`` as :func:`seed_everything` seeds them; on exit all three are restored.

    Third-party code that draws from the global RNGs (module initialisation, dropout) is then
    reproducible without changing what the caller draws afterwards. Not thread-safe: another
    thread drawing from the global RNGs meanwhile sees the forked state.
    """
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch_fork_rng(seed, cuda_devices):
            np.random.seed(seed % 2**32)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


# -- threads -------------------------------------------------------------------------------------
def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    """torch intra-op threads for training and scoring when none are asked for.

    ``OMP_NUM_THREADS`` when set; else 1 on up to 2 cores, else ``min(cores // 2, 4)`` (half
    the cores left to other work; not measured). torch's own default, one thread per core, spins
    its OpenMP threads against every other process: on a 2-core machine with one core kept busy
    an AE optimiser step took 1,015 ms with 2 threads and 15.9 ms with 1 (idle: 6.0 vs 7.4 ms;
    README, "Threads"; ``make bench``).
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = available_cores() if cores is None else cores
    return 1 if cores <= 2 else min(cores // 2, 4)


def resolve_threads(threads: int | str | None = None) -> int:
    """``None`` / ``"auto"`` → :func:`default_threads`; a positive integer stays as it is."""
    if threads is None or threads == "auto":
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer or auto, got {threads!r}")
    return threads


def set_threads(threads: int | str | None = None) -> int:
    """Set torch's intra-op threads (:func:`resolve_threads`); returns the previous number."""
    previous = torch.get_num_threads()
    n = resolve_threads(threads)
    if n != previous:
        torch.set_num_threads(n)
    return previous


@contextlib.contextmanager
def use_threads(threads: int | str | None = None) -> Iterator[int]:
    """torch intra-op threads set to :func:`resolve_threads` inside the block, restored after."""
    previous = set_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


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
) -> dict[str, list]:
    history = history if history is not None else {k: [] for k in HISTORY_COLUMNS}
    bar = _Progress(desc, epochs, start_epoch, progress, log_interval)
    warned_empty = False
    first: float | None = None  # the run's first step loss: the scale of a divergence
    try:
        for epoch in range(start_epoch, epochs):
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


# -- checkpoints ---------------------------------------------------------------------------------
CHECKPOINT_FORMAT = 1


def fingerprint(*parts: Any) -> str:
    """A hex digest of ``parts``: hyper-parameters, data, anything that makes a training different.

    Understands ``None``, bools, numbers, strings, paths, mappings (key order ignored),
    sequences, dataclasses (e.g. :class:`~stetho.datasets.clip.Clip`), NumPy arrays and torch
    tensors (by dtype, shape and bytes). Anything else is a ``TypeError`` (its ``repr`` might
    hold a memory address and never match).
    """
    h = hashlib.blake2b(digest_size=16)

    def feed(x: Any) -> None:
        if x is None or isinstance(x, (bool, int, float, str, np.generic)):
            h.update(f"{type(x).__name__}:{x!r};".encode())
        elif isinstance(x, Path):
            h.update(f"path:{x};".encode())
        elif isinstance(x, torch.Tensor):
            feed(x.detach().cpu().numpy())
        elif isinstance(x, np.ndarray):
            a = np.ascontiguousarray(x)
            h.update(f"array:{a.dtype.str}:{a.shape};".encode())
            h.update(a.view(np.uint8).reshape(-1).data if a.dtype != object else repr(a.tolist()).encode())
        elif isinstance(x, Mapping):
            h.update(b"{")
            for k in sorted(x, key=repr):
                feed(k)
                feed(x[k])
            h.update(b"}")
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            h.update(f"{type(x).__name__}(".encode())
            for f in dataclasses.fields(x):
                feed(f.name)
                feed(getattr(x, f.name))
            h.update(b")")
        elif isinstance(x, (list, tuple, set, frozenset)):
            items = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
            h.update(b"[")
            for item in items:
                feed(item)
            h.update(b"]")
        else:
            raise TypeError(f"fingerprint: cannot digest a {type(x).__name__} (give its parameters instead)")

    feed(parts)
    return h.hexdigest()


_fingerprint = fingerprint  # Trainer.run's argument of the same name hides the function there

#: Constructor arguments that change how a training runs, not what it learns: left out of a
#: checkpoint's fingerprint by :func:`training_settings` (a resumed run may change them).
RUN_ONLY_PARAMS = frozenset({"progress", "threads", "device", "checkpoint_every", "resume", "keep_checkpoints"})


def training_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (e.g. ``detector.get_params()``) without :data:`RUN_ONLY_PARAMS`: the part of
    a checkpoint's fingerprint that the hyper-parameters give."""
    return {k: v for k, v in params.items() if k not in RUN_ONLY_PARAMS}


def _encode(x: Any) -> Any:
    """Plain state → what ``torch.load(weights_only=True)`` reads back (NumPy arrays as tensors)."""
    if isinstance(x, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.array(x))}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_encode(v) for v in x)
    if x is None or isinstance(x, (bool, int, float, str, torch.Tensor)):
        return x
    raise TypeError(f"checkpoint state: cannot store a {type(x).__name__} (use tensors, numbers, strings, "
                    "NumPy arrays, and lists or dicts of them)")


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__ndarray__"}:
            return x["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_decode(v) for v in x)
    return x


def _state_kind(name: str, obj: Any) -> str:
    if isinstance(obj, torch.Generator):
        return "torch_generator"
    if isinstance(obj, np.random.Generator):
        return "numpy_generator"
    if isinstance(obj, random.Random):
        return "python_random"
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return "state_dict"
    if callable(getattr(obj, "get_state", None)) and callable(getattr(obj, "set_state", None)):
        return "get_state"
    if isinstance(obj, MutableMapping):
        return "dict"
    raise TypeError(f"checkpoint state '{name}': a {type(obj).__name__} has no state to save (give an object "
                    "with state_dict/load_state_dict or get_state/set_state, a generator, or a dict)")


def _python_state(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _get_state(kind: str, obj: Any) -> Any:
    if kind == "torch_generator":
        return obj.get_state()
    if kind == "numpy_generator":
        return json.dumps(obj.bit_generator.state)  # 128-bit integers: kept exact as JSON text
    if kind == "python_random":
        return _python_state(obj.getstate())
    if kind == "state_dict":
        return obj.state_dict()
    if kind == "get_state":
        return _encode(obj.get_state())
    return _encode(dict(obj))


def _set_state(kind: str, obj: Any, state: Any) -> None:
    if kind == "torch_generator":
        obj.set_state(state)
    elif kind == "numpy_generator":
        obj.bit_generator.state = json.loads(state)
    elif kind == "python_random":
        obj.setstate((state["version"], tuple(state["internal"].tolist()), state["gauss"]))
    elif kind == "state_dict":
        obj.load_state_dict(state)
    elif kind == "get_state":
        obj.set_state(_decode(state))
    else:
        obj.clear()
        obj.update(_decode(state))


def _global_rng_states() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": _python_state(random.getstate()),
    }


def _set_global_rng_states(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss"]))


def _structure(state: Mapping[str, Any], kinds: Mapping[str, str]) -> list:
    """Names, kinds and (for modules) parameter shapes: a checkpoint of another architecture
    never matches."""
    out = []
    for name in sorted(state):
        obj = state[name]
        shapes = ([(k, list(v.shape)) for k, v in obj.state_dict().items()]
                  if isinstance(obj, torch.nn.Module) else None)
        out.append((name, kinds[name], type(obj).__name__, shapes))
    return out


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
    without an exception (``keep_checkpoints=True`` keeps them); after an exception or an
    interruption they stay for the next run to resume from.

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
        """Delete every checkpoint this trainer wrote or resumed from."""
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

        Returns:
            The history, ``{"epoch", "train_loss", "val_loss", ...}``, one entry per epoch
            (those of a resumed checkpoint included).
        """
        if self._stack is None:
            with self:
                return self.run(step, epoch_batches, epochs, evaluate=evaluate, on_epoch=on_epoch, desc=desc,
                                checkpoint=checkpoint, state=state, fingerprint=fingerprint)
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
                     self.log_interval, save if path is not None else None)

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


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` atomically (:func:`stetho.fileio.atomic_write_bytes`:
    a temporary file, fsync, rename): never a half-written model or checkpoint, and a full or
    read-only disk is a one-line :class:`~stetho.errors.StorageError` ("disk full: ...") with
    the previous file left as it was.

    The object is serialised in memory first (a model file is a few MB): ``torch.save`` to a
    file name writes from C++, where a full disk surfaces as a ``RuntimeError`` without its errno.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
