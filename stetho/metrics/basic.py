"""Per-section metrics: ROC AUC, partial AUC, PR-AUC, precision/recall/F1, on validated arrays.

:func:`section_metrics` computes every metric of one section (the subsets are defined in
:mod:`stetho.metrics`); :class:`SectionResult` holds them with the counts that say why one is NaN.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, SOURCE, TARGET
from stetho.errors import EvaluationError
from stetho.metrics.columns import METRIC_KEYS

log = logging.getLogger("stetho.metrics")  # one logger for the package, as when it was one module

#: Default upper FPR bound of the partial AUC (DCASE uses p = 0.1 in every year since 2020).
MAX_FPR = 0.1


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
            dataset has no domains (then ``AUC``, ``pAUC``, ``PR-AUC`` and, with decisions,
            ``precision``, ``recall`` and ``F1 score`` over all files are defined, the rest NaN).
        decisions: optional 0/1 decisions (1 = anomaly) per file, for precision/recall/F1.
        max_fpr: upper FPR bound of the partial AUCs.
        where: prefix for warning messages, e.g. ``"fan section 00"``.

    Subsets (see :mod:`stetho.metrics`): ``AUC (source)`` = source normals + all anomalies (both
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
        if dec is not None:  # no domain to split by: precision/recall/F1 over all files
            out["precision"], out["recall"], out["F1 score"] = _prf(y, dec)
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
