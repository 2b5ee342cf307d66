"""Where a training runs: the device, torch's intra-op threads and the random number generators.

:class:`~stetho.models.training.Trainer` uses these for every ``fit``; scoring uses
:func:`use_threads` and :func:`resolve_device`. All names are importable from
:mod:`stetho.models.training` too.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from stetho.errors import ConfigError


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
