"""``train``: one detector per machine type (or one for all), staged beside the run folder and
swapped in when complete (:mod:`stetho.run_folder`)."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stetho.config import dump, resolve
from stetho.datasets import Clip, check_name
from stetho.errors import ConfigError, DatasetError, StethoError
from stetho.features import take
from stetho.fileio import make_dirs, remove_stale_temp_files
from stetho.models import Detector
from stetho.models.base import FitContext
from stetho.outputs import write_csv
from stetho.outputs.run_record import write_run_record
from stetho.fileio import atomic_write_text
from stetho.pipeline.common import (
    TRAIN_FILES_HEADER, features_of, load_run_config, make_detector, missing_data_message, record_timings,
    scan_split, versions, write_skipped,
)
from stetho.run_folder import check_out_folder, recover_run, run_lock, staging_dir, swap_in, write_models_index

log = logging.getLogger("stetho.pipeline")


def train(cfg: Mapping[str, Any]) -> Path:
    """Train one detector per machine type on the ``train`` split of ``cfg["data"]``.

    All training audio is read and validated before any model is trained; every problem is
    reported at once (or, with ``skip_bad``, the files are left out and listed in skipped.csv).

    The run is written into a staging folder beside ``out`` and swapped in only when complete
    (see :mod:`stetho.run_folder`): ``overwrite`` never loses the finished run to a killed
    training, and a second process training into the same folder fails at once (lock).

    Returns:
        The run folder.
    """
    cfg = resolve(cfg)
    if not cfg["data"]:
        raise ConfigError(missing_data_message(cfg))
    if not cfg["out"]:
        raise ConfigError("no run folder given (--out RUN or `out:` in the recipe)")
    run_dir = Path(cfg["out"])
    check_out_folder(run_dir)
    probe = make_detector(cfg)  # checks model params before any work
    with run_lock(run_dir, "train"):
        recover_run(run_dir)
        return _train_locked(cfg, run_dir, probe)


@dataclass
class _TrainingSet:
    """The training clips as read: features, native sample rates, files left out."""

    clips: list[Clip]
    feats: Sequence[np.ndarray]  # a FeatureList (on disk) when the feature cache is on
    rates: list[int]
    skipped: list[tuple[Path, str]]
    dataset: str
    features_s: float


def _train_locked(cfg: dict[str, Any], run_dir: Path, probe: Detector) -> Path:
    t_start = time.perf_counter()
    if _train_finished(run_dir) and not cfg["overwrite"]:
        raise ConfigError(f"{run_dir} already holds a run; choose another --out or pass --overwrite")
    if (run_dir / "config.yaml").is_file() and not _train_finished(run_dir) and not cfg["overwrite"]:
        raise ConfigError(f"{run_dir} holds an unfinished run of an older stetho (trained in place); pass "
                          "--overwrite to replace it")
    data = _read_training_set(cfg, probe)
    # The layout found is recorded, so `stetho test` reads the test split the same way.
    cfg = {**cfg, "data": str(Path(cfg["data"]).resolve()), "out": str(run_dir), "dataset": data.dataset}
    stage, resuming = _open_stage(cfg, run_dir)
    _write_training_files(cfg, stage, data)
    fit_s, trained = _fit_models(cfg, stage, probe, data, resuming)
    write_models_index(stage, trained)
    record_timings(stage, "train", {"seconds": time.perf_counter() - t_start, "features_seconds": data.features_s,
                                    "fit_seconds": fit_s, "clips": len(data.clips)}, fresh=True)
    swap_in(stage, run_dir)
    return run_dir


def _read_training_set(cfg: Mapping[str, Any], probe: Detector) -> _TrainingSet:
    """Scan the ``train`` split and compute the features of every clip the detector trains on."""
    scan, skipped = scan_split(cfg, cfg["data"], "train", cfg["machines"])
    clips = scan.clips
    if not probe.uses_validation and any(c.is_validation for c in clips):
        n = sum(c.is_validation for c in clips)
        log.info("%d validation clip(s) left out: model '%s' does not select epochs on validation data",
                 n, probe.name)
        clips = [c for c in clips if not c.is_validation]
    if not clips:
        raise DatasetError(f"{scan.root}: no training clips found")
    t0 = time.perf_counter()
    rates: list[int] = []
    clips, feats, bad = features_of(cfg, probe, clips, "train features", rates)
    features_s = time.perf_counter() - t0
    log.info("features of %d training clips ready in %.1f s", len(clips), features_s)
    wanted = cfg["machines"] or sorted({c.machine for c in clips})
    empty = [m for m in wanted if not any(c.machine == m for c in clips)]
    if empty:
        raise DatasetError(f"{cfg['data']}: no usable training clips for machine type(s) {', '.join(empty)}")
    return _TrainingSet(clips, feats, rates, skipped + bad, scan.dataset.split(":")[0], features_s)


def _open_stage(cfg: Mapping[str, Any], run_dir: Path) -> tuple[Path, bool]:
    """The staging folder of ``run_dir`` and whether it holds an unfinished training of the same
    settings to resume (one of other settings is replaced with ``overwrite``, else refused)."""
    stage = staging_dir(run_dir)
    resuming = (stage / "config.yaml").exists()
    if resuming:
        # The same command again after a kill: continue from the checkpoints in the staging folder.
        try:
            _check_same_training(stage, cfg, run_dir)
        except ConfigError:
            if not cfg["overwrite"]:
                raise
            resuming = False
        else:
            log.info("%s holds an unfinished training of the same settings: resuming it", run_dir)
    if not resuming and stage.exists():
        shutil.rmtree(stage)
    make_dirs(stage)
    remove_stale_temp_files(stage)
    return stage, resuming


def _write_training_files(cfg: Mapping[str, Any], stage: Path, data: _TrainingSet) -> None:
    """config.yaml, versions.json, train_files.csv and skipped.csv of the staged run."""
    atomic_write_text(stage / "config.yaml", dump(cfg))
    atomic_write_text(stage / "versions.json", json.dumps(versions(cfg), indent=2) + "\n")
    write_csv(stage / "train_files.csv",
              ([str(c.path), c.machine, c.section, c.domain or "", c.label,
                "validation" if c.is_validation else "train", r] for c, r in zip(data.clips, data.rates)),
              header=TRAIN_FILES_HEADER)
    if len(set(data.rates)) > 1:
        log.warning("training clips have several sample rates (%s): each is resampled to the features' rate, "
                    "but bands missing from the lower-rate recordings make them differ",
                    ", ".join(f"{n} at {r} Hz" for r, n in sorted(Counter(data.rates).items())))
    write_skipped(stage, "train", data.skipped)


def _fit_models(cfg: Mapping[str, Any], stage: Path, probe: Detector, data: _TrainingSet,
                resuming: bool) -> tuple[dict[str, float], dict[str, list[str]]]:
    """Fit one model per machine type (or one for all, for joint detectors) and save it; a model
    saved before an interruption is kept. Returns the seconds and machine types of each model."""
    clips, feats = data.clips, data.feats
    groups = {"all": list(range(len(clips)))} if probe.joint else {
        m: [i for i, c in enumerate(clips) if c.machine == m] for m in sorted({c.machine for c in clips})}
    fit_s: dict[str, float] = {}
    trained: dict[str, list[str]] = {}
    fitted: dict[str, Detector] = {}
    for name, idx in groups.items():
        t0 = time.perf_counter()
        # Validation clips (detectors that choose their best epoch on them) reach fit apart.
        train_idx = [i for i in idx if not clips[i].is_validation]
        val_idx = [i for i in idx if clips[i].is_validation]
        model_file = _model_file(stage, name)
        if resuming and model_file.is_file():
            det = Detector.load(model_file)  # finished before the interruption
            log.info("%s: trained before the interruption, kept (%s)", name, model_file)
        else:
            det = make_detector(cfg)
            context = _fit_context(cfg, det, stage, [clips[i] for i in val_idx], take(feats, val_idx))
            det.fit([clips[i] for i in train_idx], take(feats, train_idx), context)
            det.save(model_file)
        trained[name], fitted[name] = list(det.machines_), det
        fit_s[name] = time.perf_counter() - t0
        _log_model(stage, name, det, [clips[i] for i in train_idx], t0)
    write_run_record(stage, fitted)  # what `stetho report` draws, in plain files (no torch there)
    return fit_s, trained


def _log_model(stage: Path, name: str, det: Detector, clips: list[Clip], t0: float) -> None:
    """Write the model's training histories and log its loss and thresholds."""
    for part, table in det.histories().items():
        write_csv(stage / f"history_{name}{'_' + part if part else ''}.csv", zip(*table.values()),
                  header=list(table))
    hist = det.history_
    val = hist["val_loss"][-1] if hist["val_loss"] else float("nan")
    loss = hist["train_loss"][-1] if hist["train_loss"] else float("nan")
    target = sum(c.domain == "target" for c in clips)
    if hist["epoch"]:  # no "(val nan)" for models without validation loss
        log.info("%s: %d clips (%d target), %d epochs in %.1f s, loss %.4g%s", name, len(clips), target,
                 len(hist["epoch"]), time.perf_counter() - t0, loss, f" (val {val:.4g})" if np.isfinite(val) else "")
    else:  # a model without a training loop (stats): no epochs, no loss
        log.info("%s: %d clips (%d target), fitted in %.1f s", name, len(clips), target, time.perf_counter() - t0)
    for m in det.machines_:
        log.info("  %s: threshold %s", m, ", ".join(f"{mode} {det.threshold_for(mode, m):.4g}"
                                                   for mode in det.score_modes))


def _model_file(run_dir: Path, name: str) -> Path:
    """``RUN/models/<name>.pt``; ``name`` (a machine type, or ``all``) was validated where the
    data entered, and is checked again here so no name can ever point outside the run folder."""
    check_name(name, "machine type", "model file name")
    return run_dir / "models" / f"{name}.pt"


#: Config keys that change neither the training nor its result (a rerun may differ in them).
_RUNTIME_KEYS = ("out", "overwrite", "progress", "cache", "cache_dir", "device", "threads", "test", "toy",
                 "compare", "formula")


def _train_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a completed training (``timings.json`` is written last)."""
    path = run_dir / "timings.json"
    if not path.is_file():
        return False
    try:
        return "train" in json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return False


def _check_same_training(stage: Path, cfg: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse to resume an unfinished run of other settings (data, model, parameters, seed ...)."""
    try:
        old = load_run_config(stage)
    except StethoError as exc:
        raise ConfigError(f"{run_dir} holds an unfinished run that cannot be read ({exc}); pass --overwrite "
                          "to replace it") from None
    new = resolve(cfg)
    differ = sorted(k for k in set(old) | set(new) if k not in _RUNTIME_KEYS and old.get(k) != new.get(k))
    if differ:
        raise ConfigError(f"{run_dir} holds an unfinished run with other settings ({', '.join(differ)} differ); "
                          "run the same command to resume it, or pass --overwrite to replace it")


def _fit_context(cfg: Mapping[str, Any], det: Detector, run_dir: Path, vclips: list[Clip],
                 vfeats: list[np.ndarray]) -> FitContext:
    """What ``fit`` gets beyond the training clips: a work dir inside the run folder
    (checkpoints, pseudo-labels), the validation clips of detectors that choose their best
    epoch on them, and the test clips for transductive methods."""
    unlabeled = None
    if getattr(det, "transductive", False):
        # The seed's transductive pseudo-labelling lets the test clips shape the clustering.
        scan, _ = scan_split(cfg, cfg["data"], "test", cfg["machines"])
        clips, feats, _ = features_of({**cfg, "skip_bad": True}, det, scan.clips, "test features (transductive)")
        unlabeled = (clips, feats)
    validation = (vclips, vfeats) if det.uses_validation and vclips else None
    return FitContext(work_dir=run_dir / "work", unlabeled=unlabeled, validation=validation)

