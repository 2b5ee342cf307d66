"""``stetho run RECIPE --engine ray``: the runs of a recipe as Ray tasks, on this machine or a cluster.

A *cell* is one (variant, seed) run of a comparison (or the one run of a recipe without
``compare:``). For a model that trains one detector per machine type (not ``joint``, not
transductive), each machine type of a cell is trained by its own task (:func:`train_part`,
an ordinary training with ``machines: [type]`` into ``.<run>.parts/<type>/`` beside the run);
a last task per cell (:func:`finish_cell`) puts the parts' models into the run's staging folder
and finishes the training with :func:`stetho.pipeline.training.train` itself — the path that
resumes a killed training and keeps the models finished before it — then tests the run. A
detector of one machine type does not depend on the others (same clips, features and seed), so
every file the run writes is the file the in-process engine writes, byte for byte. Joint and
transductive models train and test in one task per cell.

Every task asks Ray for the recipe's ``resources`` (``{cpus: 1, gpus: 0}``), runs torch with
that many threads, and is retried by Ray (:data:`MAX_RETRIES`) when its worker process dies.
Run folders are staged and swapped in when complete (:mod:`stetho.run_folder`), so a killed
task leaves no half-written run: the retry resumes or redoes it. Each task's start and end are
appended to ``OUT/ray_tasks.log`` (time, event, task, pid, host): the progress of a long grid,
and the record of retries.

Paths are made absolute before the tasks are sent: on a cluster, the data, the output folder
and the feature cache must be at the same path on every machine (a shared file system).

:func:`submit_cell` is the unit to build on (e.g. a hyper-parameter search): it submits one
cell's tasks and returns the reference of its :class:`~stetho.pipeline.testing.TestOutcome`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from stetho.config import dump, resolve
from stetho.errors import ConfigError, StethoError
from stetho.fileio import make_dirs
from stetho.pipeline.common import load_run_config, make_detector, scan_split
from stetho.pipeline.runs import Cell
from stetho.pipeline.testing import TestOutcome, test
from stetho.pipeline.training import train
from stetho.run_folder import recover_run, run_lock, staging_dir

log = logging.getLogger("stetho.pipeline")

#: How often Ray runs a task again whose worker process died (killed, out of memory, node lost).
MAX_RETRIES = 3
#: The task log of a Ray run, in its output folder.
JOURNAL = "ray_tasks.log"


def parts_dir(run_dir: Path) -> Path:
    """Where the per-machine-type trainings of ``run_dir`` go: ``.<name>.parts`` beside it."""
    run_dir = Path(os.path.realpath(run_dir))
    return run_dir.parent / f".{run_dir.name}.parts"


def machine_parts(cfg: Mapping[str, Any]) -> list[str] | None:
    """The machine types of ``cfg`` trained as tasks of their own, or ``None`` when the model
    trains one detector for all types (``joint``), lets the test clips shape its training
    (transductive: they are the test clips of every type), or there is one type only.
    Reads file names only (no audio)."""
    det = make_detector(cfg)
    if det.joint or getattr(det, "transductive", False):
        return None
    scan, _ = scan_split(cfg, cfg["data"], "train", cfg["machines"])
    machines = list(cfg["machines"] or sorted({c.machine for c in scan.clips}))
    return machines if len(machines) > 1 else None


# -- what runs in a worker ------------------------------------------------------------------------
def _journal(journal: Path | None, event: str, task: str) -> None:
    """Append one line (``time event task pid host``) to the task log; one ``write`` of one
    short line to a file opened with ``O_APPEND``, so concurrent tasks never interleave."""
    if journal is None:
        return
    line = "\t".join([_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), event, task,
                      str(os.getpid()), socket.gethostname()]) + "\n"
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _task(cfg: Mapping[str, Any], journal: Path | None, name: str) -> Iterator[None]:
    """Run a task's body with torch threads = the CPUs it was given, logged in the journal."""
    import torch

    cpus = max(1, int(cfg["resources"]["cpus"]))
    # "auto" threads read OMP_NUM_THREADS (stetho.models.runtime.default_threads): the task's share
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(cpus)
    torch.set_num_threads(cpus)
    _journal(journal, "start", name)
    try:
        yield
    except BaseException:
        _journal(journal, "failed", name)
        raise
    _journal(journal, "done", name)


def train_part(cfg: Mapping[str, Any], machine: str, journal: Path | None = None) -> str:
    """Train the detector of one machine type of a cell into ``.<run>.parts/<machine>/`` (an
    ordinary, staged run folder; a retried task resumes it). Returns ``machine``."""
    run_dir = Path(cfg["out"])
    with _task(cfg, journal, f"train {_cell_name(run_dir)} {machine}"):
        train({**cfg, "machines": [machine], "out": str(parts_dir(run_dir) / machine), "overwrite": True})
    return machine


def finish_cell(cfg: Mapping[str, Any], modes: Sequence[str], machines: Sequence[str] | None,
                journal: Path | None = None, *parts: str) -> TestOutcome:
    """Train the cell's run (from the models of its ``parts`` when ``machines`` is given), test
    it in ``modes`` and remove the parts. ``parts`` are the results of :func:`train_part`
    (passed so that Ray starts this task when they are done)."""
    run_dir = Path(cfg["out"])
    with _task(cfg, journal, f"test {_cell_name(run_dir)}"):
        if machines:
            _stage_parts(cfg, run_dir, machines)
        train(cfg)  # with staged parts: resumes, keeping their models
        outcome = test(run_dir, score=list(modes), progress=False)
        shutil.rmtree(parts_dir(run_dir), ignore_errors=True)
    return outcome


def _stage_parts(cfg: Mapping[str, Any], run_dir: Path, machines: Sequence[str]) -> None:
    """Put the trained models of the parts into the run's staging folder with the config the
    whole training writes, so that :func:`train` resumes it: it reads the training set, keeps
    each model (``Detector.load``) and writes every other file of the run as it always does."""
    parts = parts_dir(run_dir)
    with run_lock(run_dir, "train"):
        recover_run(run_dir)
        stage = staging_dir(run_dir)
        if stage.exists():
            shutil.rmtree(stage)  # an earlier attempt's: rebuilt from the parts
        make_dirs(stage / "models")
        for m in machines:
            src = parts / m / "models" / f"{m}.pt"
            if not src.is_file():
                raise StethoError(f"{src}: missing (the training task of machine type {m} did not finish)")
            shutil.copyfile(src, stage / "models" / f"{m}.pt")
        done = load_run_config(parts / machines[0])
        full = {**done, "machines": cfg["machines"], "out": str(run_dir)}
        (stage / "config.yaml").write_text(dump(full), encoding="utf-8")  # last: it marks the stage resumable


def _cell_name(run_dir: Path) -> str:
    return f"{run_dir.parent.name}/{run_dir.name}"


# -- the driver -----------------------------------------------------------------------------------
def absolute_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``cfg`` with its paths absolute (a worker's working folder is not the driver's) and
    progress bars off (tasks run side by side)."""
    out = resolve(cfg)
    for key in ("data", "out", "cache_dir"):
        if out[key] is not None:
            out[key] = str(Path(out[key]).absolute())
    if out["test"]["data"] is not None:
        out["test"] = {**out["test"], "data": str(Path(out["test"]["data"]).absolute())}
    out["progress"] = False
    return out


_REMOTE: dict[str, Any] = {}


def _remote(fn: Any) -> Any:
    """``ray.remote(fn)``, made once per process."""
    import ray

    if fn.__name__ not in _REMOTE:
        _REMOTE[fn.__name__] = ray.remote(fn)
    return _REMOTE[fn.__name__]


def submit_cell(cell: Cell, journal: Path | None = None) -> Any:
    """Submit the tasks of one cell to the connected Ray instance; returns the ``ObjectRef`` of
    its :class:`TestOutcome` (``ray.get`` it). Each task asks for ``cfg["resources"]`` and is
    retried :data:`MAX_RETRIES` times if its worker dies (a Python error is not retried: it
    would fail again)."""
    cfg = absolute_config(cell.cfg)
    res = cfg["resources"]
    opts = {"num_cpus": res["cpus"], "num_gpus": res["gpus"], "max_retries": MAX_RETRIES}
    machines = machine_parts(cfg)
    parts = [_remote(train_part).options(name=f"train {cell.name} {m}", **opts).remote(cfg, m, journal)
             for m in machines or []]
    return _remote(finish_cell).options(name=f"test {cell.name}", **opts).remote(
        cfg, list(cell.modes), machines, journal, *parts)


@contextlib.contextmanager
def connected(address: str | None = None, num_cpus: int | None = None) -> Iterator[None]:
    """Ray, connected: the instance this process already uses, the cluster at ``address``
    (``auto``: the one ``ray start`` started on this machine), or a new local instance of
    ``num_cpus`` CPUs (default: the cores this process may use) on 127.0.0.1 only, without
    dashboard or usage reporting, shut down on exit."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs the ray package: pip install 'stetho[ray]'") from None
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report sent anywhere
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        from stetho.models.runtime import available_cores

        with _loopback_only():
            ray.init(num_cpus=num_cpus or available_cores(), include_dashboard=False,
                     _node_ip_address="127.0.0.1", **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray's own switch for a single-machine node (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read
    once at import): without it Ray turns ``_node_ip_address="127.0.0.1"`` into the machine's
    network address, and its servers are reached through that."""
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray without it: its default address
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def run_cells(cells: Sequence[Cell], journal: Path, address: str | None = None,
              num_cpus: int | None = None) -> dict[str, TestOutcome]:
    """Run ``cells`` on Ray (see :func:`connected`) and return their test outcomes by name;
    each task's start and end are appended to ``journal`` (:data:`JOURNAL` in the output folder).

    Raises:
        ConfigError: a task asks for more CPUs or GPUs than the cluster has (it would wait forever).
        StethoError: the error of the first failed cell, as the in-process engine raises it.
    """
    import ray

    if not cells:
        return {}
    journal = Path(journal).absolute()
    make_dirs(journal.parent)
    with connected(address, num_cpus):
        have = ray.cluster_resources()
        for cell in cells:
            res = cell.cfg["resources"]
            for key, name in (("cpus", "CPU"), ("gpus", "GPU")):
                if res[key] > have.get(name, 0):
                    raise ConfigError(f"{cell.name}: resources.{key} is {res[key]} but the Ray cluster has "
                                      f"{have.get(name, 0):g} {name}(s); lower it or add machines")
        refs = {submit_cell(cell, journal): cell for cell in cells}
        log.info("ray: %d run(s) submitted to a cluster of %g CPU(s); tasks logged in %s", len(refs),
                 have.get("CPU", 0), journal)
        outcomes: dict[str, TestOutcome] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cell = refs[ready[0]]
            try:
                outcomes[cell.name] = ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                for ref in pending:
                    ray.cancel(ref)
                cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else None
                if isinstance(cause, StethoError):
                    raise cause from None
                raise StethoError(f"{cell.name}: the Ray task failed: {cause or exc}") from None
            log.info("[%d/%d] %s done", len(outcomes), len(refs), cell.name)
    return outcomes
