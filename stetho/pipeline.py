"""Train → test → evaluate, as the CLI and the Python API run it.

A run folder (``RUN/``) holds everything a run produced::

    config.yaml          resolved configuration (data root, model, params, seed, ...)
    versions.json        stetho / Python / library versions, device, start time
    train_files.csv      the training files in the (sorted) order used, with their role
                         (train, or validation for detectors that pick their best epoch)
    skipped.csv          files left out with --skip-bad, with the reason (header only if none)
    models/<machine>.pt  one trained detector per machine type (``all.pt`` for joint detectors)
    work/                checkpoints of an unfinished training (resumed by the same command)
    history_<machine>[_<part>].csv   training / validation loss per epoch (parts: CANDE-CP's
                         predictor ...)
    results/<mode>/      anomaly_score_* / decision_result_* per machine and section,
                         result_<machine>.csv, summary.csv and sections.csv (AUC, pAUC, PR-AUC
                         per machine type and section) when test labels are known
    results/<table>.csv  what a detector reports beyond scores (CANDE-CP: context_stream.csv,
                         context_accuracy.csv)
    results/<name>.npz   per-clip arrays a detector reports (discriminative: test_embeddings.npz,
                         the test clips' embeddings of the last ensemble epoch, with name, machine,
                         section, domain and label (-1 unknown) of each clip)
    summary.csv          per score mode: formula, official score (empty when partial), status
                         (official / partial), partial score, missing (what an official score
                         lacks, "; "-separated), machines
    test_files.csv       the test files of the last `stetho test` with machine, section, domain and
                         label (the ground truth of the report's curves and histograms)
    timings.json         wall-clock seconds of training (features, each model) and of the last test
    report.html          `stetho report` / `stetho run`: tables and figures (PNGs beside the CSVs)
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import os
import platform
import shutil
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stetho
from stetho.config import dump, resolve
from stetho.datasets import (
    Clip, Scan, check_name, get_layout, label_clips, official_formula, read_ground_truth, scan_dataset,
    write_manifest,
)
from stetho.errors import ConfigError, DatasetError, StethoError
from stetho.fileio import atomic_write_bytes, make_dirs, remove_stale_temp_files
from stetho.features import FeatureCache, default_cache_dir
from stetho.metrics import FORMULAS, EvaluationResult, evaluate
from stetho.models import Detector, get_model
from stetho.models.base import FitContext
from stetho.models.training import resolve_device
from stetho.outputs import (
    read_submission, write_csv, write_dict_csv, write_results, write_section_metrics, write_submission,
)
from stetho.outputs.dcase import score_cells
from stetho.outputs.compare import Comparison, compare_runs
from stetho.outputs.io import atomic_write_text
from stetho.outputs.summary import RunsSummary, summarize_runs
from stetho.run_folder import (
    TEST_STAGING, check_out_folder, commit_test, recover_run, run_lock, run_models, staging_dir, swap_in,
    write_models_index,
)

log = logging.getLogger(__name__)

SKIPPED_HEADER = ("file", "stage", "reason")
TRAIN_FILES_HEADER = ("file", "machine", "section", "domain", "label", "role", "sample_rate")
TEST_FILES_HEADER = ("name", "machine", "section", "domain", "label", "file", "sample_rate", "note")


@dataclass
class TestOutcome:
    """What :func:`test` produced: the results folder and evaluation of each score mode."""

    run_dir: Path
    folders: dict[str, Path] = field(default_factory=dict)
    results: dict[str, EvaluationResult | None] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


# -- helpers --------------------------------------------------------------------------------------
def make_detector(cfg: Mapping[str, Any]) -> Detector:
    """A fresh detector from a resolved config (model params + seed/device/channel/progress)."""
    cls = get_model(cfg["model"])
    accepted = set(cls.param_defaults())
    params = dict(cfg["params"])
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for model '{cfg['model']}'; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    common = {"seed": cfg["seed"], "device": cfg["device"], "channel": cfg["channel"], "progress": cfg["progress"],
              "threads": cfg.get("threads") or "auto"}
    params.update({k: v for k, v in common.items() if k in accepted and k not in cfg["params"]})
    det = cls(**params)
    det.check_params()
    return det


def _cache(cfg: Mapping[str, Any]) -> FeatureCache | None:
    if not cfg["cache"]:
        return None
    return FeatureCache(cfg["cache_dir"] or default_cache_dir())


def _scan(cfg: Mapping[str, Any], root: str | Path, split: str, machines: list[str] | None,
          dataset: str | None = None) -> tuple[Scan, list[tuple[Path, str]]]:
    """Clips of one split with the run's layout; unparseable names are fatal unless skip_bad."""
    scan = scan_dataset(root, dataset or cfg["dataset"], machines, splits=(split,), subset=cfg["subset"],
                        mimii_split=cfg["mimii_split"])
    if scan.problems and not cfg["skip_bad"]:
        lines = [f"  {p}: {r}" for p, r in scan.problems[:20]]
        more = f"\n  ... and {len(scan.problems) - 20} more" if len(scan.problems) > 20 else ""
        raise DatasetError(
            f"{len(scan.problems)} file(s) in {scan.root} cannot be used (use --skip-bad to leave them "
            "out; they are then listed in skipped.csv):\n" + "\n".join(lines) + more
        )
    return scan, list(scan.problems)


def _data_test_split(cfg: Mapping[str, Any], root: str | Path, scan: Scan) -> list[Clip]:
    """Every test clip the data at ``root`` holds, of every machine type, read with the layout of
    ``scan`` (file names only, no audio): what an official score has to cover. Names that do not
    parse are left out here; the scan of the machine types tested reports them."""
    quiet = logging.getLogger("stetho.datasets")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the scan of the tested machine types has logged it all already
    try:
        full = scan_dataset(root, scan.dataset.partition(":")[0], None, splits=("test",), subset=cfg["subset"],
                            mimii_split=cfg["mimii_split"])
    finally:
        quiet.setLevel(level)
    return full.clips


def _features(cfg, detector: Detector, clips: list[Clip], desc: str, rates: list[int] | None = None):
    """The detector's features of ``clips``; bad audio fatal unless skip_bad. Each clip's native
    sample rate is appended to ``rates`` when given."""
    ex = detector.extract(clips, resample=cfg["resample"], cache=_cache(cfg), progress=cfg["progress"],
                          raise_on_error=not cfg["skip_bad"], desc=desc)
    if rates is not None:
        rates.extend(ex.sample_rates)
    return ex.clips, ex.features, [(p.path, p.reason) for p in ex.problems]


def _rate_notes(run_dir: Path, clips: Sequence[Clip], rates: Sequence[int], strict: bool) -> list[str]:
    """A note per test clip whose native sample rate no training clip had (resampling cannot
    bring back a band the recording never had: an 8 kHz clip among 16 kHz ones scores as an
    anomaly); an error listing them with ``strict``."""
    trained: set[int] = set()
    path = run_dir / "train_files.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            trained = {int(r["sample_rate"]) for r in csv.DictReader(fh) if r.get("sample_rate")}
    if not trained:
        return [""] * len(clips)  # a run from before sample rates were recorded
    seen = ", ".join(f"{r} Hz" for r in sorted(trained))
    notes = [f"sample rate {r} Hz, training clips had {seen}" if r not in trained else "" for r in rates]
    odd = [(c.path, n) for c, n in zip(clips, notes) if n]
    if odd:
        lines = "\n".join(f"  {p}: {n}" for p, n in odd[:20]) + (f"\n  ... and {len(odd) - 20} more"
                                                              if len(odd) > 20 else "")
        if strict:
            raise DatasetError(f"{len(odd)} test clip(s) have a sample rate the training clips did not have "
                               f"(--strict):\n{lines}")
        log.warning("%d test clip(s) have a sample rate the training clips did not have; they are resampled and "
                    "scored, but a band the recording lacks reads as an anomaly (noted in test_files.csv; "
                    "--strict refuses them):\n%s", len(odd), lines)
    return notes


def _write_skipped(run_dir: Path, stage: str, skipped: Sequence[tuple[Path, str]],
                   previous: Path | None = None) -> None:
    """Record skipped files of ``stage`` in RUN/skipped.csv, keeping other stages' rows (read
    from ``previous``, default the file itself)."""
    path = run_dir / "skipped.csv"
    previous = previous or path
    rows: list[list[str]] = []
    if previous.exists():
        with open(previous, newline="", encoding="utf-8") as fh:
            rows = [r for r in list(csv.reader(fh))[1:] if r and r[1] != stage]
    rows += [[str(p), stage, reason] for p, reason in skipped]
    write_csv(path, rows, header=SKIPPED_HEADER)
    for p, reason in skipped:
        log.warning("skipped %s: %s", p, reason)


def _versions(cfg: Mapping[str, Any]) -> dict[str, Any]:
    import librosa
    import scipy
    import sklearn
    import soundfile

    return {
        "stetho": stetho.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
        "librosa": librosa.__version__, "soundfile": soundfile.__version__,
        "platform": platform.platform(), "device": str(resolve_device(cfg["device"])),
        "torch_threads": torch.get_num_threads(), "seed": cfg["seed"],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _record_timings(run_dir: Path, stage: str, timings: Mapping[str, Any], fresh: bool = False) -> None:
    """Store the wall-clock seconds of ``stage`` (train/test) in RUN/timings.json, keeping the
    other stage's unless ``fresh`` (a new training makes an earlier test's timings stale)."""
    path = run_dir / "timings.json"
    data: dict[str, Any] = {}
    if path.is_file() and not fresh:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
    data[stage] = dict(timings)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run was trained with."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a stetho run folder (no config.yaml); train one with `stetho train`")
    from stetho.config import load_recipe

    return resolve(load_recipe(path), where=str(path))


# -- train ----------------------------------------------------------------------------------------
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
        raise ConfigError(_missing_data_message(cfg))
    if not cfg["out"]:
        raise ConfigError("no run folder given (--out RUN or `out:` in the recipe)")
    run_dir = Path(cfg["out"])
    check_out_folder(run_dir)
    probe = make_detector(cfg)  # checks model params before any work
    with run_lock(run_dir, "train"):
        recover_run(run_dir)
        return _train_locked(cfg, run_dir, probe)


def _train_locked(cfg: dict[str, Any], run_dir: Path, probe: Detector) -> Path:
    data = Path(cfg["data"])
    if _train_finished(run_dir) and not cfg["overwrite"]:
        raise ConfigError(f"{run_dir} already holds a run; choose another --out or pass --overwrite")
    if (run_dir / "config.yaml").is_file() and not _train_finished(run_dir) and not cfg["overwrite"]:
        raise ConfigError(f"{run_dir} holds an unfinished run of an older stetho (trained in place); pass "
                          "--overwrite to replace it")
    stage = staging_dir(run_dir)
    t_start = time.perf_counter()

    scan, skipped = _scan(cfg, data, "train", cfg["machines"])
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
    clips, feats, bad = _features(cfg, probe, clips, "train features", rates)
    skipped += bad
    features_s = time.perf_counter() - t0
    log.info("features of %d training clips ready in %.1f s", len(clips), features_s)

    # The layout found is recorded, so `stetho test` reads the test split the same way.
    cfg = {**cfg, "data": str(data.resolve()), "out": str(run_dir), "dataset": scan.dataset.split(":")[0]}
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
    atomic_write_text(stage / "config.yaml", dump(cfg))
    atomic_write_text(stage / "versions.json", json.dumps(_versions(cfg), indent=2) + "\n")
    write_csv(stage / "train_files.csv",
              ([str(c.path), c.machine, c.section, c.domain or "", c.label,
                "validation" if c.is_validation else "train", r] for c, r in zip(clips, rates)),
              header=TRAIN_FILES_HEADER)
    if len(set(rates)) > 1:
        log.warning("training clips have several sample rates (%s): each is resampled to the features' rate, "
                    "but bands missing from the lower-rate recordings make them differ",
                    ", ".join(f"{n} at {r} Hz" for r, n in sorted(Counter(rates).items())))
    _write_skipped(stage, "train", skipped)

    machines = sorted({c.machine for c in clips})
    wanted = cfg["machines"] or machines
    empty = [m for m in wanted if m not in machines]
    if empty:
        raise DatasetError(f"{data}: no usable training clips for machine type(s) {', '.join(empty)}")
    # One model per machine type, or one for all of them (joint detectors).
    groups = {"all": list(range(len(clips)))} if probe.joint else {
        m: [i for i, c in enumerate(clips) if c.machine == m] for m in machines}
    fit_s: dict[str, float] = {}
    trained: dict[str, list[str]] = {}
    for name, idx in groups.items():
        # Validation clips (detectors that choose their best epoch on them) reach fit apart.
        vidx = [i for i in idx if clips[i].is_validation]
        idx = [i for i in idx if not clips[i].is_validation]
        mclips, mfeats = [clips[i] for i in idx], [feats[i] for i in idx]
        vclips, vfeats = [clips[i] for i in vidx], [feats[i] for i in vidx]
        t0 = time.perf_counter()
        model_file = _model_file(stage, name)
        if resuming and model_file.is_file():
            det = Detector.load(model_file)  # finished before the interruption
            log.info("%s: trained before the interruption, kept (%s)", name, model_file)
        else:
            det = make_detector(cfg)
            det.fit(mclips, mfeats, _fit_context(cfg, det, stage, vclips, vfeats))
            det.save(model_file)
        trained[name] = list(det.machines_)
        fit_s[name] = time.perf_counter() - t0
        for part, table in det.histories().items():
            write_csv(stage / f"history_{name}{'_' + part if part else ''}.csv", zip(*table.values()),
                      header=list(table))
        hist = det.history_
        val = hist["val_loss"][-1] if hist["val_loss"] else float("nan")
        log.info(  # no "(val nan)" for models without validation loss
            "%s: %d clips (%d target), %d epochs in %.1f s, loss %.4g%s", name, len(mclips),
            sum(c.domain == "target" for c in mclips), len(hist["epoch"]), time.perf_counter() - t0,
            hist["train_loss"][-1] if hist["train_loss"] else float("nan"),
            f" (val {val:.4g})" if np.isfinite(val) else "",
        )
        for m in det.machines_:
            log.info("  %s: threshold %s", m, ", ".join(f"{mode} {det.threshold_for(mode, m):.4g}"
                                                       for mode in det.score_modes))
    write_models_index(stage, trained)
    _record_timings(stage, "train", {"seconds": time.perf_counter() - t_start, "features_seconds": features_s,
                                     "fit_seconds": fit_s, "clips": len(clips)}, fresh=True)
    swap_in(stage, run_dir)
    return run_dir


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
        scan, _ = _scan(cfg, cfg["data"], "test", cfg["machines"])
        clips, feats, _ = _features({**cfg, "skip_bad": True}, det, scan.clips, "test features (transductive)")
        unlabeled = (clips, feats)
    validation = (vclips, vfeats) if det.uses_validation and vclips else None
    return FitContext(work_dir=run_dir / "work", unlabeled=unlabeled, validation=validation)


# -- test -----------------------------------------------------------------------------------------
def _modes(det: Detector, score: str | Sequence[str]) -> list[str]:
    if isinstance(score, str):
        score = list(det.score_modes) if score in ("all", "both") else [s for s in score.split(",") if s]
    bad = [s for s in score if s not in det.score_modes]
    if bad:
        raise ConfigError(f"unknown score mode(s) {', '.join(bad)} for model '{det.name}'; "
                          f"choose from {', '.join(det.score_modes)}, or all")
    return list(score)


def test(
    run_dir: str | Path, score: str | Sequence[str] | None = None, data: str | Path | None = None,
    **overrides: Any,
) -> TestOutcome:
    """Score the ``test`` split with a trained run; write DCASE files; evaluate when labeled.

    The test is one transaction: its results (``results/``, ``summary.csv``, ``test_files.csv``,
    the test rows of ``skipped.csv``) are written into ``RUN/.test.partial/`` and replace the
    previous test's together at the end; a killed or failed test leaves the previous results as
    they were. ``summary.csv`` is removed when the new test yields no metrics (unlabeled data), so
    it never shows an earlier test's score. The run folder is locked while the test runs.

    Args:
        run_dir: a folder written by :func:`train`.
        score: score modes (``"all"``, ``"both"``, a mode, or a list); default from the config.
        data: test data root or manifest (default: the run's test data, else its training data).
            Other data is read with ``dataset="auto"`` unless ``dataset`` is given.
        overrides: config keys to change for this test (e.g. ``skip_bad=True``, ``progress=False``,
            ``dataset="dcase2021"``, ``formula="dcase2020"``, ``channel=1``, ``device="cpu"``), and
            ``decision_fpr``: decide with thresholds refitted for this false-alarm rate from the
            stored out-of-sample scores, and ``strict``: refuse test clips whose native sample rate
            no training clip had (default: score them with a warning and a note in
            ``test_files.csv``).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder; train one with `stetho train`")
    with run_lock(run_dir, "test"):
        recover_run(run_dir)
        return _test_locked(run_dir, score, data, overrides)


def _test_locked(run_dir: Path, score, data, overrides: dict[str, Any]) -> TestOutcome:
    t_start = time.perf_counter()
    cfg = load_run_config(run_dir)
    decision_fpr = overrides.pop("decision_fpr", None)
    strict = bool(overrides.pop("strict", False))
    if data is not None and "dataset" not in overrides:
        overrides = {**overrides, "dataset": "auto"}
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = resolve(cfg, given)
    root = Path(data or cfg["test"]["data"] or cfg["data"])
    detectors: dict[str, Detector] = {}
    for path in run_models(run_dir):
        det = Detector.load(path)
        det.progress = cfg["progress"]
        if cfg.get("threads"):
            det.threads = cfg["threads"]
        if "channel" in given:
            det.channel = cfg["channel"]
        if "device" in given:
            det.set_device(cfg["device"])
        if decision_fpr is not None:
            det.refit_thresholds(decision_fpr=decision_fpr)
        for machine in det.machines_:
            detectors[machine] = det
    first = next(iter(detectors.values()))
    modes = _modes(first, score or cfg["test"]["score"])

    scan, skipped = _scan(cfg, root, "test", sorted(detectors))
    n_unparsed = len(skipped)
    clips = scan.clips
    if not clips:
        raise DatasetError(f"{scan.root}: no test clips found for {', '.join(detectors)}")
    # What the data holds, whatever the run's machine types: an official score must cover it all.
    test_split = _data_test_split(cfg, root, scan)
    # Score files are named as the data's own year names them, whatever formula is asked for.
    natural = official_formula(scan.dataset, clips)
    naming = FORMULAS[natural].naming
    _warn_unseen_sections(run_dir, clips)
    rates: list[int] = []
    clips, feats, bad = _features(cfg, first, clips, "test features", rates)
    skipped += bad
    notes = _rate_notes(run_dir, clips, rates, strict)

    stage = run_dir / TEST_STAGING
    if stage.exists():
        shutil.rmtree(stage)
    staged_results = make_dirs(stage / "results")
    _write_skipped(stage, "test", skipped, previous=run_dir / "skipped.csv")
    write_csv(stage / "test_files.csv",
              ([c.name, c.machine, c.section, c.domain or "", "" if c.label is None else c.label, str(c.path), r, n]
               for c, r, n in zip(clips, rates, notes)), header=TEST_FILES_HEADER)

    out = TestOutcome(run_dir=run_dir, skipped=skipped)
    for machine in detectors:
        if not any(c.machine == machine for c in clips):
            log.warning("%s: no test clips in %s", machine, scan.root)
    reports: dict[str, list[dict[str, Any]]] = {}
    arrays: dict[str, list[dict[str, np.ndarray]]] = {}
    staged: dict[str, Path] = {}
    # Each detector scores all its clips in one call: a joint model (e.g. CANDE-CP's stream of
    # context predictions) sees every machine type's clips together, in the scan's sorted order.
    for det in {id(d): d for d in detectors.values()}.values():
        idx = [i for i, c in enumerate(clips) if detectors[c.machine] is det]
        if not idx:
            continue
        dclips = [clips[i] for i in idx]
        all_scores = det.score_all(dclips, [feats[i] for i in idx])
        for name, rows in det.report_tables().items():
            reports.setdefault(name, []).extend(rows)
        for name, part in det.report_arrays().items():
            arrays.setdefault(name, []).append({**part, **_clip_arrays(dclips)})
        for mode in modes:
            folder = staged[mode] = staged_results / mode
            for machine in sorted({c.machine for c in dclips}):
                sel = [j for j, c in enumerate(dclips) if c.machine == machine]
                s = all_scores[mode][sel]
                decisions = det.decide(s, [machine] * len(s), mode)
                mclips = [dclips[j] for j in sel]
                for section in sorted({c.section for c in mclips}):
                    part = [j for j, c in enumerate(mclips) if c.section == section]
                    write_submission(folder, machine, section, [mclips[j].name for j in part], s[part],
                                     decisions[part], naming=naming, domains=[mclips[j].domain for j in part])
    for name, rows in reports.items():
        write_dict_csv(staged_results / f"{name}.csv", rows)
    for name, parts in arrays.items():
        _write_npz(staged_results / f"{name}.npz",
                   {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    unlabeled = [c for c in clips if c.label is None]
    formula = cfg["formula"] or natural
    summary_rows = []
    for mode in modes:
        out.folders[mode] = run_dir / "results" / mode
        if len(unlabeled) == len(clips):
            log.info("test clips carry no labels: %s scores written to %s, no metrics", mode, out.folders[mode])
            out.results[mode] = None
            continue
        result = evaluate_folder(staged[mode], scan.root, truth=[c for c in clips if c.label is not None],
                                 formula=formula, test_split=test_split,
                                 leave_out={(c.machine, c.name) for c in unlabeled})
        if unlabeled:
            result.missing.append(_unlabeled_note(unlabeled, len(clips)))
        if n_unparsed:
            result.missing.append(f"{n_unparsed} test file name(s) that do not parse were skipped (skipped.csv)")
        write_results(staged[mode], result)
        write_section_metrics(staged[mode] / "sections.csv", result)
        out.results[mode] = result
        summary_rows.append({"score": mode, "formula": result.formula, **score_cells(result),
                             "machines": " ".join(result.machines())})
    if unlabeled and len(unlabeled) < len(clips):
        log.warning("%s", _unlabeled_note(unlabeled, len(clips)) + ": the metrics are partial")
    if summary_rows:
        write_dict_csv(stage / "summary.csv", summary_rows)
    commit_test(run_dir)
    _record_timings(run_dir, "test", {"seconds": time.perf_counter() - t_start, "clips": len(clips),
                                      "data": str(scan.root), "dataset": scan.dataset})
    return out


def _unlabeled_note(unlabeled: Sequence[Clip], n: int) -> str:
    """What a partly labeled test set leaves out of the metrics, with examples."""
    names = ", ".join(str(c.path.name) for c in unlabeled[:3]) + (" ..." if len(unlabeled) > 3 else "")
    return (f"{len(unlabeled)} of {n} test clip(s) carry no label and are left out of the metrics "
            f"(e.g. {names})")


def _clip_arrays(clips: Sequence[Clip]) -> dict[str, np.ndarray]:
    """What identifies each clip in a detector's report arrays (strings, no pickling needed)."""
    return {"name": np.array([c.name for c in clips], dtype=str),
            "machine": np.array([c.machine for c in clips], dtype=str),
            "section": np.array([c.section for c in clips], dtype=str),
            "domain": np.array([c.domain or "" for c in clips], dtype=str),
            "label": np.array([-1 if c.label is None else int(c.label) for c in clips], dtype=np.int64)}


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` written atomically (a reader never sees half a file)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _warn_unseen_sections(run_dir: Path, clips: Sequence[Clip]) -> None:
    """Warn about test sections (IDs) of a machine type that had no training clip."""
    path = run_dir / "train_files.csv"
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as fh:
        trained = {(r["machine"], r["section"]) for r in csv.DictReader(fh)}
    unseen = sorted({(c.machine, c.section) for c in clips} - trained)
    if unseen:
        log.warning(
            "test section(s) without training clips: %s; the model of the machine type scores them, "
            "but it has never heard them", ", ".join(f"{m} {s}" for m, s in unseen),
        )


# -- evaluate -------------------------------------------------------------------------------------
def evaluate_folder(
    scores_dir: str | Path, data: str | Path, truth: Sequence[Clip] | None = None,
    formula: str | None = None, dataset: str = "auto", subset: str | None = None,
    test_split: Sequence[Clip] | None = None, leave_out: Collection[tuple[str, str]] = (),
) -> EvaluationResult:
    """Evaluate the ``anomaly_score_*`` (and ``decision_result_*``) files of a folder.

    Ground truth is read from the test clips under ``data`` (a dataset folder of any layout, or a
    manifest; or given as ``truth``); scores are joined to it by file name per machine type, and
    within a scored section a missing, extra or duplicated file is an error that lists the files.
    ``formula`` defaults to the official formula of the data's year.

    The result is the official score only when the score files cover every machine type and
    section of ``test_split``, the data's whole test split (default: the test split of every
    machine type under ``data``, or ``truth`` when it is given); otherwise it is partial and its
    ``missing`` names the machine types and sections without score files.

    ``leave_out`` holds (machine, name) pairs of scored clips without a label, left out of the
    join (the caller marks the result partial).
    """
    sub = read_submission(scores_dir)
    if leave_out:
        drop = set(leave_out)
        sub.scores = {k: [r for r in rows if (k[0], r[0]) not in drop] for k, rows in sub.scores.items()}
        sub.decisions = {k: [r for r in rows if (k[0], r[0]) not in drop] for k, rows in sub.decisions.items()}
    machines = sorted({m for m, _ in sub.scores})
    if truth is None:
        cfg = resolve({"dataset": dataset, "subset": subset})
        scan, _ = _scan(cfg, data, "test", machines)
        truth = scan.clips
        formula = formula or official_formula(scan.dataset, truth)
        if test_split is None:
            test_split = _data_test_split(cfg, data, scan)
    formula = formula or official_formula("folder", truth)
    if test_split is None:
        test_split = truth
    sections_scored = {(m, s) for m, s in sub.scores}
    # Sections without score files are not evaluated; `evaluate` lists them as not scored.
    truth = [c for c in truth if (c.machine, c.section) in sections_scored]
    per_machine: dict[str, list[tuple[str, float]]] = {}
    for (m, _), rows in sorted(sub.scores.items()):
        per_machine.setdefault(m, []).extend(rows)
    decisions = None
    if sub.decisions:
        if set(sub.decisions) != sections_scored:
            missing = sorted(sections_scored - set(sub.decisions))
            raise StethoError(f"{scores_dir}: decision files missing for "
                              + ", ".join(f"{m} section {s}" for m, s in missing))
        decisions = {}
        for (m, _), rows in sorted(sub.decisions.items()):
            decisions.setdefault(m, []).extend(rows)
    return evaluate(per_machine, truth, decisions, formula=formula, test_split=test_split)


# -- label ----------------------------------------------------------------------------------------
def label(
    data: str | Path, ground_truth: str | Path, out: str | Path, dataset: str = "auto",
    subset: str | None = None, machines: list[str] | None = None,
) -> Path:
    """Attach the organisers' ground truth to an unlabeled evaluation set; write a manifest.

    The user's files are neither moved nor renamed: the manifest (``out``) lists every training
    and test clip of ``data`` with the labels and domains of the ground-truth tables, keeps each
    test clip's evaluation name (so score files use the names the organisers' evaluators expect)
    and names the layout, so ``stetho test --data MANIFEST`` scores and evaluates it year-exactly.

    Raises:
        DatasetError: the ground truth does not cover the test files exactly (every problem
            listed), or the data has no test clips.
    """
    cfg = resolve({"dataset": dataset, "subset": subset})
    train_scan, _ = _scan(cfg, data, "train", machines)
    test_scan, _ = _scan(cfg, data, "test", machines)
    if not test_scan.clips:
        raise DatasetError(f"{test_scan.root}: no test clips to label")
    truth = read_ground_truth(ground_truth)
    labeled = label_clips(test_scan.clips, truth)
    kind = test_scan.dataset.partition(":")[2] or test_scan.dataset  # a manifest names its layout
    if kind == "manifest":
        kind = truth.format
    path = write_manifest(out, list(train_scan.clips) + labeled, dataset=kind)
    n_anomalies = sum(c.label for c in labeled)
    log.info("labeled %d test clips (%d anomalies) of %s from %s (%s ground truth)", len(labeled), n_anomalies,
             ", ".join(sorted({c.machine for c in labeled})), truth.source, truth.format)
    return path


# -- summarize ------------------------------------------------------------------------------------
def summarize(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> RunsSummary:
    """Mean ± standard deviation over runs (e.g. seeds) per machine type and of the official
    score, per score mode; written as ``summary_runs_<mode>.csv`` into ``out`` when given."""
    summary = summarize_runs(run_dirs)
    if out is not None:
        summary.write(out)
    return summary


# -- run ------------------------------------------------------------------------------------------
def run(cfg: Mapping[str, Any], report: bool = True) -> TestOutcome | Comparison:
    """``stetho run``: generate toy data if the recipe asks for it, then train, test, evaluate —
    or, when the recipe has ``compare:``, every variant × seed and their :func:`compare`.

    With ``report`` (the default) the HTML report follows: ``RUN/report.html`` (or, for a
    comparison, ``OUT/report.html`` over all its runs), figures also as PNGs beside the CSVs."""
    cfg = resolve(cfg)
    if cfg["toy"] is not None:
        from stetho.datasets.toy import make_toy_dataset

        data = Path(cfg["data"] or "toy_data")
        if not data.exists():
            toy = dict(cfg["toy"])
            log.info("generating toy data in %s (%s)", data, ", ".join(f"{k}={v}" for k, v in toy.items()))
            make_toy_dataset(data, progress=cfg["progress"], **toy)
        cfg["data"] = str(data)
    if cfg["compare"] is not None:
        comparison = compare(cfg)
        if report:
            runs = list(dict.fromkeys(p for pairs in comparison.runs.values() for p, _ in pairs))
            _report(runs, Path(cfg["out"]) / "report.html")
        return comparison
    run_dir = train(cfg)
    outcome = test(run_dir, progress=cfg["progress"])
    if report and any(r is not None for r in outcome.results.values()):
        _report([run_dir], run_dir / "report.html")
    return outcome


def report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """``stetho report``: the self-contained HTML report of tested runs (see
    :mod:`stetho.outputs.report`); returns the HTML file."""
    import contextlib

    from stetho.outputs.report import write_report

    with contextlib.ExitStack() as stack:  # no run changes under the report's feet
        for run_dir in dict.fromkeys(Path(r) for r in run_dirs):
            if run_dir.is_dir():
                stack.enter_context(run_lock(run_dir, "report"))
                recover_run(run_dir)
        return write_report(run_dirs, out).path


def _report(run_dirs: Sequence[Path], out: Path) -> None:
    """The report at the end of ``stetho run``; a failure to draw it does not fail the finished run."""
    try:
        report(run_dirs, out)  # logs where it was written
    except (StethoError, OSError, ValueError) as exc:
        log.warning("report not written: %s", exc)


def compare(cfg: Mapping[str, Any]) -> Comparison:
    """Train and test every variant of ``cfg["compare"]`` with every seed, then compare them.

    Runs go to ``OUT/<variant>/seed_<seed>/`` (ordinary run folders); the comparison of every
    (variant, score mode) over the seeds to ``OUT/comparison_settings.csv``,
    ``comparison_models.csv`` and ``comparison.txt`` (see :mod:`stetho.outputs.compare`). A model
    is named ``<variant>/<mode>``, or ``<variant>`` when the variant is tested in one mode only.
    Every variant's config is checked before the first run. With ``compare.reuse``, a run
    folder already tested with the same model, parameters, seed and data is kept as it is.
    """
    cfg = resolve(cfg)
    spec = cfg["compare"] or {}
    if not cfg["out"]:
        raise ConfigError("no output folder given (out: in the recipe, or out=DIR)")
    out = Path(cfg["out"])
    seeds = spec.get("seeds") or [cfg["seed"]]
    variants = spec.get("variants") or {cfg["model"]: {}}
    base = {**cfg, "compare": None, "toy": None}
    plans = []
    for name, over in variants.items():
        for seed in seeds:
            run_cfg = resolve(base, over or {}, {"seed": seed, "out": str(out / name / f"seed_{seed}"), "overwrite": True},
                              where=f"compare.variants.{name}")
            det = make_detector(run_cfg)  # parameter errors before any training
            plans.append((name, run_cfg, _modes(det, run_cfg["test"]["score"])))
    if not cfg["data"]:
        raise ConfigError(_missing_data_message(cfg))
    models: dict[str, list[tuple[Path, str]]] = {}
    for name, run_cfg, modes in plans:
        run_dir = Path(run_cfg["out"])
        if not (spec.get("reuse") and _finished(run_dir, run_cfg, modes)):
            log.info("compare: %s, seed %d → %s", name, run_cfg["seed"], run_dir)
            train(run_cfg)
            outcome = test(run_dir, score=modes, progress=run_cfg["progress"])
            if any(r is None for r in outcome.results.values()):
                raise DatasetError(f"{run_cfg['data']}: the test clips carry no labels; nothing to compare")
        else:
            log.info("compare: %s, seed %d: reusing the finished run in %s", name, run_cfg["seed"], run_dir)
        for mode in modes:
            models.setdefault(name if len(modes) == 1 else f"{name}/{mode}", []).append((run_dir, mode))
    comparison = compare_runs(models)
    comparison.write(out)
    return comparison


def _finished(run_dir: Path, cfg: Mapping[str, Any], modes: Sequence[str]) -> bool:
    """True when ``run_dir`` holds a tested run of the same model, parameters, seed and data."""
    if not all((run_dir / "results" / m / "sections.csv").is_file() for m in modes):
        return False
    try:
        done = load_run_config(run_dir)
    except StethoError:
        return False
    same = ("model", "params", "seed", "dataset", "mimii_split", "machines", "channel")
    return (all(done[k] == cfg[k] for k in same if k != "dataset" or cfg[k] != "auto")
            and Path(done["data"]) == Path(cfg["data"]).resolve())


def _missing_data_message(cfg: Mapping[str, Any]) -> str:
    """What to point a recipe without ``data`` at, in the words of its layout."""
    hint = ""
    if cfg.get("dataset") not in (None, "auto"):
        layout = get_layout(cfg["dataset"])
        hint = f": a {layout.title} folder" + (f" ({layout.expected})" if layout.expected else "")
    return f"no data folder given (--data ROOT, `data:` in the recipe, or data=ROOT after `stetho run RECIPE`){hint}"
