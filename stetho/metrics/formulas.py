"""Official-score formulas, one per DCASE year, each with its evaluator's result table.

:data:`FORMULAS` maps ``"dcase2020"`` ... ``"dcase2025"`` to a :class:`Formula` (the score, its
terms, the result table and the summary row of that year's evaluator; see :mod:`stetho.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stetho.datasets.base import listing
from stetho.datasets.clip import DOMAINS
from stetho.errors import EvaluationError
from stetho.metrics.basic import SectionResult
from stetho.metrics.columns import (
    ALL_FILES_PRF_KEYS, ARITHMETIC_MEAN, HARMONIC_MEAN, NO_DOMAIN_COLUMNS, TABLE_COLUMNS, TABLE_COLUMNS_2020, TABLE_COLUMNS_2021, _PRF_KEYS,
)
from stetho.metrics.means import _hmean_floor, _nanmean, partial_mean, partial_score

# Every function below takes SectionResults: ``score`` those of all machine types, the table
# functions those of one machine type (in section order).


def _prf_means(secs: Sequence[SectionResult]) -> dict[str, float]:
    """Means over sections of the precision/recall/F1 columns that have a finite value (per
    domain, or over all files for sections without domains)."""
    return {
        k: _nanmean(s.metrics[k] for s in secs)
        for k in _PRF_KEYS + ALL_FILES_PRF_KEYS
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
    return {"AUC": a, "pAUC": p, "score": (a + p) / 2, **_prf_means(secs)}


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
    description = (
        f"DCASE {year}: harmonic mean of the AUC (source), AUC (target) and pAUC of every machine "
        "type and section, each AUC using the anomalies of both domains"
    )
    return Formula(f"dcase{year}", description, _score_2022, _terms_2022, _columns_2022, _table_2022, _summary_2022,
                   naming="section")


#: Official-score formulas by name. 2023-2025 use the 2022 formula (and tables) unchanged.
FORMULAS: dict[str, Formula] = {
    # Positional fields: name, description, score, terms, columns, table, summary (see Formula).
    "dcase2020": Formula(
        "dcase2020",
        "DCASE 2020: arithmetic mean over machine types of the AUC and pAUC, each averaged over the machine IDs "
        "of its type",
        _score_2020, _terms_2020, _columns_2020, _table_2020, _summary_2020, naming="id",
    ),
    "dcase2021": Formula(
        "dcase2021",
        "DCASE 2021: harmonic mean of the within-domain AUC and pAUC of every machine type, section and domain",
        _score_2021, _terms_2021, _columns_2021, _table_2021, _summary_2021, naming="section_domain",
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

