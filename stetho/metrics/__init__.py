"""Official DCASE Task 2 metrics, with scores joined to the ground truth by file name.

The numbers are the ones the official DCASE 2022-2025 evaluators (and the task baselines) report,
computed with the same library calls (``sklearn.metrics.roc_auc_score``, ``scipy.stats.hmean``).
The one deliberate difference: the official evaluators pair the rows of a score file with the
ground truth by *sorted position*; stetho pairs them by *file name* and refuses to evaluate when
the two sets of names differ (missing, extra or duplicated files) or a score is not finite.

Definitions, per machine type and section (``y`` = 1 anomaly / 0 normal, ``s`` = anomaly score,
higher = more anomalous, ``d`` = ``"source"`` / ``"target"`` domain of the clip):

``AUC (source)``
    ROC AUC over the files with ``d == source or y == 1``: the *source-domain normals* plus
    *every anomaly of the section, of both domains*.
``AUC (target)``
    ROC AUC over the files with ``d == target or y == 1``: the target-domain normals plus every
    anomaly of the section, of both domains.
``pAUC``
    ``roc_auc_score(y, s, max_fpr=0.1)`` over *all* files of the section (both domains): the
    partial area under the ROC curve for FPR in [0, ``max_fpr``], McClish-standardised by
    scikit-learn, ``0.5 * (1 + (pa - min_area) / (max_area - min_area))`` with
    ``min_area = max_fpr**2 / 2`` and ``max_area = max_fpr`` (0.5 = chance, 1 = perfect).
``pAUC (source)`` / ``pAUC (target)``
    the same partial AUC over that domain's files only (its normals and its anomalies).
``AUC``
    ROC AUC over all files of the section (both domains).
``precision / recall / F1 score (source|target)``
    from 0/1 decisions (1 = anomaly, the positive class) over that domain's files only, with
    ``precision_recall_fscore_support(average="binary", zero_division=0)``; NaN when no decisions
    are given.

``PR-AUC``
    the area under the precision-recall curve over all files of the section, anomaly = positive
    (``sklearn.metrics.average_precision_score``: the step-wise sum ``Σ (R_n − R_{n−1}) P_n``,
    no interpolation); chance level = the share of anomalies. Not part of any official score;
    MIMII papers (CANDE-CP, seed 000) report it beside the ROC AUC.

``AUC (source only)`` / ``AUC (target only)``
    ROC AUC over that domain's files only (its normals and *its own* anomalies): the DCASE 2021
    AUC, computed on ``source_test`` / ``target_test`` separately.

Official scores, one per ``formula`` name in :data:`FORMULAS` (each with its own result table):

``"dcase2022"`` (used unchanged in 2022, 2023, 2024 and 2025)
    the harmonic mean (``scipy.stats.hmean``) of the flat list of every ``AUC (source)``,
    ``AUC (target)`` and ``pAUC`` of every machine type and section, each value floored at
    ``sys.float_info.epsilon`` so that a 0 does not make the harmonic mean fail. With one
    section per machine type (2023-2025) this equals the harmonic mean over machine types of
    ``hmean(AUC (source), AUC (target), pAUC)``. A section without domains contributes its
    ``AUC`` and ``pAUC`` instead.
``"dcase2021"``
    the eps-floored harmonic mean of the flat list of every ``AUC (d only)`` and ``pAUC (d)``,
    ``d`` in source/target, of every machine type and section: the row "harmonic mean over all
    machine types, sections, and domains" of the 2021 evaluator (y-kawagu/dcase2021_task2_evaluator).
    Unlike 2022+, each AUC sees only its own domain's anomalies. Every section needs domains.
``"dcase2020"``
    the unit is the machine ID (stored in ``Clip.section``). Per ID, ``AUC`` and ``pAUC`` over
    all its files; per machine type, the arithmetic mean over its IDs of each (the "Average" row
    of y-kawagu/dcase2020_task2_evaluator); the score is the arithmetic mean of the flat list of
    those per-type ``AUC`` and ``pAUC`` values (= the mean over machine types of
    ``(AUC + pAUC) / 2``). Each machine type weighs the same however many IDs it has. A section
    that has domains also uses its ``AUC`` and ``pAUC`` over all its files (both domains).
    (The 2020 challenge itself ranked teams by their average rank over machine types; this single
    number is the "average of AUC and pAUC over all machine types" that papers report.)

Datasets without domains (every clip's domain is ``None``, e.g. DCASE 2020 and MIMII): the
domain-wise metrics are not defined (NaN); ``AUC`` and ``pAUC`` are computed over all files of the
section.

Undefined values: an AUC over a subset containing only one class (or no files) is NaN, with a
logged warning.

Official or partial: a number is the *official score* only when the organisers' evaluator would
print the same number for the same files, that is when (1) every machine type, section and test
file the data holds was scored (:func:`evaluate` checks this against ``test_split``, the data's
whole test split, when given) and (2) every term of the year's formula is defined (no NaN).
Otherwise the :class:`EvaluationResult` is *partial*: its ``official_score`` is NaN, its
``partial_score`` is the same mean over the defined terms of what was scored (clearly not the
official score), and ``missing`` says in words what is missing, e.g. ``"machine type pump not
scored"`` or ``"fan section 01: no anomalies, so AUC (source), AUC (target) and pAUC are
undefined"``.

Modules: :mod:`~stetho.metrics.columns` (metric keys, table columns), :mod:`~stetho.metrics.basic`
(per-section metrics), :mod:`~stetho.metrics.means` (official and partial means),
:mod:`~stetho.metrics.formulas` (the year formulas and their tables), :mod:`~stetho.metrics.join`
(scores to ground truth by name), :mod:`~stetho.metrics.results` (:func:`evaluate`). Every public
name is importable from ``stetho.metrics``.
"""

from stetho.metrics.basic import MAX_FPR, SectionResult, auc, pauc, pr_auc, section_metrics
from stetho.metrics.columns import (
    ARITHMETIC_MEAN, HARMONIC_MEAN, METRIC_KEYS, NO_DOMAIN_COLUMNS, SUMMARY_PRINT_COLUMNS, TABLE_COLUMNS,
    TABLE_COLUMNS_2020, TABLE_COLUMNS_2021,
)
from stetho.metrics.formulas import FORMULAS, Formula, undefined_terms
from stetho.metrics.join import join_by_name
from stetho.metrics.means import EPS, official_mean, official_score, partial_mean, partial_score
from stetho.metrics.results import EvaluationResult, evaluate

__all__ = [
    "ARITHMETIC_MEAN", "EPS", "FORMULAS", "HARMONIC_MEAN", "MAX_FPR", "METRIC_KEYS", "NO_DOMAIN_COLUMNS",
    "SUMMARY_PRINT_COLUMNS", "TABLE_COLUMNS", "TABLE_COLUMNS_2020", "TABLE_COLUMNS_2021", "EvaluationResult",
    "Formula", "SectionResult", "auc", "evaluate", "join_by_name", "official_mean", "official_score",
    "partial_mean", "partial_score", "pauc", "pr_auc", "section_metrics", "undefined_terms",
]
