"""``test``: score a data set's test split with a trained run, write the DCASE files, evaluate
them — one transaction (staged in ``RUN/.test.partial/``, committed together), into the run
folder or, with ``out``, into an evaluation folder of its own that leaves the run's results as
they were."""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stetho.config import resolve
from stetho.datasets import Clip, Scan, is_dcase_data, official_formula, scan_dataset
from stetho.errors import ConfigError, DatasetError, StethoError
from stetho.features import take
from stetho.fileio import atomic_write_with, make_dirs
from stetho.metrics import FORMULAS, EvaluationResult
from stetho.models import Detector
from stetho.outputs import write_csv, write_dict_csv, write_results, write_section_metrics, write_submission
from stetho.outputs.dcase import score_cells
from stetho.outputs.run_record import TEST_THRESHOLDS, TESTED_RUN, write_tested_run, write_thresholds
from stetho.pipeline.common import (
    TEST_FILES_HEADER, data_test_split, features_of, load_run_config, record_timings, scan_split, score_modes,
    write_skipped,
)
from stetho.pipeline.evaluation import evaluate_folder
from stetho.run_folder import TEST_STAGING, commit_test, recover_run, run_lock, run_models

log = logging.getLogger("stetho.pipeline")


@dataclass
class TestOutcome:
    """What :func:`test` produced: the results folder and evaluation of each score mode.

    ``out_dir`` is the folder the test wrote (``run_dir`` unless ``out`` was given)."""

    run_dir: Path
    out_dir: Path | None = None
    folders: dict[str, Path] = field(default_factory=dict)
    results: dict[str, EvaluationResult | None] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _TestSet:
    """The test clips as read: their scan, features, native sample rates and notes, what was
    left out, the data's whole test split and its year's formula."""

    scan: Scan
    clips: list[Clip]
    feats: Sequence[np.ndarray]  # a FeatureList (on disk) when the feature cache is on
    rates: list[int]
    notes: list[str]
    skipped: list[tuple[Path, str]]
    n_unparsed: int
    test_split: list[Clip]
    natural: str


def test(
    run_dir: str | Path, score: str | Sequence[str] | None = None, data: str | Path | None = None,
    machines: str | Sequence[str] | None = None, out: str | Path | None = None, **overrides: Any,
) -> TestOutcome:
    """Score the ``test`` split with a trained run; write DCASE files; evaluate when labeled.

    The test is one transaction: its results (``results/``, ``summary.csv``, ``test_files.csv``,
    the test rows of ``skipped.csv``) are written into ``RUN/.test.partial/`` and replace the
    previous test's together at the end; a killed or failed test leaves the previous results as
    they were. ``summary.csv`` is removed when the new test yields no metrics (unlabeled data), so
    it never shows an earlier test's score. The run folder is locked while the test runs.

    The machine types tested are ``machines``, else those of the run that the data holds: a
    manifest of fan clips tests a run of fan and valve on fan (the official score, which needs
    every machine type of the data, is then partial only if the data holds more).

    Args:
        run_dir: a folder written by :func:`train`.
        score: score modes (``"all"``, ``"both"``, a mode, or a list); default from the config.
        data: test data root or manifest (default: the run's test data, else its training data).
            Other data is read with ``dataset="auto"`` unless ``dataset`` is given.
        machines: test only these machine types (a list, or comma-separated); each must be one
            the run was trained on and the data holds.
        out: write the test's files (``results/``, ``test_files.csv``, ``summary.csv`` ...) into
            this folder instead of the run's, with ``tested_run.json`` naming the run (so
            ``stetho report OUT`` works); the run's own results stay as they were. ``out`` must
            be new, empty, or an earlier evaluation folder.
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
    dest = _evaluation_folder(run_dir, out)
    if isinstance(machines, str):
        machines = [m.strip() for m in machines.split(",") if m.strip()]
    with run_lock(run_dir, "test"), (run_lock(dest, "test") if dest != run_dir else contextlib.nullcontext()):
        recover_run(run_dir)
        if dest != run_dir:
            recover_run(dest)
        return _test_locked(run_dir, dest, score, data, list(machines or []), overrides)


def _evaluation_folder(run_dir: Path, out: str | Path | None) -> Path:
    """Where a test writes: ``out`` checked (new, empty, or an earlier evaluation folder; never
    another run), or ``run_dir`` itself."""
    if out is None:
        return run_dir
    out = Path(out)
    if os.path.realpath(out) == os.path.realpath(run_dir):
        return run_dir
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder for the evaluation")
    if (out / "config.yaml").is_file():
        raise ConfigError(f"--out {out} is a run folder of its own; choose a new folder for the evaluation of "
                          f"{run_dir} (or leave --out away to replace {run_dir}'s own results)")
    if out.is_dir() and not (out / TESTED_RUN).is_file() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is a folder that holds other files; stetho only replaces its own "
                          "evaluation folders: choose a new or empty folder")
    return out


def _test_locked(run_dir: Path, dest: Path, score, data, machines: list[str],
                 overrides: dict[str, Any]) -> TestOutcome:
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
    chosen = _machines_to_test(run_dir, cfg, root, detectors, machines)
    detectors = {m: d for m, d in detectors.items() if m in chosen}
    tset = _read_test_set(run_dir, cfg, root, detectors, strict)
    stage = _stage_test_files(dest, tset)
    staged = _score_and_write(detectors, tset, modes, stage / "results")
    write_thresholds(stage, detectors, TEST_THRESHOLDS)  # the thresholds this test decided with
    out = TestOutcome(run_dir=run_dir, out_dir=dest, skipped=tset.skipped)
    summary_rows = _evaluate(out, cfg, tset, staged)
    if summary_rows:
        write_dict_csv(stage / "summary.csv", summary_rows)
    if dest != run_dir:
        write_tested_run(dest, run_dir, data=os.path.abspath(tset.scan.root), machines=sorted(detectors))
    commit_test(dest)
    record_timings(dest, "test", {"seconds": time.perf_counter() - t_start, "clips": len(tset.clips),
                                  "data": str(tset.scan.root), "dataset": tset.scan.dataset})
    return out


def _machines_to_test(run_dir: Path, cfg: Mapping[str, Any], root: Path, detectors: Mapping[str, Detector],
                      machines: Sequence[str]) -> list[str]:
    """The machine types to test: ``machines`` (each one the run has a model of), else the run's
    machine types that the data at ``root`` holds test clips of."""
    trained = sorted(detectors)
    if machines:
        asked = list(dict.fromkeys(machines))
        unknown = [m for m in asked if m not in detectors]
        if unknown:
            raise ConfigError(f"--machines {','.join(unknown)}: the run {run_dir} has no model of "
                              f"{', '.join(unknown)}; it was trained on {', '.join(trained)}")
        return asked
    present = _test_machines_of(cfg, root)
    if present is None:
        return trained  # the scan of the run's machine types reports what is wrong with the data
    both = [m for m in trained if m in present]
    if not both:
        raise DatasetError(f"{root}: its test clips are of {', '.join(present) or 'no machine type'}, none of the "
                           f"machine types the run {run_dir} was trained on ({', '.join(trained)})")
    absent = [m for m in trained if m not in present]
    if absent:
        log.info("%s holds no test clips of %s: testing %s", root, ", ".join(absent), ", ".join(both))
    return both


def _test_machines_of(cfg: Mapping[str, Any], root: Path) -> list[str] | None:
    """The machine types of the test clips at ``root`` (file names only, quietly); None when the
    data cannot be scanned (the scan of the run's machine types then says why)."""
    quiet = logging.getLogger("stetho.datasets")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the scan of the tested machine types logs what matters
    try:
        scan = scan_dataset(root, cfg["dataset"], None, splits=("test",), subset=cfg["subset"],
                            mimii_split=cfg["mimii_split"])
    except StethoError:
        return None
    finally:
        quiet.setLevel(level)
    return sorted({c.machine for c in scan.clips})


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


def _stage_test_files(dest: Path, tset: _TestSet) -> Path:
    """A fresh ``DEST/.test.partial/`` with the test's skipped.csv and test_files.csv (``dest``:
    the run folder or the evaluation folder of ``out``)."""
    stage = dest / TEST_STAGING
    if stage.exists():
        shutil.rmtree(stage)
    make_dirs(stage / "results")
    write_skipped(stage, "test", tset.skipped, previous=dest / "skipped.csv")
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
        all_scores = det.score_all(dclips, take(tset.feats, idx))  # on disk stays on disk
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
        out.folders[mode] = (out.out_dir or out.run_dir) / "results" / mode
        if len(unlabeled) == len(clips):
            log.info("test clips carry no labels: %s scores written to %s, no metrics", mode, out.folders[mode])
            out.results[mode] = None
            continue
        result = evaluate_folder(folder, tset.scan.root, truth=[c for c in clips if c.label is not None],
                                 formula=cfg["formula"] or tset.natural, test_split=tset.test_split,
                                 leave_out={(c.machine, c.name) for c in unlabeled},
                                 dcase_data=is_dcase_data(tset.scan.dataset))
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

