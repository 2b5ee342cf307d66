"""Run folders that are never half-written, never mixed and never lost.

* **Lock.** Every ``stetho train`` / ``stetho test`` takes an exclusive lock on its run folder
  (``fcntl.flock`` on ``.<RUN>.lock`` beside the folder; the kernel drops it when the process dies,
  even by ``kill -9``). A second process fails at once with :class:`~stetho.errors.RunLockedError`
  naming the holder (pid, host, command, start time).
* **Training is staged.** A training writes into ``.<RUN>.partial/`` beside ``RUN/`` and is swapped
  in only when complete (:func:`swap_in`: two renames that :func:`recover` finishes after a crash). ``--overwrite`` therefore
  never deletes the finished run before its replacement is complete; a killed training leaves the
  finished run as it was and its own progress in the staging folder, where the same command resumes it.
* **A test is one transaction.** Its results are written into ``RUN/.test.partial/``; when they
  are complete a marker (``.test.partial/COMMIT``) is written and they replace the previous test's
  (:func:`commit_test`). A test killed before the marker leaves the previous results as they were;
  one killed after it is rolled forward by the next command that locks the run (:func:`recover_run`).
* **Models are pinned.** ``RUN/models.json`` records each model file of the run with its SHA-256;
  :func:`run_models` loads exactly those files and refuses changed ones.

Lowest user: :mod:`stetho.pipeline` (this module imports no model, feature or dataset code).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stetho.errors import ConfigError, RunLockedError, StethoError
from stetho.fileio import atomic_write_text, file_sha256, make_dirs, remove_stale_temp_files, storage_error

log = logging.getLogger(__name__)

MODELS_INDEX = "models.json"
TEST_STAGING = ".test.partial"
#: Files of a test outside ``results/`` that it replaces (``summary.csv`` last: its presence says
#: the test's metrics are complete).
TEST_FILES = ("test_files.csv", "skipped.csv", "test_thresholds.csv", "summary.csv")
_COMMIT_MARK = "COMMIT"


#: Hex digits of a run id (the SHA-256 of the run's ``models.json``, which pins every model file).
RUN_ID_LENGTH = 12


def run_id(run_dir: str | Path) -> str:
    """The run's id: the first :data:`RUN_ID_LENGTH` hex digits of the SHA-256 of its
    ``models.json`` (which records every model file's SHA-256): the same models give the same id.
    The scoring service stores it with every verdict; an export records it."""
    import hashlib

    return hashlib.sha256((Path(run_dir) / MODELS_INDEX).read_bytes()).hexdigest()[:RUN_ID_LENGTH]


def trained_version(run_dir: str | Path) -> str | None:
    """The stetho version in ``run_dir/versions.json`` that trained the run, or ``None`` when it
    is missing or damaged."""
    try:
        version = json.loads((Path(run_dir) / "versions.json").read_text(encoding="utf-8")).get("stetho")
    except (OSError, ValueError, AttributeError):
        return None
    return str(version) if version is not None else None


def lock_file(run_dir: Path) -> Path:
    """The lock of ``run_dir``: ``.<name>.lock`` beside it (it must outlive swaps of the folder).
    A symlinked run folder is locked, staged and swapped where it really is."""
    run_dir = Path(os.path.realpath(run_dir))
    return run_dir.parent / f".{run_dir.name}.lock"


def staging_dir(run_dir: Path) -> Path:
    """Where a training of ``run_dir`` is written until it is complete: ``.<name>.partial``."""
    run_dir = Path(os.path.realpath(run_dir))
    return run_dir.parent / f".{run_dir.name}.partial"


def _old_dir(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _holder_text(info: dict[str, Any]) -> str:
    if not info:
        return "another stetho process (it did not say which)"
    return (f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')}, since "
            f"{info.get('started')})")


@contextlib.contextmanager
def run_lock(run_dir: str | Path, purpose: str) -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` for ``purpose`` (e.g. "train"), or fail at once.

    Raises:
        RunLockedError: another process holds it; the message names the holder.
        StorageError: the lock cannot be created (read-only parent folder, ...).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks here
        log.debug("no fcntl: %s is not locked", run_dir)
        yield
        return
    run_dir = Path(os.path.realpath(run_dir))
    path = lock_file(run_dir)
    if run_dir.parent.exists() and not run_dir.parent.is_dir():
        raise ConfigError(f"{run_dir}: {run_dir.parent} is a file, not a folder")
    make_dirs(run_dir.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise storage_error(exc, path, "create the lock") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
            except (ValueError, OSError):
                info = {}
            raise RunLockedError(
                f"{run_dir} is in use by {_holder_text(info)}; wait for it to finish, or choose another "
                "folder (two runs in one folder would mix their files)") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                "command": " ".join(["stetho", *sys.argv[1:]]) if Path(sys.argv[0]).name == "stetho"
                else f"stetho {purpose} (Python API)",
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock (the file stays: removing it would race with a waiter)


# -- swapping folders -----------------------------------------------------------------------------
def swap_in(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` in place of ``target`` (which may not exist); the old
    content of ``target`` is removed afterwards.

    Two renames (``target`` -> ``.<name>.old``, ``new`` -> ``target``): every state a crash can
    leave is unambiguous, and :func:`recover` finishes the swap (``new`` is complete) — an atomic
    exchange would leave the old run under the staging name, indistinguishable from a new one."""
    new, target = Path(new), Path(os.path.realpath(target))
    old = _old_dir(target)
    try:
        if old.exists():
            shutil.rmtree(old)
        if target.exists():
            _move(target, old)
        _move(new, target)  # a crash before this line: recover() finishes the swap
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise storage_error(exc, target, "replace") from None


def recover(target: Path) -> None:
    """Finish or undo a :func:`swap_in` of the run folder ``target`` that a crash interrupted;
    call while holding the run's lock."""
    target = Path(os.path.realpath(target))
    old = _old_dir(target)
    if not old.exists():
        return
    if not target.exists():
        stage = staging_dir(target)
        if _training_complete(stage):
            _move(stage, target)  # the complete new run was on its way in: finish the swap
            log.warning("%s: finished the replacement of the run that a crash interrupted", target)
        else:
            _move(old, target)  # put the previous one back
            log.warning("%s: restored the previous run after an interrupted replacement", target)
    shutil.rmtree(old, ignore_errors=True)


def _training_complete(run_dir: Path) -> bool:
    try:
        return "train" in json.loads((run_dir / "timings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _move(src: Path, dst: Path) -> None:
    """``os.replace`` (one step of a commit; a crash between two steps is recovered)."""
    os.replace(src, dst)


def commit_test(run_dir: Path) -> None:
    """Replace the previous test's results with the complete ones staged in
    ``RUN/.test.partial/``. The marker written first makes the rest redoable: a crash in the
    middle is rolled forward by :func:`recover_run`, never left half-way."""
    stage = run_dir / TEST_STAGING
    atomic_write_text(stage / _COMMIT_MARK, "complete\n")
    _roll_forward(run_dir, stage)


def _roll_forward(run_dir: Path, stage: Path) -> None:
    """The steps of a test commit; each is idempotent, so a crash at any point can be redone."""
    try:
        for name in ("summary.csv", "report.html"):  # they describe the previous test
            if (stage / _COMMIT_MARK).exists():
                (run_dir / name).unlink(missing_ok=True)
        results, old = run_dir / "results", run_dir / ".results.old"
        if (stage / "results").exists():
            if results.exists() and not old.exists():
                _move(results, old)
            _move(stage / "results", results)
        for name in TEST_FILES:
            if (stage / name).exists():
                _move(stage / name, run_dir / name)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        raise storage_error(exc, run_dir, "update") from None


def recover_run(run_dir: Path) -> None:
    """Bring ``run_dir`` to a consistent state after a crash (hold its lock): finish or undo an
    interrupted replacement of the run, roll a committed test forward, and remove leftovers of
    killed writers (temporary files, a test that never committed)."""
    run_dir = Path(run_dir)
    recover(run_dir)
    if not run_dir.is_dir():
        return
    stage = run_dir / TEST_STAGING
    if (stage / _COMMIT_MARK).exists():
        _roll_forward(run_dir, stage)
        log.warning("%s: finished committing the results of a test that a crash interrupted", run_dir)
    elif (run_dir / ".results.old").exists() and not (run_dir / "results").exists():
        _move(run_dir / ".results.old", run_dir / "results")
    removed = remove_stale_temp_files(run_dir)
    if stage.exists():
        shutil.rmtree(stage, ignore_errors=True)
        removed.append(stage)
    if removed:
        log.info("%s: removed %d leftover(s) of an interrupted run (%s)", run_dir, len(removed),
                 ", ".join(p.name for p in removed[:3]) + (" ..." if len(removed) > 3 else ""))


def check_out_folder(run_dir: Path) -> None:
    """``--out`` must be a folder stetho may write a run into: absent, empty, or a run folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder; choose a folder for the run")
    if run_dir.is_dir() and not (run_dir / "config.yaml").is_file() and any(run_dir.iterdir()):
        raise ConfigError(f"--out {run_dir} is a folder that holds other files and no stetho run; stetho only "
                          "replaces its own run folders: choose a new or empty folder")


# -- model index ----------------------------------------------------------------------------------
def write_models_index(run_dir: Path, models: dict[str, list[str]]) -> Path:
    """Record the run's model files (``name -> machine types``) with their SHA-256."""
    index = {"models": {f"{name}.pt": {"sha256": file_sha256(run_dir / "models" / f"{name}.pt"), "machines": machines}
                        for name, machines in sorted(models.items())}}
    return atomic_write_text(run_dir / MODELS_INDEX, json.dumps(index, indent=2) + "\n")


def run_models(run_dir: Path) -> list[Path]:
    """Exactly the model files the run recorded, each checked against its SHA-256.

    Raises:
        StethoError: no ``models.json`` (not a finished run, or one from stetho < 0.3), a recorded
            file missing, or one that differs from the file training wrote.
    """
    run_dir = Path(run_dir)
    index_path = run_dir / MODELS_INDEX
    if not index_path.is_file():
        if list((run_dir / "models").glob("*.pt")):
            raise StethoError(f"{run_dir}: no {MODELS_INDEX} (the list of the run's models and their checksums): "
                              "an unfinished run, or one from stetho < 0.3; re-train it")
        raise StethoError(f"{run_dir}: no trained models (no {MODELS_INDEX}); train with `stetho train`")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))["models"]
        entries = {str(k): str(v["sha256"]) for k, v in index.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StethoError(f"{index_path}: damaged ({type(exc).__name__}: {exc}); re-train the run") from None
    paths = []
    for name, digest in sorted(entries.items()):
        if Path(name).name != name or not name.endswith(".pt") or name.startswith("."):
            raise StethoError(f"{index_path}: {name!r} is not a model file name of a run")
        path = run_dir / "models" / name
        if not path.is_file():
            raise StethoError(f"{path}: missing (the run trained it; it was moved or deleted)")
        if file_sha256(path) != digest:
            raise StethoError(f"{path}: differs from the file this run trained (SHA-256 mismatch): it was replaced "
                              "or damaged; re-train, or restore the original file")
        paths.append(path)
    strays = sorted(p.name for p in (run_dir / "models").glob("*.pt") if p.name not in entries)
    if strays:
        log.info("%s: ignored %s (not models of this run)", run_dir / "models", ", ".join(strays))
    return paths
