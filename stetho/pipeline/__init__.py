"""Train → test → evaluate, as the CLI and the Python API run it.

Modules: :mod:`~stetho.pipeline.common` (config → detector, scans, features, run-folder
bookkeeping), :mod:`~stetho.pipeline.training` (``train``), :mod:`~stetho.pipeline.testing`
(``test``), :mod:`~stetho.pipeline.evaluation` (``evaluate_folder``, ``label``, ``summarize``),
:mod:`~stetho.pipeline.runs` (``run``, ``compare``, ``report``), :mod:`~stetho.pipeline.ensemble`
(``ensemble``: score fusion of tested runs).

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

from stetho.outputs.compare import Comparison
from stetho.pipeline.common import load_run_config, make_detector
from stetho.pipeline.ensemble import EnsembleOutcome, Member, ensemble
from stetho.pipeline.evaluation import evaluate_folder, label, summarize
from stetho.pipeline.runs import compare, report, run
from stetho.pipeline.testing import TestOutcome, test
from stetho.pipeline.training import _model_file, train

__all__ = [
    "Comparison", "EnsembleOutcome", "Member", "TestOutcome", "compare", "ensemble", "evaluate_folder", "label",
    "load_run_config", "make_detector", "report", "run", "summarize", "test", "train", "_model_file",
]
