"""Evaluation of score files, labelling of evaluation sets, and summaries over runs."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from stetho.config import resolve
from stetho.datasets import Clip, is_dcase_data, label_clips, official_formula, read_ground_truth, write_manifest
from stetho.errors import DatasetError, StethoError
from stetho.metrics import EvaluationResult, evaluate
from stetho.outputs import read_submission
from stetho.outputs.summary import RunsSummary, summarize_runs
from stetho.pipeline.common import data_test_split, scan_split

log = logging.getLogger("stetho.pipeline")

def evaluate_folder(
    scores_dir: str | Path, data: str | Path, truth: Sequence[Clip] | None = None,
    formula: str | None = None, dataset: str = "auto", subset: str | None = None,
    test_split: Sequence[Clip] | None = None, leave_out: Collection[tuple[str, str]] = (),
    dcase_data: bool | None = None,
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

    ``dcase_data`` says whether the data is DCASE data (its score an official one, see
    :attr:`EvaluationResult.dcase_data`); default: from the layout of ``data`` when ``truth`` is
    not given, else True.
    """
    sub = read_submission(scores_dir)
    if leave_out:
        drop = set(leave_out)
        sub.scores = {k: [r for r in rows if (k[0], r[0]) not in drop] for k, rows in sub.scores.items()}
        sub.decisions = {k: [r for r in rows if (k[0], r[0]) not in drop] for k, rows in sub.decisions.items()}
    machines = sorted({m for m, _ in sub.scores})
    if truth is None:
        cfg = resolve({"dataset": dataset, "subset": subset})
        scan, _ = scan_split(cfg, data, "test", machines)
        truth = scan.clips
        formula = formula or official_formula(scan.dataset, truth)
        dcase_data = is_dcase_data(scan.dataset) if dcase_data is None else dcase_data
        if test_split is None:
            test_split = data_test_split(cfg, data, scan)
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
    result = evaluate(per_machine, truth, decisions, formula=formula, test_split=test_split)
    result.dcase_data = True if dcase_data is None else dcase_data
    return result


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
    train_scan, _ = scan_split(cfg, data, "train", machines)
    test_scan, _ = scan_split(cfg, data, "test", machines)
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


def summarize(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> RunsSummary:
    """Mean ± standard deviation over runs (e.g. seeds) per machine type and of the official
    score, per score mode; written as ``summary_runs_<mode>.csv`` into ``out`` when given."""
    summary = summarize_runs(run_dirs)
    if out is not None:
        summary.write(out)
    return summary
