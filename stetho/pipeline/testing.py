"""``test``: score a data set's test split with a trained run, write the DCASE files, evaluate
them — one transaction (staged in ``RUN/.test.partial/``, committed together)."""

from __future__ import annotations

import csv
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stetho.config import resolve
from stetho.datasets import Clip, Scan, official_formula
from stetho.errors import ConfigError, DatasetError
from stetho.fileio import atomic_write_with, make_dirs
from stetho.metrics import FORMULAS, EvaluationResult
from stetho.models import Detector
from stetho.outputs import write_csv, write_dict_csv, write_results, write_section_metrics, write_submission
from stetho.outputs.dcase import score_cells
from stetho.outputs.run_record import TEST_THRESHOLDS, write_thresholds
from stetho.pipeline.common import (
    TEST_FILES_HEADER, data_test_split, features_of, load_run_config, record_timings, scan_split, score_modes,
    write_skipped,
)
from stetho.pipeline.evaluation import evaluate_folder
from stetho.run_folder import TEST_STAGING, commit_test, recover_run, run_lock, run_models

log = logging.getLogger("stetho.pipeline")


@dataclass
class TestOutcome:
    """What :func:`test` produced: the results folder and evaluation of each score mode."""

    run_dir: Path
    folders: dict[str, Path] = field(default_factory=dict)
    results: dict[str, EvaluationResult | None] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _TestSet:
    """The test clips as read: their scan, features, native sample rates and notes, what was
    left out, the data's whole test split and its year's formula."""

    scan: Scan
    clips: list[Clip]
    feats: list[np.ndarray]
    rates: list[int]
    notes: list[str]
    skipped: list[tuple[Path, str]]
    n_unparsed: int
    test_split: list[Clip]
    natural: str


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
    decision_fpr = overrides.pop("decision_fpr", None)
    strict = bool(overrides.pop("strict", False))
    if data is not None and "dataset" not in overrides:
        overrides = {**overrides, "dataset": "auto"}
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = resolve(load_run_config(run_dir), given)
    detectors = load_detectors(run_dir, cfg, given, decision_fpr)
    modes = score_modes(next(iter(detectors.values())), score or cfg["test"]["score"])
    root = Path(data or cfg["test"]["data"] or cfg["data"])
    tset = _read_test_set(run_dir, cfg, root, detectors, strict)
    stage = _stage_test_files(run_dir, tset)
    staged = _score_and_write(detectors, tset, modes, stage / "results")
    write_thresholds(stage, detectors, TEST_THRESHOLDS)  # the thresholds this test decided with
    out = TestOutcome(run_dir=run_dir, skipped=tset.skipped)
    summary_rows = _evaluate(out, cfg, tset, staged)
    if summary_rows:
        write_dict_csv(stage / "summary.csv", summary_rows)
    commit_test(run_dir)
    record_timings(run_dir, "test", {"seconds": time.perf_counter() - t_start, "clips": len(tset.clips),
                                     "data": str(tset.scan.root), "dataset": tset.scan.dataset})
    return out


def load_detectors(run_dir: Path, cfg: Mapping[str, Any], given: Mapping[str, Any],
                   decision_fpr: float | None = None) -> dict[str, Detector]:
    """machine type -> the run's detector of it (exactly the files of ``models.json``), with the
    test's overrides applied: progress, threads, and channel / device when ``given``, thresholds
    refitted for ``decision_fpr``."""
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
    return detectors


def _read_test_set(run_dir: Path, cfg: Mapping[str, Any], root: Path, detectors: Mapping[str, Detector],
                   strict: bool) -> _TestSet:
    """Scan the test split of the run's machine types and compute its features."""
    scan, skipped = scan_split(cfg, root, "test", sorted(detectors))
    if not scan.clips:
        raise DatasetError(f"{scan.root}: no test clips found for {', '.join(detectors)}")
    n_unparsed = len(skipped)
    # What the data holds, whatever the run's machine types: an official score must cover it all.
    test_split = data_test_split(cfg, root, scan)
    # Score files are named as the data's own year names them, whatever formula is asked for.
    natural = official_formula(scan.dataset, scan.clips)
    trained = _training_files(run_dir)
    _warn_unseen_sections(trained, scan.clips)
    rates: list[int] = []
    clips, feats, bad = features_of(cfg, next(iter(detectors.values())), scan.clips, "test features", rates)
    notes = _rate_notes(trained, clips, rates, strict)
    for machine in detectors:
        if not any(c.machine == machine for c in clips):
            log.warning("%s: no test clips in %s", machine, scan.root)
    return _TestSet(scan, clips, feats, rates, notes, skipped + bad, n_unparsed, test_split, natural)


def _stage_test_files(run_dir: Path, tset: _TestSet) -> Path:
    """A fresh ``RUN/.test.partial/`` with the test's skipped.csv and test_files.csv."""
    stage = run_dir / TEST_STAGING
    if stage.exists():
        shutil.rmtree(stage)
    make_dirs(stage / "results")
    write_skipped(stage, "test", tset.skipped, previous=run_dir / "skipped.csv")
    write_csv(stage / "test_files.csv",
              ([c.name, c.machine, c.section, c.domain or "", "" if c.label is None else c.label, str(c.path), r, n]
               for c, r, n in zip(tset.clips, tset.rates, tset.notes)), header=TEST_FILES_HEADER)
    return stage


def _score_and_write(detectors: Mapping[str, Detector], tset: _TestSet, modes: Sequence[str],
                     results: Path) -> dict[str, Path]:
    """Score every clip, write the submission files of each mode (and the detectors' reports)
    into ``results``; returns each mode's folder."""
    naming = FORMULAS[tset.natural].naming
    reports: dict[str, list[dict[str, Any]]] = {}
    arrays: dict[str, list[dict[str, np.ndarray]]] = {}
    # Each detector scores all its clips in one call: a joint model (e.g. CANDE-CP's stream of
    # context predictions) sees every machine type's clips together, in the scan's sorted order.
    for det in {id(d): d for d in detectors.values()}.values():
        idx = [i for i, c in enumerate(tset.clips) if detectors[c.machine] is det]
        if not idx:
            continue
        dclips = [tset.clips[i] for i in idx]
        all_scores = det.score_all(dclips, [tset.feats[i] for i in idx])
        for name, rows in det.report_tables().items():
            reports.setdefault(name, []).extend(rows)
        for name, part in det.report_arrays().items():
            arrays.setdefault(name, []).append({**part, **_clip_arrays(dclips)})
        for mode in modes:
            _write_submissions(results / mode, det, dclips, all_scores[mode], mode, naming)
    for name, rows in reports.items():
        write_dict_csv(results / f"{name}.csv", rows)
    for name, parts in arrays.items():
        _write_npz(results / f"{name}.npz", {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return {mode: results / mode for mode in modes}


def _write_submissions(folder: Path, det: Detector, clips: Sequence[Clip], scores: np.ndarray, mode: str,
                       naming: str) -> None:
    """The anomaly_score_* and decision_result_* files of one detector's clips, per machine
    type and section."""
    for machine in sorted({c.machine for c in clips}):
        sel = [j for j, c in enumerate(clips) if c.machine == machine]
        s = scores[sel]
        decisions = det.decide(s, [machine] * len(s), mode)
        mclips = [clips[j] for j in sel]
        for section in sorted({c.section for c in mclips}):
            part = [j for j, c in enumerate(mclips) if c.section == section]
            write_submission(folder, machine, section, [mclips[j].name for j in part], s[part],
                             decisions[part], naming=naming, domains=[mclips[j].domain for j in part])


def _evaluate(out: TestOutcome, cfg: Mapping[str, Any], tset: _TestSet,
              staged: Mapping[str, Path]) -> list[dict[str, Any]]:
    """Evaluate each mode's staged files when labels are known (partly labeled: partial, over
    the labeled clips); fills ``out``, writes result tables, returns the summary rows."""
    clips = tset.clips
    unlabeled = [c for c in clips if c.label is None]
    rows = []
    for mode, folder in staged.items():
        out.folders[mode] = out.run_dir / "results" / mode
        if len(unlabeled) == len(clips):
            log.info("test clips carry no labels: %s scores written to %s, no metrics", mode, out.folders[mode])
            out.results[mode] = None
            continue
        result = evaluate_folder(folder, tset.scan.root, truth=[c for c in clips if c.label is not None],
                                 formula=cfg["formula"] or tset.natural, test_split=tset.test_split,
                                 leave_out={(c.machine, c.name) for c in unlabeled})
        if unlabeled:
            result.missing.append(_unlabeled_note(unlabeled, len(clips)))
        if tset.n_unparsed:
            result.missing.append(f"{tset.n_unparsed} test file name(s) that do not parse were skipped (skipped.csv)")
        write_results(folder, result)
        write_section_metrics(folder / "sections.csv", result)
        out.results[mode] = result
        rows.append({"score": mode, "formula": result.formula, **score_cells(result),
                     "machines": " ".join(result.machines())})
    if unlabeled and len(unlabeled) < len(clips):
        log.warning("%s", _unlabeled_note(unlabeled, len(clips)) + ": the metrics are partial")
    return rows


def _training_files(run_dir: Path) -> list[dict[str, str]]:
    """The rows of the run's ``train_files.csv`` (none for a run without one)."""
    path = run_dir / "train_files.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _rate_notes(training: Sequence[Mapping[str, str]], clips: Sequence[Clip], rates: Sequence[int],
                strict: bool) -> list[str]:
    """A note per test clip whose native sample rate no training clip (rows of
    ``train_files.csv``) had (resampling cannot bring back a band the recording never had: an
    8 kHz clip among 16 kHz ones scores as an anomaly); an error listing them with ``strict``."""
    trained = {int(r["sample_rate"]) for r in training if r.get("sample_rate")}
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
    atomic_write_with(path, lambda fh: np.savez(fh, **arrays))


def _warn_unseen_sections(training: Sequence[Mapping[str, str]], clips: Sequence[Clip]) -> None:
    """Warn about test sections (IDs) of a machine type that had no training clip."""
    if not training:
        return
    trained = {(r["machine"], r["section"]) for r in training}
    unseen = sorted({(c.machine, c.section) for c in clips} - trained)
    if unseen:
        log.warning(
            "test section(s) without training clips: %s; the model of the machine type scores them, "
            "but it has never heard them", ", ".join(f"{m} {s}" for m, s in unseen),
        )

