"""Evaluating scores against the ground truth: :func:`evaluate` and its :class:`EvaluationResult`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from stetho.datasets.base import listing
from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, Clip
from stetho.errors import EvaluationError
from stetho.metrics.basic import MAX_FPR, SectionResult, _check_max_fpr, _domain_mode, section_metrics
from stetho.metrics.formulas import _formula, _unit, undefined_terms
from stetho.metrics.join import _join

log = logging.getLogger("stetho.metrics")  # one logger for the package, as when it was one module


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` computed.

    Attributes:
        sections: one result per (machine type, section), sorted by machine type then section.
        partial_score: the score of ``formula`` over the defined terms of what was scored (see
            :mod:`stetho.metrics`); the official score when :attr:`partial` is False.
        formula: the formula name, a key of :data:`FORMULAS`.
        max_fpr: upper FPR bound used for the partial AUCs.
        missing: why the result is not the official score, in words (parts of the data that
            were not scored, terms of the formula that are undefined); empty when it is.
            :func:`evaluate` fills it.
        dcase_data: True when the data is a DCASE (or MIMII) layout, so the score is the
            official score of its year; False for one's own recordings (the ``folder`` layout, a
            manifest without ``dataset``): the same formula, but no organiser's score to call
            it, so it is printed as a plain score (:func:`stetho.outputs.summary.result_lines`).
    """

    sections: list[SectionResult]
    partial_score: float
    formula: str
    max_fpr: float = MAX_FPR
    missing: list[str] = field(default_factory=list)
    dcase_data: bool = True

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
            ``"dcase2025"``); see :mod:`stetho.metrics`.
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
