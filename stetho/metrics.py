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

Official score, formula ``"dcase2022"`` (used unchanged in 2022, 2023, 2024 and 2025): the harmonic
mean (``scipy.stats.hmean``) of the flat list of every ``AUC (source)``, ``AUC (target)`` and
``pAUC`` of every machine type and section, each value floored at ``sys.float_info.epsilon`` so that
a 0 does not make the harmonic mean fail. With one section per machine type (2023-2025) this equals
the harmonic mean over machine types of ``hmean(AUC (source), AUC (target), pAUC)``.

Datasets without domains (every clip's domain is ``None``, e.g. DCASE 2020): the domain-wise
metrics are not defined (NaN); ``AUC`` and ``pAUC`` are computed over all files of the section and
such a section contributes its ``AUC`` and ``pAUC`` to the official score instead. (The year-specific
2020/2021 formulas can be added as further ``formula`` names in :data:`FORMULAS`.)

Undefined values: an AUC over a subset containing only one class (or no files) is NaN, with a
logged warning; the official score is then the harmonic mean of the finite values, again with a
warning.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from scipy.stats import hmean
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

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
#: Keys of :func:`section_metrics`: the table columns (without ``section``) plus ``AUC``.
METRIC_KEYS: tuple[str, ...] = TABLE_COLUMNS[1:] + ("AUC",)
#: Names of the two summary rows of :meth:`EvaluationResult.table`.
ARITHMETIC_MEAN = "arithmetic mean"
HARMONIC_MEAN = "harmonic mean"

_LIST_LIMIT = 20


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


def _roc(y: np.ndarray, s: np.ndarray, max_fpr: float | None, what: str) -> float:
    """roc_auc_score on validated arrays; NaN (with a warning) when only one class is present."""
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
        return math.nan
    return float(roc_auc_score(y, s, max_fpr=max_fpr))


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
    domains); ``AUC (target)`` = target normals + all anomalies; ``pAUC`` and ``AUC`` = all files;
    ``pAUC (d)`` and precision/recall/F1 ``(d)`` = the files of domain ``d`` only. A subset with
    one class only gives NaN and a logged warning.
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
    if not has_domains:
        return out
    dom = np.array(d, dtype=object)
    anomaly = y == ANOMALY
    for name in DOMAINS:
        in_domain = dom == name
        auc_subset = in_domain | anomaly  # this domain's normals + ALL anomalies (both domains)
        out[f"AUC ({name})"] = _roc(y[auc_subset], s[auc_subset], None, f"{prefix}AUC ({name})")
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


def official_score(values: Iterable[float]) -> float:
    """Harmonic mean of ``values``, each floored at ``sys.float_info.epsilon`` (as the official
    evaluators do, so that a 0 does not fail). NaN values are left out with a logged warning;
    NaN (with a warning) when no finite value remains.
    """
    v = [float(x) for x in values]
    n_bad = sum(1 for x in v if not math.isfinite(x))
    if n_bad:
        log.warning(
            "official score: %d of %d value(s) are undefined (NaN) and are left out of the harmonic mean",
            n_bad,
            len(v),
        )
    result = _hmean_floor(v)
    if math.isnan(result):
        log.warning("official score: no defined value to average; reported as NaN")
    return result


def _values_dcase2022(sections: Sequence[SectionResult]) -> list[float]:
    """AUC (source), AUC (target), pAUC of every section; AUC, pAUC for sections without domains."""
    out: list[float] = []
    for sec in sections:
        keys = ("AUC (source)", "AUC (target)", "pAUC") if sec.has_domains else ("AUC", "pAUC")
        out.extend(sec.metrics[k] for k in keys)
    return out


#: Official-score formulas: name -> function giving the flat list of values whose (eps-floored)
#: harmonic mean is the score. 2023-2025 use the 2022 formula unchanged.
FORMULAS: dict[str, Callable[[Sequence["SectionResult"]], list[float]]] = {
    "dcase2022": _values_dcase2022,
    "dcase2023": _values_dcase2022,
    "dcase2024": _values_dcase2022,
    "dcase2025": _values_dcase2022,
}


def _formula(name: str) -> Callable[[Sequence["SectionResult"]], list[float]]:
    try:
        return FORMULAS[name]
    except (KeyError, TypeError):
        raise EvaluationError(
            f"unknown official-score formula {name!r}; known formulas: {', '.join(FORMULAS)}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Joining scores to ground truth by file name
# ---------------------------------------------------------------------------------------------


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    if len(items) > _LIST_LIMIT:
        shown += f", ... and {len(items) - _LIST_LIMIT} more"
    return shown


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
    missing = [n for n in truth_count if n not in score_count]
    extra = [n for n in score_count if n not in truth_count]

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
        problems.append(f"  {len(missing)} missing (in the ground truth, not in the {what}): {_listing(missing)}")
    if extra:
        problems.append(f"  {len(extra)} extra (in the {what}, not in the ground truth): {_listing(extra)}")
    if dup_scores:
        problems.append(
            f"  {len(dup_scores)} duplicated in the {what}: "
            + _listing([f"{n} (x{score_count[n]})" for n in dup_scores])
        )
    if dup_truth:
        problems.append(
            f"  {len(dup_truth)} duplicated in the ground truth: "
            + _listing([f"{n} (x{truth_count[n]})" for n in dup_truth])
        )
    if bad_values:
        problems.append(
            f"  {len(bad_values)} with a NaN, infinite or non-numeric value in the {what}: "
            + _listing(bad_values)
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
    """

    machine: str
    section: str
    metrics: dict[str, float]
    n_files: int
    n_anomalies: int = 0
    has_domains: bool = True


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` computed.

    Attributes:
        sections: one result per (machine type, section), sorted by machine type then section.
        official_score: the official score of ``formula`` (see the module docstring).
        formula: the formula name.
        max_fpr: upper FPR bound used for the partial AUCs.
    """

    sections: list[SectionResult]
    official_score: float
    formula: str
    max_fpr: float = MAX_FPR

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

    def columns(self, machine: str) -> tuple[str, ...]:
        """The table columns of ``machine``: :data:`TABLE_COLUMNS`, or :data:`NO_DOMAIN_COLUMNS`
        when none of its sections has domains."""
        return TABLE_COLUMNS if any(s.has_domains for s in self._of(machine)) else NO_DOMAIN_COLUMNS

    def table(self, machine: str) -> list[dict[str, object]]:
        """The DCASE-baseline result table of one machine type.

        One row per section (keys = :meth:`columns`, ``"section"`` first), then an
        ``"arithmetic mean"`` row and a ``"harmonic mean"`` row: the mean over sections of each
        column, over its finite values (the harmonic mean floors each value at eps); a column
        without any finite value (e.g. precision when no decisions were given) stays NaN.
        """
        secs = self._of(machine)
        cols = self.columns(machine)
        rows: list[dict[str, object]] = [
            {"section": s.section, **{c: s.metrics[c] for c in cols[1:]}} for s in secs
        ]
        rows.append({"section": ARITHMETIC_MEAN, **{c: _nanmean(s.metrics[c] for s in secs) for c in cols[1:]}})
        rows.append({"section": HARMONIC_MEAN, **{c: _hmean_floor(s.metrics[c] for s in secs) for c in cols[1:]}})
        return rows

    def machine_summary(self) -> list[dict[str, object]]:
        """One row per machine type.

        Keys: ``machine``; ``AUC (source)``, ``AUC (target)``, ``pAUC`` (arithmetic means over
        its sections; ``AUC`` and ``pAUC`` for machine types without domains); ``hmean`` = the
        eps-floored harmonic mean of that machine type's flat list of those values over its
        sections (its share of the official score); then the arithmetic means of the
        precision/recall/F1 columns when decisions were evaluated.
        """
        out: list[dict[str, object]] = []
        for m in self.machines():
            secs = self._of(m)
            domains = any(s.has_domains for s in secs)
            keys = ("AUC (source)", "AUC (target)", "pAUC") if domains else ("AUC", "pAUC")
            row: dict[str, object] = {"machine": m}
            row.update({k: _nanmean(s.metrics[k] for s in secs) for k in keys})
            row["hmean"] = _hmean_floor(s.metrics[k] for s in secs for k in keys)
            for k in TABLE_COLUMNS[6:]:
                if any(math.isfinite(s.metrics[k]) for s in secs):
                    row[k] = _nanmean(s.metrics[k] for s in secs)
            out.append(row)
        return out


def evaluate(
    scores: Sequence[tuple[str, float]] | Mapping[str, Sequence[tuple[str, float]]],
    truth: Sequence[Clip],
    decisions: Sequence[tuple[str, int]] | Mapping[str, Sequence[tuple[str, int]]] | None = None,
    formula: str = "dcase2022",
    max_fpr: float = MAX_FPR,
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
        formula: official-score formula, one of :data:`FORMULAS` (``"dcase2022"``, also used for
            2023-2025).
        max_fpr: upper FPR bound of the partial AUCs (0.1 in DCASE).

    Returns:
        Per-section metrics grouped by ``(clip.machine, clip.section)`` in sorted order, and the
        official score.

    Raises:
        EvaluationError: unknown formula, unlabeled clips, empty truth, or values that do not
            match the truth (see :func:`join_by_name`).
    """
    values_of = _formula(formula)
    max_fpr = _check_max_fpr(max_fpr)
    truth = list(truth)
    if not truth:
        raise EvaluationError("no ground-truth clips to evaluate")
    unlabeled = [c.name for c in truth if c.label is None]
    if unlabeled:
        raise EvaluationError(
            f"{len(unlabeled)} ground-truth clip(s) have no label (unlabeled evaluation data "
            f"cannot be scored): {_listing(unlabeled)}"
        )
    bad_labels = [f"{c.name} ({c.label!r})" for c in truth if c.label not in (NORMAL, ANOMALY)]
    if bad_labels:
        raise EvaluationError(
            f"{len(bad_labels)} ground-truth clip(s) have a label other than 0/1: {_listing(bad_labels)}"
        )

    s = _join(scores, truth, "scores")
    dec = None
    if decisions is not None:
        dec = _join(decisions, truth, "decisions")
        bad = [f"{c.name} ({v:g})" for c, v in zip(truth, dec) if v not in (NORMAL, ANOMALY)]
        if bad:
            raise EvaluationError(
                f"{len(bad)} decision(s) are not 0 (normal) or 1 (anomaly): {_listing(bad)}"
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
        sections.append(
            SectionResult(
                machine=machine,
                section=section,
                metrics=metrics,
                n_files=len(idx),
                n_anomalies=int(labels.sum()),
                has_domains=has_domains,
            )
        )
    return EvaluationResult(
        sections=sections,
        official_score=official_score(values_of(sections)),
        formula=formula,
        max_fpr=max_fpr,
    )
