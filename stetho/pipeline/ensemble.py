"""``ensemble``: fuse the scores of finished, tested runs into one run-like folder.

Each member (a run folder and one of its score modes) is standardised on its own out-of-sample
calibration scores (``decision_scores.csv``: the held-out normal training clips its thresholds
were fitted on) per machine type and domain (:class:`stetho.backends.fusion.ScoreStandardizer`);
the members' z-scores are averaged (weights optional, :func:`stetho.backends.fusion.fuse`). The
fused score gets a threshold of its own, calibrated exactly as a detector's: the false-alarm
target ``decision_fpr`` on the fused z-scores of the calibration clips every member shares, each
domain weighted equally (:func:`stetho.backends.fpr_threshold`).

The output folder reads like a run tested in one score mode ``name``::

    results/<name>/      anomaly_score_* / decision_result_* (the members' naming), and when the
                         test clips are labeled result_<machine>.csv, summary.csv, sections.csv
    summary.csv          formula, official score, status ... (as `stetho test` writes it)
    test_files.csv       the first member's
    thresholds.csv       mode, machine, threshold of the fused score
    decision_scores.csv  file, machine, section, domain, <name>: the fused calibration scores
    ensemble.json        members (run, mode, weight, standardisation statistics), decision_fpr,
                         min_group
    timings.json         train / test seconds: the sums over the member runs (a run counted once
                         however many of its modes are members), and the fusion's own seconds
    config.yaml          what the report needs: the test data, ``model: ensemble``
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stetho.backends import fpr_threshold
from stetho.backends.fusion import MIN_GROUP, ScoreStandardizer, fuse, normalized_weights
from stetho.config import resolve
from stetho.datasets import Clip, Scan, official_formula
from stetho.errors import ConfigError, StethoError
from stetho.fileio import atomic_write_bytes, atomic_write_text, make_dirs
from stetho.metrics import EvaluationResult
from stetho.outputs import (
    read_submission, write_csv, write_dict_csv, write_results, write_section_metrics, write_submission,
)
from stetho.outputs.dcase import score_cells
from stetho.outputs.run_record import CALIBRATION_COLUMNS, DECISION_SCORES, THRESHOLD_HEADER, THRESHOLDS
from stetho.pipeline.common import data_test_split, load_run_config
from stetho.pipeline.evaluation import evaluate_folder
from stetho.run_folder import recover, run_lock, staging_dir, swap_in

log = logging.getLogger("stetho.pipeline")

#: The file that marks a folder as written by :func:`ensemble` (and lets it be replaced).
ENSEMBLE_RECORD = "ensemble.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class Member:
    """One member of a fusion: a tested run folder, its score mode (``None``: the run's only
    tested mode) and its weight (normalised over the members)."""

    run_dir: Path
    mode: str | None = None
    weight: float = 1.0


@dataclass
class EnsembleOutcome:
    """What :func:`ensemble` produced.

    Attributes:
        out: the ensemble folder.
        folder: ``out/results/<name>``, the fused submission files.
        result: the evaluation of the fused scores, ``None`` when the test clips are unlabeled.
        thresholds: machine type -> the fused score's threshold.
        weights: each member's normalised weight, in member order.
    """

    out: Path
    folder: Path
    result: EvaluationResult | None
    thresholds: dict[str, float] = field(default_factory=dict)
    weights: list[float] = field(default_factory=list)


@dataclass
class _Read:
    """One member as read from its run folder."""

    run_dir: Path
    mode: str
    naming: str
    test_rows: dict[tuple[str, str], dict[str, str]]  # (machine, name) -> test_files.csv row
    order: list[tuple[str, str]]  # the scored clips in test_files.csv order
    test_scores: dict[tuple[str, str], float]
    cal: dict[tuple[str, str], tuple[str, str, float]]  # (machine, file) -> (section, domain, score)
    timings: dict[str, Any]
    formula: str | None

    @property
    def label(self) -> str:
        return f"{self.run_dir}:{self.mode}"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def tested_modes(run_dir: str | Path) -> list[str]:
    """The score modes a run folder holds test scores of (``results/<mode>/anomaly_score_*``),
    sorted; empty for an untested run."""
    results = Path(run_dir) / "results"
    if not results.is_dir():
        return []
    return sorted(p.name for p in results.iterdir() if p.is_dir() and any(p.glob("anomaly_score_*.csv")))


def _read_member(member: Member) -> _Read:
    """Read one member's test scores, test files, calibration scores and timings."""
    run = Path(member.run_dir)
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder")
    modes = tested_modes(run)
    if not modes or not (run / "test_files.csv").is_file():
        raise ConfigError(f"{run}: not tested (no results/<mode>/anomaly_score_*.csv and test_files.csv); "
                          f"run `stetho test --run {run}` first")
    mode = member.mode
    if mode is None:
        if len(modes) > 1:
            raise ConfigError(f"{run}: tested in {len(modes)} score modes ({', '.join(modes)}); name one as "
                              f"{run}:MODE")
        mode = modes[0]
    elif mode not in modes:
        raise ConfigError(f"{run}: no test scores of mode '{mode}'; tested modes: {', '.join(modes)}")
    test_rows = {(r["machine"], r["name"]): r for r in _rows(run / "test_files.csv")}
    sub = read_submission(run / "results" / mode)
    scores = {(m, name): s for (m, _), rows in sub.scores.items() for name, s in rows}
    unlisted = sorted(set(scores) - set(test_rows))
    unscored = sorted(set(test_rows) - set(scores))
    if unlisted or unscored:
        ex = ", ".join(f"{m}/{n}" for m, n in (unlisted + unscored)[:3])
        raise ConfigError(f"{run}: results/{mode} and test_files.csv list different clips ({len(unlisted)} scored "
                          f"but not listed, {len(unscored)} listed but not scored, e.g. {ex}): test the run again")
    cal_path = run / DECISION_SCORES
    if not cal_path.is_file():
        raise ConfigError(f"{cal_path}: missing: the run has no out-of-sample calibration scores to standardise "
                          "with (trained before stetho recorded them: train it again)")
    cal_rows = _rows(cal_path)
    if cal_rows and mode not in cal_rows[0]:
        raise ConfigError(f"{cal_path}: no column '{mode}' (has {', '.join(list(cal_rows[0])[4:])})")
    cal: dict[tuple[str, str], tuple[str, str, float]] = {}
    for r in cal_rows:
        value = float(r[mode]) if r[mode] not in ("", None) else math.nan
        if math.isfinite(value):
            cal[(r["machine"], r["file"])] = (r["section"], r["domain"], value)
    if not cal:
        raise ConfigError(f"{cal_path}: no calibration scores of mode '{mode}'")
    timings = json.loads((run / "timings.json").read_text(encoding="utf-8")) \
        if (run / "timings.json").is_file() else {}
    summary = run / "summary.csv"
    formula = next((r.get("formula") or None for r in _rows(summary) if r.get("score") == mode), None) \
        if summary.is_file() else None
    return _Read(run, mode, sub.naming, test_rows, [k for k in test_rows if k in scores], scores, cal, timings,
                 formula)


def _check_same_test_clips(reads: Sequence[_Read]) -> None:
    """Every member must have scored exactly the first member's test clips."""
    first = set(reads[0].test_scores)
    for r in reads[1:]:
        other = set(r.test_scores)
        if other != first:
            only_first, only_other = sorted(first - other), sorted(other - first)
            ex = ", ".join(f"{m}/{n}" for m, n in (only_first + only_other)[:3])
            raise ConfigError(f"{reads[0].label} and {r.label} scored different test clips ({len(only_first)} only "
                              f"in the first, {len(only_other)} only in the second, e.g. {ex}): fuse runs tested on "
                              "the same data")


def _standardizers(reads: Sequence[_Read], min_group: int) -> list[ScoreStandardizer]:
    """Each member's standardiser, fitted on all its calibration scores."""
    out = []
    for r in reads:
        keys = list(r.cal)
        try:
            out.append(ScoreStandardizer(min_group).fit([r.cal[k][2] for k in keys], [m for m, _ in keys],
                                                        [r.cal[k][1] for k in keys]))
        except ValueError as exc:
            raise ConfigError(f"{r.run_dir / DECISION_SCORES} ({r.mode}): {exc}") from None
    return out


def _z(st: ScoreStandardizer, r: _Read, scores: Sequence[float], machines: Sequence[str],
       domains: Sequence[str]) -> np.ndarray:
    try:
        return st.transform(scores, machines, domains)
    except ValueError as exc:
        raise ConfigError(f"{r.label}: {exc}") from None


def _fused_calibration(reads: Sequence[_Read], sts: Sequence[ScoreStandardizer],
                       weights: np.ndarray) -> tuple[list[tuple[str, str, str, str]], np.ndarray]:
    """The calibration clips every member shares ((file, machine, section, domain), in the first
    member's order) and their fused z-scores."""
    shared = [k for k in reads[0].cal if all(k in r.cal for r in reads[1:])]
    if not shared:
        runs = ", ".join(str(r.run_dir / DECISION_SCORES) for r in reads)
        raise ConfigError(f"no calibration clip is shared by all members ({runs}): their thresholds were fitted on "
                          "different held-out clips; fuse runs trained on the same data with the same seed")
    meta = [(f, m, *reads[0].cal[(m, f)][:2]) for m, f in shared]
    zs = [_z(st, r, [r.cal[k][2] for k in shared], [m for m, _ in shared], [r.cal[k][1] for k in shared])
          for st, r in zip(sts, reads)]
    return meta, fuse(zs, weights)


def _test_split(first: _Read, truth: list[Clip]) -> tuple[list[Clip], str | None]:
    """The whole test split of the data the first member was tested on (what an official score
    must cover), as `stetho test` reads it; the scored clips and a note when that data is gone."""
    test = first.timings.get("test") or {}
    root, dataset = test.get("data"), test.get("dataset")
    if root and dataset and Path(root).exists():
        cfg = resolve(load_run_config(first.run_dir))
        return data_test_split(cfg, root, Scan(dataset=dataset)), None
    return truth, (f"the test data of {first.run_dir} ({root or 'not recorded'}) is not there: whether the scores "
                   "cover its whole test split is unknown")


def _truth(first: _Read) -> list[Clip]:
    """The scored test clips as clip records (ground truth), from the first member's
    test_files.csv."""
    clips = []
    for key in first.order:
        r = first.test_rows[key]
        path = Path(r["file"])
        clips.append(Clip(path=path, machine=r["machine"], section=r["section"], split="test",
                          domain=r["domain"] or None, label=int(r["label"]) if r["label"] != "" else None,
                          key=r["name"] if r["name"] != path.name else None))
    return clips


def _evaluate(folder: Path, first: _Read, clips: list[Clip]) -> EvaluationResult | None:
    """Evaluate the fused submission files as `stetho test` does (partial over the labeled clips
    when some carry no label); ``None`` when none is labeled."""
    unlabeled = [c for c in clips if c.label is None]
    if len(unlabeled) == len(clips):
        log.info("test clips carry no labels: fused scores written to %s, no metrics", folder)
        return None
    truth = [c for c in clips if c.label is not None]
    test_split, note = _test_split(first, clips)
    dataset = (first.timings.get("test") or {}).get("dataset") or "folder"
    formula = first.formula or official_formula(dataset.partition(":")[0], truth)
    result = evaluate_folder(folder, first.run_dir, truth=truth, formula=formula, test_split=test_split,
                             leave_out={(c.machine, c.name) for c in unlabeled})
    if unlabeled:
        result.missing.append(f"{len(unlabeled)} of {len(clips)} test clip(s) carry no label and are left out of "
                              "the metrics")
    if note:
        result.missing.append(note)
    write_results(folder, result)
    write_section_metrics(folder / "sections.csv", result)
    return result


def _summed_seconds(reads: Sequence[_Read], stage: str) -> float | None:
    """The ``stage`` seconds summed over the member runs, each run once; None when one lacks them."""
    runs = {str(r.run_dir.resolve()): r for r in reads}
    values = [(r.timings.get(stage) or {}).get("seconds") for r in runs.values()]
    if any(v is None for v in values):
        return None
    return float(sum(values))


def _check_out(out: Path) -> None:
    """``out`` must be absent, empty, or an ensemble folder (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose a folder for the ensemble")
    if out.is_dir() and not (out / ENSEMBLE_RECORD).is_file() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is a folder that holds other files and no {ENSEMBLE_RECORD}; stetho only "
                          "replaces its own ensemble folders: choose a new or empty folder")


_MODE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


def parse_member(text: str) -> Member:
    """A member from ``RUN[:MODE][@WEIGHT]`` (the command line's form).

    The weight follows the last ``@`` and the mode the last ``:`` only when what follows is
    free of ``/`` (so ``C:/runs/ae`` and ``runs/a:b/ae`` are paths); an existing folder whose name
    holds the ``:`` wins over a split that names no folder.

    Raises:
        ConfigError: an empty run or mode, a weight that is not a non-negative number.
    """
    head, weight = text, 1.0
    at = text.rfind("@")
    if at >= 0 and "/" not in text[at + 1:]:
        head, raw = text[:at], text[at + 1:]
        try:
            weight = float(raw)
        except ValueError:
            raise ConfigError(f"member {text!r}: weight {raw!r} is not a number (RUN[:MODE][@WEIGHT])") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"member {text!r}: weight {raw!r} must be a non-negative number")
    run, mode = head, None
    colon = head.rfind(":")
    if colon >= 0 and "/" not in head[colon + 1:] and not (Path(head).is_dir() and not Path(head[:colon]).is_dir()):
        run, mode = head[:colon], head[colon + 1:]
        if not _MODE.match(mode):
            raise ConfigError(f"member {text!r}: mode {mode!r} is not a score mode name (RUN[:MODE][@WEIGHT])")
    if not run:
        raise ConfigError(f"member {text!r}: no run folder (RUN[:MODE][@WEIGHT])")
    return Member(Path(run), mode, weight)


def _parse_members(members: Sequence[Member | tuple]) -> list[Member]:
    out = []
    for m in members:
        if not isinstance(m, Member):
            m = Member(*m)
        out.append(Member(Path(m.run_dir), m.mode, 1.0 if m.weight is None else float(m.weight)))
    return out


def ensemble(
    members: Sequence[Member | tuple[str | Path, str | None, float]], out: str | Path, name: str = "ensemble",
    decision_fpr: float = 0.1, min_group: int = MIN_GROUP,
) -> EnsembleOutcome:
    """Fuse the test scores of tested runs into the run-like folder ``out`` (module docstring).

    Args:
        members: ``Member`` or ``(run_dir, mode or None, weight)`` each; at least two. Every
            member must have scored exactly the same test clips.
        out: the folder to write (absent, empty, or an earlier ensemble folder, replaced whole).
        name: the fused score mode (``results/<name>/``).
        decision_fpr: the share of normal clips the fused threshold flags.
        min_group: a (machine type, domain) needs this many calibration scores to be standardised
            on its own statistics (else the machine type's).

    Raises:
        ConfigError: fewer than two members, bad weights / name / decision_fpr, a member not tested
            or without the mode, members that scored different test clips, no calibration clip
            shared by every member (or none of a machine type), scores that cannot be
            standardised.
    """
    t_start = time.perf_counter()
    mems = _parse_members(members)
    if len(mems) < 2:
        raise ConfigError(f"an ensemble needs at least two members, got {len(mems)}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"ensemble name {name!r} must be a word of letters, digits, '_', '.', '+', '-'")
    if not 0.0 < float(decision_fpr) < 1.0:
        raise ConfigError(f"decision_fpr must be in (0, 1), got {decision_fpr}")
    if isinstance(min_group, bool) or not isinstance(min_group, int) or min_group < 2:
        raise ConfigError(f"min_group must be an integer of at least 2, got {min_group!r}")
    try:
        weights = normalized_weights([m.weight for m in mems], len(mems))
    except ValueError as exc:
        raise ConfigError(f"member weights: {exc}") from None
    out = Path(out)
    _check_out(out)
    reads = [_read_member(m) for m in mems]
    _check_same_test_clips(reads)
    sts = _standardizers(reads, min_group)

    first = reads[0]
    keys = first.order
    machines = [m for m, _ in keys]
    zs = [_z(st, r, [r.test_scores[k] for k in keys], machines, [r.test_rows[k]["domain"] for k in keys])
          for st, r in zip(sts, reads)]
    fused = fuse(zs, weights)
    cal_meta, cal_fused = _fused_calibration(reads, sts, weights)
    cal_machine = np.array([m for _, m, _, _ in cal_meta], dtype=object)
    cal_domain = np.array([d for _, _, _, d in cal_meta], dtype=object)
    thresholds: dict[str, float] = {}
    for machine in sorted(set(machines)):
        sel = cal_machine == machine
        if not sel.any():
            raise ConfigError(f"no calibration clip of {machine} is shared by all members: no threshold can be fitted")
        thresholds[machine] = fpr_threshold(cal_fused[sel], cal_domain[sel], decision_fpr)

    make_dirs(out.parent)
    with run_lock(out, "ensemble"):
        recover(out)
        _check_out(out)
        stage = staging_dir(out)
        if stage.exists():
            shutil.rmtree(stage)
        folder = make_dirs(stage / "results" / name)
        _write_scores(folder, first, fused, thresholds)
        atomic_write_bytes(stage / "test_files.csv", (first.run_dir / "test_files.csv").read_bytes())
        write_csv(stage / THRESHOLDS, [(name, m, t) for m, t in thresholds.items()], header=THRESHOLD_HEADER)
        write_csv(stage / DECISION_SCORES, [(*meta, float(s)) for meta, s in zip(cal_meta, cal_fused)],
                  header=[*CALIBRATION_COLUMNS, name])
        record = {
            "name": name, "decision_fpr": float(decision_fpr), "min_group": int(min_group),
            "members": [{"run": str(r.run_dir.resolve()), "mode": r.mode, "weight": float(w),
                         "standardisation": st.statistics()} for r, w, st in zip(reads, weights, sts)],
            "test_clips": len(keys), "shared_calibration_clips": len(cal_meta),
        }
        atomic_write_text(stage / ENSEMBLE_RECORD, json.dumps(record, indent=2) + "\n")
        _write_config(stage, first, name)
        clips = _truth(first)
        result = _evaluate(folder, first, clips)
        if result is not None:
            write_dict_csv(stage / "summary.csv", [{"score": name, "formula": result.formula, **score_cells(result),
                                                    "machines": " ".join(result.machines())}])
        timings = {"train": {"seconds": _summed_seconds(reads, "train")},
                   "test": {"seconds": _summed_seconds(reads, "test"), "clips": len(keys)},
                   "ensemble": {"seconds": time.perf_counter() - t_start}}
        atomic_write_text(stage / "timings.json", json.dumps(timings, indent=2) + "\n")  # last: complete
        swap_in(stage, out)
    return EnsembleOutcome(out=out, folder=out / "results" / name, result=result, thresholds=thresholds,
                           weights=[float(w) for w in weights])


def _write_scores(folder: Path, first: _Read, fused: np.ndarray, thresholds: Mapping[str, float]) -> None:
    """The fused anomaly_score_* and decision_result_* files (score above the machine type's
    threshold: anomalous), per machine type and section, in the members' naming."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(first.order):
        groups.setdefault((key[0], first.test_rows[key]["section"]), []).append(i)
    for (machine, section), idx in sorted(groups.items()):
        s = fused[idx]
        decisions = (s > thresholds[machine]).astype(np.int64)
        rows = [first.test_rows[first.order[i]] for i in idx]
        write_submission(folder, machine, section, [r["name"] for r in rows], s, decisions, naming=first.naming,
                         domains=[r["domain"] or None for r in rows])


def _write_config(stage: Path, first: _Read, name: str) -> None:
    """A config.yaml for readers of run folders (the report): the first member's data settings,
    ``model: ensemble``."""
    try:
        cfg = load_run_config(first.run_dir)
    except StethoError:
        cfg = {}
    keep = {k: cfg.get(k) for k in ("data", "dataset", "subset", "mimii_split", "formula", "machines")}
    test = first.timings.get("test") or {}
    text = yaml.safe_dump({**keep, "model": "ensemble", "params": {"record": ENSEMBLE_RECORD},
                           "test": {"score": name, "data": test.get("data")}}, sort_keys=False)
    atomic_write_text(stage / "config.yaml", text)
