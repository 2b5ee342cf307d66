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
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
from scipy.stats import hmean
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from stetho.datasets.base import listing
from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, SOURCE, TARGET, Clip
from stetho.errors import EvaluationError

log = logging.getLogger(__name__)

#: Floor applied to every value entering a harmonic mean (as the official evaluators do).
EPS = sys.float_info.epsilon
#: Default upper FPR bound of the partial AUC (DCASE uses p = 0.1 in every year since 2020).
MAX_FPR = 0.1

#: Result-table columns, in the DCASE baseline's vocabulary and order.
TABLE_COLUMNS: tuple[str, ...] = (
    "section",
    "AUC (source)",
    "AUC (target)",
    "pAUC",
    "pAUC (source)",
    "pAUC (target)",
    "precision (source)",
    "precision (target)",
    "recall (source)",
    "recall (target)",
    "F1 score (source)",
    "F1 score (target)",
)
#: Result-table columns for machine types whose data has no domains.
NO_DOMAIN_COLUMNS: tuple[str, ...] = ("section", "AUC", "pAUC")
#: Result-table columns of the 2021 evaluator: one row per (section, domain), within-domain values.
TABLE_COLUMNS_2021: tuple[str, ...] = ("section", "domain", "AUC", "pAUC", "precision", "recall", "F1 score")
#: Result-table columns of the 2020 evaluator: one row per machine ID.
TABLE_COLUMNS_2020: tuple[str, ...] = ("id", "AUC", "pAUC")
#: Keys of :func:`section_metrics`: the 2022 table columns (without ``section``), ``AUC`` over
#: all files, the within-domain AUCs of 2021, and ``PR-AUC`` over all files.
METRIC_KEYS: tuple[str, ...] = TABLE_COLUMNS[1:] + ("AUC", "AUC (source only)", "AUC (target only)", "PR-AUC")
#: Names of the two summary rows of :meth:`EvaluationResult.table`.
ARITHMETIC_MEAN = "arithmetic mean"
HARMONIC_MEAN = "harmonic mean"
#: Every column :meth:`EvaluationResult.machine_summary` may hold that is worth printing in a
#: one-screen table (the remaining precision/recall columns are in the CSVs); a printer keeps
#: the keys of the summary rows that are in this set, in the rows' order.
SUMMARY_PRINT_COLUMNS: tuple[str, ...] = (
    "machine",
    "AUC (source)",
    "pAUC (source)",
    "AUC (target)",
    "pAUC (target)",
    "pAUC",
    "AUC",
    "hmean",
    "score",
    "precision (source)",
    "recall (source)",
    "F1 score (source)",
    "F1 score (target)",
)
#: The precision/recall/F1 keys of :func:`section_metrics` (per domain).
_PRF_KEYS: tuple[str, ...] = TABLE_COLUMNS[6:]



# ---------------------------------------------------------------------------------------------
# Basic metrics
# ---------------------------------------------------------------------------------------------


def _as_labels(y_true, what: str) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise EvaluationError(f"{what}: labels must be one-dimensional, got shape {y.shape}")
    if y.size and not np.isin(y, (NORMAL, ANOMALY)).all():
        bad = sorted({repr(v) for v in y[~np.isin(y, (NORMAL, ANOMALY))].tolist()})
        raise EvaluationError(f"{what}: labels must be 0 (normal) or 1 (anomaly), got {', '.join(bad[:10])}")
    return y.astype(np.int64)


def _as_scores(scores, n: int, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != n:
        raise EvaluationError(f"{what}: {s.shape} scores for {n} labels (need one score per label)")
    if not np.isfinite(s).all():
        raise EvaluationError(f"{what}: {int((~np.isfinite(s)).sum())} score(s) are NaN or infinite")
    return s


def _both_classes(y: np.ndarray, what: str) -> bool:
    """True when ``y`` holds normals and anomalies; else a warning that ``what`` is NaN."""
    n_anomaly = int(y.sum())
    n_normal = int(y.size - n_anomaly)
    if n_anomaly == 0 or n_normal == 0:
        log.warning(
            "%s is undefined: its subset has %d normal and %d anomalous file(s) (both classes are "
            "needed); reported as NaN",
            what,
            n_normal,
            n_anomaly,
        )
        return False
    return True


def _roc(y: np.ndarray, s: np.ndarray, max_fpr: float | None, what: str) -> float:
    """roc_auc_score on validated arrays; NaN (with a warning) when only one class is present."""
    if not _both_classes(y, what):
        return math.nan
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


def _pr(y: np.ndarray, s: np.ndarray, what: str) -> float:
    """average_precision_score on validated arrays; NaN (with a warning) for one class only."""
    if not _both_classes(y, what):
        return math.nan
    return float(average_precision_score(y, s, pos_label=ANOMALY))


def _check_max_fpr(max_fpr: float) -> float:
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:
        raise EvaluationError(f"max_fpr must be in (0, 1], got {max_fpr}")
    return max_fpr


def auc(y_true, scores) -> float:
    """ROC AUC of ``scores`` (higher = more anomalous) against ``y_true`` (1 anomaly, 0 normal).

    Equals the fraction of (anomaly, normal) pairs in which the anomaly scores higher, ties
    counting one half. NaN, with a logged warning, when ``y_true`` holds only one class.
    """
    y = _as_labels(y_true, "AUC")
    return _roc(y, _as_scores(scores, y.size, "AUC"), None, "AUC")


def pauc(y_true, scores, max_fpr: float = MAX_FPR) -> float:
    """Partial ROC AUC for FPR in [0, ``max_fpr``], McClish-standardised (scikit-learn).

    ``roc_auc_score(y_true, scores, max_fpr=max_fpr)``: with ``pa`` the raw area under the ROC
    curve between FPR 0 and ``max_fpr`` (the curve interpolated linearly at ``max_fpr``), the
    result is ``0.5 * (1 + (pa - max_fpr**2 / 2) / (max_fpr - max_fpr**2 / 2))``. NaN, with a
    logged warning, when ``y_true`` holds only one class.
    """
    max_fpr = _check_max_fpr(max_fpr)
    y = _as_labels(y_true, "pAUC")
    return _roc(y, _as_scores(scores, y.size, "pAUC"), max_fpr, "pAUC")


def pr_auc(y_true, scores) -> float:
    """Area under the precision-recall curve (average precision, anomaly = positive).

    ``sklearn.metrics.average_precision_score``: ``Σ_n (R_n − R_{n−1}) P_n`` over the score
    thresholds, without interpolation. Chance level is the share of anomalies. NaN, with a logged
    warning, when ``y_true`` holds only one class.
    """
    y = _as_labels(y_true, "PR-AUC")
    return _pr(y, _as_scores(scores, y.size, "PR-AUC"), "PR-AUC")


def _prf(y: np.ndarray, decision: np.ndarray) -> tuple[float, float, float]:
    if y.size == 0:
        return math.nan, math.nan, math.nan
    p, r, f, _ = precision_recall_fscore_support(
        y, decision, average="binary", pos_label=ANOMALY, zero_division=0
    )
    return float(p), float(r), float(f)


def section_metrics(
    labels, scores, domains, decisions=None, max_fpr: float = MAX_FPR, *, where: str = ""
) -> dict[str, float]:
    """All metrics of one section (one machine type): a dict keyed by :data:`METRIC_KEYS`.

    Args:
        labels: 1 anomaly / 0 normal, one per file.
        scores: anomaly scores (higher = more anomalous), one per file.
        domains: ``"source"`` / ``"target"`` per file, or ``None`` for every file when the
            dataset has no domains (then only ``AUC`` and ``pAUC`` are defined, the rest NaN).
        decisions: optional 0/1 decisions (1 = anomaly) per file, for precision/recall/F1.
        max_fpr: upper FPR bound of the partial AUCs.
        where: prefix for warning messages, e.g. ``"fan section 00"``.

    Subsets (see the module docstring): ``AUC (source)`` = source normals + all anomalies (both
    domains); ``AUC (target)`` = target normals + all anomalies; ``pAUC``, ``AUC`` and ``PR-AUC``
    = all files; ``AUC (d only)``, ``pAUC (d)`` and precision/recall/F1 ``(d)`` = the files of
    domain ``d`` only. A subset with one class only gives NaN and a logged warning.
    """
    max_fpr = _check_max_fpr(max_fpr)
    prefix = f"{where}: " if where else ""
    y = _as_labels(labels, f"{prefix}section metrics")
    s = _as_scores(scores, y.size, f"{prefix}section metrics")
    d = list(domains)
    if len(d) != y.size:
        raise EvaluationError(f"{prefix}{len(d)} domains for {y.size} labels (need one per file)")
    has_domains = _domain_mode(d, where)
    dec = None
    if decisions is not None:
        dec = np.asarray(decisions)
        if dec.ndim != 1 or dec.shape[0] != y.size:
            raise EvaluationError(f"{prefix}{dec.shape} decisions for {y.size} labels (need one per file)")
        if not np.isin(dec, (NORMAL, ANOMALY)).all():
            raise EvaluationError(f"{prefix}decisions must be 0 (normal) or 1 (anomaly)")
        dec = dec.astype(np.int64)

    out = {k: math.nan for k in METRIC_KEYS}
    out["AUC"] = _roc(y, s, None, f"{prefix}AUC")
    out["pAUC"] = _roc(y, s, max_fpr, f"{prefix}pAUC")
    out["PR-AUC"] = _pr(y, s, f"{prefix}PR-AUC")
    if not has_domains:
        return out
    dom = np.array(d, dtype=object)
    anomaly = y == ANOMALY
    for name in DOMAINS:
        in_domain = dom == name
        auc_subset = in_domain | anomaly  # this domain's normals + ALL anomalies (both domains)
        out[f"AUC ({name})"] = _roc(y[auc_subset], s[auc_subset], None, f"{prefix}AUC ({name})")
        out[f"AUC ({name} only)"] = _roc(y[in_domain], s[in_domain], None, f"{prefix}AUC ({name} only)")
        out[f"pAUC ({name})"] = _roc(y[in_domain], s[in_domain], max_fpr, f"{prefix}pAUC ({name})")
        if dec is not None:
            p, r, f = _prf(y[in_domain], dec[in_domain])
            out[f"precision ({name})"], out[f"recall ({name})"], out[f"F1 score ({name})"] = p, r, f
    return out


def _domain_mode(domains: Sequence[str | None], where: str) -> bool:
    """True when every file has a domain, False when none has; anything else is an error."""
    n_none = sum(1 for x in domains if x is None)
    bad = sorted({repr(x) for x in domains if x is not None and x not in DOMAINS})
    prefix = f"{where}: " if where else ""
    if bad:
        raise EvaluationError(f"{prefix}domains must be {SOURCE!r}, {TARGET!r} or None, got {', '.join(bad[:10])}")
    if 0 < n_none < len(domains):
        raise EvaluationError(
            f"{prefix}{n_none} of {len(domains)} files have no domain; a section's files must all "
            "have a domain or all have none"
        )
    return n_none == 0


# ---------------------------------------------------------------------------------------------
# Harmonic means / official score
# ---------------------------------------------------------------------------------------------


def _hmean_floor(values: Iterable[float]) -> float:
    """hmean of the finite values, each floored at EPS; NaN when there is none."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    return float(hmean(np.maximum(v, EPS)))


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def _defined(values: Iterable[float], mean: str) -> list[float]:
    """The values as floats, warning once when some are NaN (they are left out of ``mean``)."""
    v = [float(x) for x in values]
    n_bad = sum(1 for x in v if not math.isfinite(x))
    if n_bad:
        log.warning(
            "partial score: %d of %d value(s) are undefined (NaN) and are left out of the %s; "
            "this is not the official score",
            n_bad,
            len(v),
            mean,
        )
    return v


def _all_defined(values: Iterable[float]) -> list[float] | None:
    """The values as floats, or None (with a warning) when any is NaN: an official score needs
    every term."""
    v = [float(x) for x in values]
    n_bad = sum(1 for x in v if not math.isfinite(x))
    if n_bad or not v:
        log.warning(
            "official score undefined: %d of %d value(s) are NaN (the official evaluators need every "
            "term); the mean over the defined ones is the partial score",
            n_bad,
            len(v),
        )
        return None
    return v


def official_score(values: Iterable[float]) -> float:
    """Harmonic mean of ``values``, each floored at ``sys.float_info.epsilon`` (as the official
    evaluators do, so that a 0 does not fail): the 2021-2025 official score's combination.
    NaN, with a logged warning, when any value is NaN (or there is none): the official score
    needs every term; :func:`partial_score` averages the defined ones.
    """
    v = _all_defined(values)
    return math.nan if v is None else _hmean_floor(v)


def partial_score(values: Iterable[float]) -> float:
    """Like :func:`official_score` over the finite ``values`` only (NaN values are left out, with a
    logged warning); NaN when none is finite. Not an official score when a value was left out."""
    result = _hmean_floor(_defined(values, "harmonic mean"))
    if math.isnan(result):
        log.warning("partial score: no defined value to average; reported as NaN")
    return result


def official_mean(values: Iterable[float]) -> float:
    """Arithmetic mean of ``values`` (no floor needed), the 2020 official score's combination.
    NaN, with a logged warning, when any value is NaN (or there is none); see :func:`partial_mean`.
    """
    v = _all_defined(values)
    return math.nan if v is None else _nanmean(v)


def partial_mean(values: Iterable[float]) -> float:
    """Like :func:`official_mean` over the finite ``values`` only (NaN values are left out, with a
    logged warning); NaN when none is finite."""
    result = _nanmean(_defined(values, "arithmetic mean"))
    if math.isnan(result):
        log.warning("partial score: no defined value to average; reported as NaN")
    return result


# ---------------------------------------------------------------------------------------------
# Official-score formulas, one per DCASE year, each with its evaluator's result table
# ---------------------------------------------------------------------------------------------
# Every function below takes SectionResults: ``score`` those of all machine types, the table
# functions those of one machine type (in section order).


def _prf_means(secs: Sequence[SectionResult]) -> dict[str, float]:
    """Means over sections of the precision/recall/F1 columns that have a finite value."""
    return {
        k: _nanmean(s.metrics[k] for s in secs)
        for k in _PRF_KEYS
        if any(math.isfinite(s.metrics[k]) for s in secs)
    }


def _mean_rows(
    label_key: str, body: Sequence[dict[str, object]], cols: Sequence[str], **fill: object
) -> list[dict[str, object]]:
    """The "arithmetic mean" and "harmonic mean" rows over ``body`` (finite values; the harmonic
    mean floors each at eps; a column without a finite value stays NaN)."""
    return [
        {label_key: ARITHMETIC_MEAN, **fill, **{c: _nanmean(r[c] for r in body) for c in cols}},
        {label_key: HARMONIC_MEAN, **fill, **{c: _hmean_floor(r[c] for r in body) for c in cols}},
    ]


# -- 2022-2025 ---------------------------------------------------------------------------------


def _keys_2022(sec: SectionResult) -> tuple[str, ...]:
    return ("AUC (source)", "AUC (target)", "pAUC") if sec.has_domains else ("AUC", "pAUC")


def _terms_2022(sections: Sequence[SectionResult]) -> list[tuple[SectionResult, str]]:
    """AUC (source), AUC (target), pAUC of every section (AUC, pAUC without domains)."""
    return [(sec, k) for sec in sections for k in _keys_2022(sec)]


def _score_2022(sections: Sequence[SectionResult]) -> float:
    """hmean of the defined :func:`_terms_2022` (the official score when all are defined)."""
    return partial_score(sec.metrics[k] for sec, k in _terms_2022(sections))


def _columns_2022(secs: Sequence[SectionResult]) -> tuple[str, ...]:
    return TABLE_COLUMNS if any(s.has_domains for s in secs) else NO_DOMAIN_COLUMNS


def _table_2022(secs: Sequence[SectionResult]) -> list[dict[str, object]]:
    cols = _columns_2022(secs)
    rows: list[dict[str, object]] = [{"section": s.section, **{c: s.metrics[c] for c in cols[1:]}} for s in secs]
    return rows + _mean_rows("section", rows, cols[1:])


def _summary_2022(secs: Sequence[SectionResult]) -> dict[str, object]:
    keys = ("AUC (source)", "AUC (target)", "pAUC") if any(s.has_domains for s in secs) else ("AUC", "pAUC")
    row: dict[str, object] = {k: _nanmean(s.metrics[k] for s in secs) for k in keys}
    row["hmean"] = _hmean_floor(s.metrics[k] for s in secs for k in keys)
    return {**row, **_prf_means(secs)}


# -- 2021 --------------------------------------------------------------------------------------


def _require_domains(secs: Sequence[SectionResult]) -> None:
    bad = [f"{s.machine} section {s.section}" for s in secs if not s.has_domains]
    if bad:
        raise EvaluationError(
            "formula 'dcase2021' scores the source and target domain of every section separately, "
            f"but {len(bad)} section(s) have no domains: {listing(bad, sep=', ')}. DCASE 2021 data always has "
            "domains; for data without domains use formula 'dcase2020' (or 'dcase2022')."
        )


def _values_2021(secs: Sequence[SectionResult]) -> list[float]:
    """AUC (d only) and pAUC (d) of every section and domain d: the within-domain values."""
    _require_domains(secs)
    return [s.metrics[k] for s in secs for d in DOMAINS for k in (f"AUC ({d} only)", f"pAUC ({d})")]


def _terms_2021(sections: Sequence[SectionResult]) -> list[tuple[SectionResult, str]]:
    """AUC (d only) and pAUC (d) of every section and domain d, in :func:`_values_2021` order."""
    _require_domains(sections)
    return [(s, k) for s in sections for d in DOMAINS for k in (f"AUC ({d} only)", f"pAUC ({d})")]


def _score_2021(sections: Sequence[SectionResult]) -> float:
    # The flat list holds as many AUCs as pAUCs, so this also equals hmean(hmean of the AUCs,
    # hmean of the pAUCs), the two cells of the evaluator's last row.
    return partial_score(_values_2021(sections))


def _columns_2021(secs: Sequence[SectionResult]) -> tuple[str, ...]:
    return TABLE_COLUMNS_2021


def _table_2021(secs: Sequence[SectionResult]) -> list[dict[str, object]]:
    _require_domains(secs)
    rows: list[dict[str, object]] = []
    for d in DOMAINS:  # the evaluator's order: every section's source_test, then target_test
        for s in secs:
            m = s.metrics
            rows.append({
                "section": s.section, "domain": d, "AUC": m[f"AUC ({d} only)"], "pAUC": m[f"pAUC ({d})"],
                "precision": m[f"precision ({d})"], "recall": m[f"recall ({d})"], "F1 score": m[f"F1 score ({d})"],
            })
    return rows + _mean_rows("section", rows, TABLE_COLUMNS_2021[2:], domain="")


def _summary_2021(secs: Sequence[SectionResult]) -> dict[str, object]:
    _require_domains(secs)
    row: dict[str, object] = {}
    for d in DOMAINS:
        row[f"AUC ({d})"] = _nanmean(s.metrics[f"AUC ({d} only)"] for s in secs)
        row[f"pAUC ({d})"] = _nanmean(s.metrics[f"pAUC ({d})"] for s in secs)
    row["hmean"] = _hmean_floor(_values_2021(secs))
    return {**row, **_prf_means(secs)}


# -- 2020 --------------------------------------------------------------------------------------


def _type_means_2020(secs: Sequence[SectionResult]) -> tuple[float, float]:
    """The evaluator's "Average" row: means over the machine IDs of AUC and of pAUC."""
    return _nanmean(s.metrics["AUC"] for s in secs), _nanmean(s.metrics["pAUC"] for s in secs)


def _score_2020(sections: Sequence[SectionResult]) -> float:
    by_machine: dict[str, list[SectionResult]] = {}
    for s in sections:
        by_machine.setdefault(s.machine, []).append(s)
    # Averaging per machine type first weighs every type equally, whatever its number of IDs.
    return partial_mean(v for m in sorted(by_machine) for v in _type_means_2020(by_machine[m]))


def _terms_2020(sections: Sequence[SectionResult]) -> list[tuple[SectionResult, str]]:
    """AUC and pAUC of every machine ID (the values the per-type means average)."""
    return [(s, k) for s in sections for k in ("AUC", "pAUC")]


def _columns_2020(secs: Sequence[SectionResult]) -> tuple[str, ...]:
    return TABLE_COLUMNS_2020


def _table_2020(secs: Sequence[SectionResult]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = [
        {"id": s.section, "AUC": s.metrics["AUC"], "pAUC": s.metrics["pAUC"]} for s in secs
    ]
    a, p = _type_means_2020(secs)
    return rows + [{"id": ARITHMETIC_MEAN, "AUC": a, "pAUC": p}]


def _summary_2020(secs: Sequence[SectionResult]) -> dict[str, object]:
    a, p = _type_means_2020(secs)
    return {"AUC": a, "pAUC": p, "score": (a + p) / 2}


@dataclass(frozen=True)
class Formula:
    """An official-score formula and the result tables of the evaluator of its year.

    Attributes:
        name: the key in :data:`FORMULAS` (``"dcase2020"`` ... ``"dcase2025"``).
        description: one sentence saying what the score averages, to print next to it.
        score: all :class:`SectionResult` s (every machine type) -> the score: the mean over the
            defined terms (the official score when every term is defined, else the partial score).
        terms: all :class:`SectionResult` s -> the ``(section, metric key)`` pairs that enter the
            score; a NaN among them makes the result partial.
        columns: one machine type's sections -> its result-table columns.
        table: one machine type's sections -> its result-table rows (:meth:`EvaluationResult.table`).
        summary: one machine type's sections -> its summary row without ``"machine"``
            (:meth:`EvaluationResult.machine_summary`).
        naming: the submission-file naming of that year's baseline and evaluator
            (``"section"``, ``"section_domain"`` or ``"id"``, see :mod:`stetho.outputs.dcase`).
    """

    name: str
    description: str
    score: Callable[[Sequence[SectionResult]], float]
    terms: Callable[[Sequence[SectionResult]], list[tuple[SectionResult, str]]]
    columns: Callable[[Sequence[SectionResult]], tuple[str, ...]]
    table: Callable[[Sequence[SectionResult]], list[dict[str, object]]]
    summary: Callable[[Sequence[SectionResult]], dict[str, object]]
    naming: str


def _dcase2022_like(year: int) -> Formula:
    return Formula(
        name=f"dcase{year}",
        description=(
            f"DCASE {year}: harmonic mean of the AUC (source), AUC (target) and pAUC of every machine "
            "type and section, each AUC using the anomalies of both domains"
        ),
        score=_score_2022, terms=_terms_2022, columns=_columns_2022, table=_table_2022, summary=_summary_2022,
        naming="section",
    )


#: Official-score formulas by name. 2023-2025 use the 2022 formula (and tables) unchanged.
FORMULAS: dict[str, Formula] = {
    "dcase2020": Formula(
        name="dcase2020",
        description=(
            "DCASE 2020: arithmetic mean over machine types of the AUC and pAUC, each averaged over "
            "the machine IDs of its type"
        ),
        score=_score_2020, terms=_terms_2020, columns=_columns_2020, table=_table_2020, summary=_summary_2020,
        naming="id",
    ),
    "dcase2021": Formula(
        name="dcase2021",
        description=(
            "DCASE 2021: harmonic mean of the within-domain AUC and pAUC of every machine type, "
            "section and domain"
        ),
        score=_score_2021, terms=_terms_2021, columns=_columns_2021, table=_table_2021, summary=_summary_2021,
        naming="section_domain",
    ),
    **{f"dcase{y}": _dcase2022_like(y) for y in (2022, 2023, 2024, 2025)},
}


def _formula(name: str) -> Formula:
    try:
        return FORMULAS[name]
    except (KeyError, TypeError):
        raise EvaluationError(
            f"unknown official-score formula {name!r}; known formulas: {', '.join(FORMULAS)}"
        ) from None


def _unit(formula: Formula) -> str:
    """What a :class:`SectionResult` is called in ``formula``'s year: a section, or a machine ID."""
    return "ID" if formula.naming == "id" else "section"


def _why_undefined(sec: SectionResult, key: str) -> str:
    """Why metric ``key`` of ``sec`` is NaN, in words (its subset holds one class only)."""
    n_normal_all = sec.n_files - sec.n_anomalies
    domain = next((d for d in DOMAINS if f"({d}" in key), None)
    counts = sec.domain_counts.get(domain) if domain else None
    if domain is None:  # AUC, pAUC, PR-AUC: all files of the section
        subset = (n_normal_all, sec.n_anomalies)
        where = ""
    elif key == f"AUC ({domain})":  # this domain's normals + all anomalies
        if sec.n_anomalies == 0:
            return "no anomalies"
        if counts is None:
            return f"one class only among the {domain}-domain normals and all anomalies"
        subset = (counts[0], sec.n_anomalies)
        where = f" in the {domain} domain"
    else:  # within-domain metrics
        if counts is None:
            return f"one class only in the {domain} domain"
        if counts == (0, 0):
            return f"no {domain}-domain files"
        subset = counts
        where = f" in the {domain} domain"
    if subset[1] == 0:
        return f"no anomalies{where}"
    if subset[0] == 0:
        return f"no normal clips{where}"
    return f"one class only{where}"  # not reached for a NaN from section_metrics


def undefined_terms(sections: Sequence[SectionResult], formula: str) -> list[str]:
    """The terms of ``formula``'s score that are NaN, in words, one line per section and cause:
    e.g. ``"fan section 00: no anomalies in the target domain, so pAUC (target) is undefined"``.
    Empty when every term is defined."""
    spec = _formula(formula)
    causes: dict[tuple[str, str, str], list[str]] = {}
    for sec, key in spec.terms(sections):
        if not math.isfinite(float(sec.metrics[key])):
            causes.setdefault((sec.machine, sec.section, _why_undefined(sec, key)), []).append(key)
    out = []
    for (machine, section, cause), keys in causes.items():
        names = keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]
        verb = "is" if len(keys) == 1 else "are"
        out.append(f"{machine} {_unit(spec)} {section}: {cause}, so {names} {verb} undefined")
    return out


# ---------------------------------------------------------------------------------------------
# Joining scores to ground truth by file name
# ---------------------------------------------------------------------------------------------


def _shown(name: str) -> str:
    """``name`` as printed in an error: with escapes (``repr``) when it holds characters that do
    not print (e.g. ``'\\ufeffsection_00_0000.wav'``)."""
    return name if name.isprintable() else repr(name)


def _key(name) -> str:
    if isinstance(name, os.PathLike):
        return PurePath(name).name
    return str(name)


def _to_float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def join_by_name(
    scores: Sequence[tuple[str, float]], truth: Sequence[Clip], what: str = "scores"
) -> tuple[list[Clip], np.ndarray]:
    """Pair each ground-truth clip with its value by *file name* (``Clip.name``).

    Args:
        scores: ``(file name, value)`` pairs in any order (a path-like name counts by its file name).
        truth: the ground-truth clips; their file names must be unique.
        what: what the values are, for error messages (``"scores"``, ``"decisions"``).

    Returns:
        The truth clips in truth order and a float64 array of their values, aligned.

    Raises:
        EvaluationError: listing (up to 20 each, with counts) the missing files (in the truth,
            not in ``scores``), the extra files (in ``scores``, not in the truth), the names
            duplicated in ``scores`` or in the truth, and the files whose value is NaN, infinite
            or not a number. Every problem is reported at once.

    The official evaluators pair by sorted position, which silently mis-scores a file list that
    differs from the truth; stetho never pairs by position.
    """
    truth = list(truth)
    pairs = [(_key(n), v) for n, v in scores]
    truth_names = [c.name for c in truth]
    score_names = [n for n, _ in pairs]

    truth_count = Counter(truth_names)
    score_count = Counter(score_names)
    dup_truth = [n for n, k in truth_count.items() if k > 1]
    dup_scores = [n for n, k in score_count.items() if k > 1]
    # Names with invisible characters (a byte-order mark, a zero-width space ...) are shown with
    # their escapes, or a missing and an extra name would print identically.
    missing = [_shown(n) for n in truth_count if n not in score_count]
    extra = [_shown(n) for n in score_count if n not in truth_count]

    value_of: dict[str, float] = {}
    bad_values: list[str] = []
    for name, raw in pairs:
        v = _to_float(raw)
        if v is None or not math.isfinite(v):
            bad_values.append(f"{name} ({raw!r})")
        else:
            value_of.setdefault(name, v)

    problems: list[str] = []
    if missing:
        problems.append(
            f"  {len(missing)} missing (in the ground truth, not in the {what}): {listing(missing, sep=', ')}"
        )
    if extra:
        problems.append(f"  {len(extra)} extra (in the {what}, not in the ground truth): {listing(extra, sep=', ')}")
    if dup_scores:
        problems.append(
            f"  {len(dup_scores)} duplicated in the {what}: "
            + listing([f"{n} (x{score_count[n]})" for n in dup_scores], sep=', ')
        )
    if dup_truth:
        problems.append(
            f"  {len(dup_truth)} duplicated in the ground truth: "
            + listing([f"{n} (x{truth_count[n]})" for n in dup_truth], sep=', ')
        )
    if bad_values:
        problems.append(
            f"  {len(bad_values)} with a NaN, infinite or non-numeric value in the {what}: "
            + listing(bad_values, sep=', ')
        )
    if problems:
        hints = [f"{what} are joined to the ground truth by file name, never by position."]
        if extra and any(("/" in n or "\\" in n) for n in extra):
            hints.append("Only file names are compared: give names without their directory.")
        if dup_truth:
            hints.append(
                "File names must be unique among the clips evaluated together; when machine types "
                "share file names, give the values per machine type (a mapping machine -> pairs)."
            )
        raise EvaluationError(
            f"{what} do not match the ground truth ({len(truth)} clips, {len(pairs)} {what}):\n"
            + "\n".join(problems)
            + "\n"
            + " ".join(hints)
        )
    return truth, np.array([value_of[n] for n in truth_names], dtype=np.float64)


def _join(values, truth: list[Clip], what: str) -> np.ndarray:
    """join_by_name on a flat sequence, or per machine type on a mapping machine -> pairs."""
    if not isinstance(values, Mapping):
        return join_by_name(values, truth, what)[1]
    machines = sorted({c.machine for c in truth})
    problems: list[str] = []
    missing = [m for m in machines if m not in values]
    extra = sorted(str(m) for m in values if m not in machines)
    if missing:
        problems.append(f"no {what} for machine type(s) {', '.join(missing)}")
    if extra:
        problems.append(f"{what} for machine type(s) {', '.join(extra)} that are not in the ground truth")
    out = np.empty(len(truth), dtype=np.float64)
    for m in machines:
        if m not in values:
            continue
        idx = [i for i, c in enumerate(truth) if c.machine == m]
        try:
            _, v = join_by_name(values[m], [truth[i] for i in idx], f"{what} of machine type {m!r}")
        except EvaluationError as err:
            problems.append(str(err))
            continue
        out[idx] = v
    if problems:
        raise EvaluationError("\n".join(problems))
    return out


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class SectionResult:
    """The metrics of one (machine type, section).

    Attributes:
        machine: machine type.
        section: section id.
        metrics: :func:`section_metrics` output, keyed by :data:`METRIC_KEYS`.
        n_files: number of evaluated files.
        n_anomalies: how many of them are anomalies.
        has_domains: False when the section's files have no domain (only AUC and pAUC defined).
        domain_counts: ``{domain: (normal files, anomalous files)}`` (empty without domains); says
            why a domain's metric is undefined.
    """

    machine: str
    section: str
    metrics: dict[str, float]
    n_files: int
    n_anomalies: int = 0
    has_domains: bool = True
    domain_counts: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` computed.

    Attributes:
        sections: one result per (machine type, section), sorted by machine type then section.
        partial_score: the score of ``formula`` over the defined terms of what was scored (see the
            module docstring); the official score when :attr:`partial` is False.
        formula: the formula name, a key of :data:`FORMULAS`.
        max_fpr: upper FPR bound used for the partial AUCs.
        missing: why the result is not the official score, in words (parts of the data that
            were not scored, terms of the formula that are undefined); empty when it is.
            :func:`evaluate` fills it.
    """

    sections: list[SectionResult]
    partial_score: float
    formula: str
    max_fpr: float = MAX_FPR
    missing: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        """True when something is :attr:`missing`: then there is no official score."""
        return bool(self.missing)

    @property
    def official_score(self) -> float:
        """The official score (what the organisers' evaluator would print for the same files), or
        NaN when the result is :attr:`partial` (then see :attr:`partial_score`)."""
        return math.nan if self.partial else self.partial_score

    @property
    def status(self) -> str:
        """``"official"`` or ``"partial"``."""
        return "partial" if self.partial else "official"

    def machines(self) -> list[str]:
        """The evaluated machine types, sorted."""
        return sorted({s.machine for s in self.sections})

    def _of(self, machine: str) -> list[SectionResult]:
        secs = [s for s in self.sections if s.machine == machine]
        if not secs:
            raise EvaluationError(
                f"no results for machine type {machine!r}; evaluated: {', '.join(self.machines())}"
            )
        return secs

    @property
    def formula_description(self) -> str:
        """One sentence saying what the score averages (:attr:`Formula.description`)."""
        return _formula(self.formula).description

    def columns(self, machine: str) -> tuple[str, ...]:
        """The table columns of ``machine`` under :attr:`formula`.

        ``"dcase2022"``-``"dcase2025"``: :data:`TABLE_COLUMNS`, or :data:`NO_DOMAIN_COLUMNS` when
        none of its sections has domains; ``"dcase2021"``: :data:`TABLE_COLUMNS_2021`;
        ``"dcase2020"``: :data:`TABLE_COLUMNS_2020`.
        """
        return _formula(self.formula).columns(self._of(machine))

    def table(self, machine: str) -> list[dict[str, object]]:
        """The result table of one machine type, as the evaluator of :attr:`formula`'s year writes it.

        Every row has the keys :meth:`columns`, in that order.

        - ``"dcase2022"``-``"dcase2025"`` (the baseline's ``result.csv``): one row per section,
          then an ``"arithmetic mean"`` and a ``"harmonic mean"`` row (in the ``section`` column):
          the mean over sections of each column.
        - ``"dcase2021"``: one row per (section, domain), every section's source rows first then
          its target rows as the 2021 evaluator orders them; ``AUC`` = ``AUC (d only)``, ``pAUC`` =
          ``pAUC (d)``, precision/recall/F1 of domain ``d``; then the two mean rows over all those
          rows (``domain`` empty).
        - ``"dcase2020"``: one row per machine ID (``id``), then an ``"arithmetic mean"`` row
          (the 2020 evaluator's "Average").

        Means are over the finite values (the harmonic mean floors each value at eps); a column
        without any finite value (e.g. precision when no decisions were given) stays NaN.
        """
        return _formula(self.formula).table(self._of(machine))

    def machine_summary(self) -> list[dict[str, object]]:
        """One row per machine type; keys depend on :attr:`formula` (all in
        :data:`SUMMARY_PRINT_COLUMNS` or the precision/recall/F1 columns):

        - ``"dcase2022"``-``"dcase2025"``: ``machine``; ``AUC (source)``, ``AUC (target)``,
          ``pAUC`` (arithmetic means over its sections; ``AUC`` and ``pAUC`` for machine types
          without domains); ``hmean`` = the eps-floored harmonic mean of that machine type's flat
          list of those values over its sections (its share of the official score).
        - ``"dcase2021"``: ``machine``; ``AUC (source)``, ``pAUC (source)``, ``AUC (target)``,
          ``pAUC (target)``: arithmetic means over sections of the *within-domain* values
          (``AUC (d only)``, ``pAUC (d)``); ``hmean`` = the eps-floored harmonic mean of that
          machine type's flat list of within-domain AUCs and pAUCs (its share of the score).
        - ``"dcase2020"``: ``machine``; ``AUC``, ``pAUC`` (means over its machine IDs);
          ``score`` = ``(AUC + pAUC) / 2`` (the official score is the mean of these).

        2021-2025 rows end with the arithmetic means of the precision/recall/F1 columns when
        decisions were evaluated.
        """
        formula = _formula(self.formula)
        return [{"machine": m, **formula.summary(self._of(m))} for m in self.machines()]


def evaluate(
    scores: Sequence[tuple[str, float]] | Mapping[str, Sequence[tuple[str, float]]],
    truth: Sequence[Clip],
    decisions: Sequence[tuple[str, int]] | Mapping[str, Sequence[tuple[str, int]]] | None = None,
    formula: str = "dcase2022",
    max_fpr: float = MAX_FPR,
    test_split: Sequence[Clip] | None = None,
) -> EvaluationResult:
    """Evaluate anomaly scores (and optionally 0/1 decisions) against labeled ground truth.

    Args:
        scores: ``(file name, score)`` pairs, higher = more anomalous, joined to ``truth`` by
            file name (:func:`join_by_name`; every truth clip needs exactly one finite score and
            no other name may appear). When machine types share file names (DCASE evaluation
            sets name every machine's files ``section_00_0000.wav`` ...), give a mapping
            ``machine type -> pairs`` instead: each machine's pairs are then joined to that
            machine's clips.
        truth: labeled clips (``label`` 0 or 1, never ``None``).
        decisions: optional ``(file name, 0|1)`` pairs (or a mapping as for ``scores``), joined
            with the same strictness; give precision/recall/F1 per domain.
        formula: official-score formula, one of :data:`FORMULAS`: ``"dcase2020"``,
            ``"dcase2021"`` or ``"dcase2022"`` (= ``"dcase2023"``, ``"dcase2024"``,
            ``"dcase2025"``); see the module docstring.
        max_fpr: upper FPR bound of the partial AUCs (0.1 in DCASE).
        test_split: every test clip the data holds (labeled or not), e.g. the scan of the whole
            data root before a ``--machines`` restriction. A machine type, section or file of it
            that ``truth`` leaves out makes the result partial. Default: ``truth`` is the data.

    Returns:
        Per-section metrics grouped by ``(clip.machine, clip.section)`` in sorted order, the
        score, and what is missing for it to be the official score (:class:`EvaluationResult`).

    Raises:
        EvaluationError: unknown formula, unlabeled clips, empty truth, values that do not
            match the truth (see :func:`join_by_name`), or a section without domains under
            ``"dcase2021"``.
    """
    spec = _formula(formula)
    max_fpr = _check_max_fpr(max_fpr)
    truth = list(truth)
    if not truth:
        raise EvaluationError("no ground-truth clips to evaluate")
    unlabeled = [c.name for c in truth if c.label is None]
    if unlabeled:
        raise EvaluationError(
            f"{len(unlabeled)} ground-truth clip(s) have no label (unlabeled evaluation data "
            f"cannot be scored): {listing(unlabeled, sep=', ')}"
        )
    bad_labels = [f"{c.name} ({c.label!r})" for c in truth if c.label not in (NORMAL, ANOMALY)]
    if bad_labels:
        raise EvaluationError(
            f"{len(bad_labels)} ground-truth clip(s) have a label other than 0/1: {listing(bad_labels, sep=', ')}"
        )

    s = _join(scores, truth, "scores")
    dec = None
    if decisions is not None:
        dec = _join(decisions, truth, "decisions")
        bad = [f"{c.name} ({v:g})" for c, v in zip(truth, dec) if v not in (NORMAL, ANOMALY)]
        if bad:
            raise EvaluationError(
                f"{len(bad)} decision(s) are not 0 (normal) or 1 (anomaly): {listing(bad, sep=', ')}"
            )

    groups: dict[tuple[str, str], list[int]] = {}
    for i, c in enumerate(truth):
        groups.setdefault((c.machine, c.section), []).append(i)

    sections: list[SectionResult] = []
    for (machine, section) in sorted(groups):
        idx = groups[(machine, section)]
        where = f"{machine} section {section}"
        domains = [truth[i].domain for i in idx]
        labels = np.array([truth[i].label for i in idx], dtype=np.int64)
        metrics = section_metrics(
            labels,
            s[idx],
            domains,
            None if dec is None else dec[idx],
            max_fpr=max_fpr,
            where=where,
        )
        has_domains = _domain_mode(domains, where)
        if dec is not None and not has_domains:
            log.warning("%s: no domains, so precision/recall/F1 (defined per domain) are NaN", where)
        counts: dict[str, tuple[int, int]] = {}
        if has_domains:
            for d in DOMAINS:
                in_d = np.array([dom == d for dom in domains], dtype=bool)
                counts[d] = (int((labels[in_d] == NORMAL).sum()), int((labels[in_d] == ANOMALY).sum()))
        sections.append(
            SectionResult(
                machine=machine,
                section=section,
                metrics=metrics,
                n_files=len(idx),
                n_anomalies=int(labels.sum()),
                has_domains=has_domains,
                domain_counts=counts,
            )
        )
    score = spec.score(sections)
    missing = [] if test_split is None else _unscored(truth, test_split, _unit(spec))
    missing += undefined_terms(sections, formula)
    if missing:
        log.warning("partial result, not the official score: %s", "; ".join(missing))
    return EvaluationResult(
        sections=sections,
        partial_score=score,
        formula=formula,
        max_fpr=max_fpr,
        missing=missing,
    )


def _unscored(truth: Sequence[Clip], test_split: Sequence[Clip], unit: str = "section") -> list[str]:
    """The machine types, sections and files of ``test_split`` that ``truth`` does not hold, in
    words (``"machine type pump not scored (6 test files)"``, ``"section 01 of fan not scored
    (20 test files)"``, ``"fan section 00: 2 of 40 test files not scored"``)."""
    scored = {(c.machine, c.section, c.name) for c in truth}
    scored_sections = {(c.machine, c.section) for c in truth}
    scored_machines = {c.machine for c in truth}
    held: dict[str, dict[str, set[str]]] = {}
    for c in test_split:
        held.setdefault(c.machine, {}).setdefault(c.section, set()).add(c.name)
    out: list[str] = []
    for machine in sorted(held):
        if machine not in scored_machines:
            n = sum(len(names) for names in held[machine].values())
            out.append(f"machine type {machine} not scored ({_files(n)})")
            continue
        for section in sorted(held[machine]):
            names = held[machine][section]
            if (machine, section) not in scored_sections:
                out.append(f"{unit} {section} of {machine} not scored ({_files(len(names))})")
                continue
            n_left = sum(1 for n in names if (machine, section, n) not in scored)
            if n_left:
                out.append(f"{machine} {unit} {section}: {n_left} of {_files(len(names))} not scored")
    return out


def _files(n: int) -> str:
    return f"{n} test file{'s' * (n != 1)}"
