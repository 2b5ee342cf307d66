"""Several models, several runs (seeds) each, on the same test settings: mean ± std per setting
and average ranks (``stetho run`` of a recipe with ``compare:``).

A *setting* is a (machine type, section) pair — for MIMII a (machine, ID, SNR) setting. Each run
folder provides ``results/<mode>/sections.csv`` (per-setting AUC, pAUC, PR-AUC; see
:func:`stetho.outputs.write_section_metrics`) and, when its detector predicts contexts,
``results/context_accuracy.csv``. A *model* is a list of ``(run folder, score mode)`` pairs, one
per seed.

Average rank of a model for a metric: in every setting the models are ranked by their mean over
runs (1 = highest; ties share the mean of their ranks), then the ranks are averaged over the
settings where every model has a value.

A run whose ``results/<mode>/summary.csv`` says it is partial (not every machine type or section of
its data scored, or an undefined term) makes its model ``partial``: ``comparison_models.csv`` says
so in its ``status`` column and ``comparison.txt`` lists what is missing, so that no mean over the
settings passes for a comparison of official scores.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import rankdata

from stetho.errors import EvaluationError
from stetho.fileio import atomic_write_text, write_dict_csv
from stetho.outputs.dcase import SECTION_COLUMNS
from stetho.outputs.summary import format_mean_std, mean_std, read_summary_file

log = logging.getLogger(__name__)

#: Metrics compared per setting (columns of ``sections.csv``).
COMPARED_METRICS: tuple[str, ...] = ("AUC", "PR-AUC", "pAUC")
#: Context-prediction accuracies read from ``results/context_accuracy.csv`` (row ``all``).
ACCURACY_COLUMNS: tuple[str, ...] = ("accuracy", "accuracy (window)")


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise EvaluationError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_sections(run_dir: str | Path, mode: str) -> dict[tuple[str, str], dict[str, float]]:
    """``{(machine, section): {metric: value}}`` of a run's ``results/<mode>/sections.csv``."""
    path = Path(run_dir) / "results" / mode / "sections.csv"
    if not path.is_file():
        raise EvaluationError(f"{path} does not exist: run `stetho test` on labeled data first")
    return {(r["machine"], r["section"]): {m: _number(r[m]) for m in COMPARED_METRICS}
            for r in _read_csv(path, SECTION_COLUMNS[:2] + COMPARED_METRICS)}


def read_context_accuracy(run_dir: str | Path) -> dict[str, float]:
    """The overall context-prediction accuracies of a run (NaN when it predicted no context)."""
    path = Path(run_dir) / "results" / "context_accuracy.csv"
    if not path.is_file():
        return dict.fromkeys(ACCURACY_COLUMNS, math.nan)
    rows = [r for r in _read_csv(path, ("scope", *ACCURACY_COLUMNS)) if r["scope"] == "all"]
    if not rows:
        raise EvaluationError(f"{path}: no row with scope 'all'")
    return {c: _number(rows[0][c]) for c in ACCURACY_COLUMNS}


@dataclass
class Comparison:
    """Per-setting values of several models over their runs.

    Attributes:
        models: model names, in the order given.
        settings: the (machine, section) pairs, sorted.
        values: metric -> array ``(n_models, n_settings, n_runs)`` (NaN where a model has fewer runs).
        accuracy: accuracy column -> array ``(n_models, n_runs)``.
        runs: model -> its ``(run folder, mode)`` pairs.
        missing: model -> what its partial runs miss for an official score (no entry, or an
            empty list, when every run is official).
    """

    models: list[str]
    settings: list[tuple[str, str]]
    values: dict[str, np.ndarray]
    accuracy: dict[str, np.ndarray]
    runs: dict[str, list[tuple[Path, str]]] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)

    def mean_std(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and sample std over runs ``(n_models, n_settings)`` (std NaN for one run)."""
        return _stats(self.values[metric])

    def ranks(self, metric: str) -> np.ndarray:
        """Rank of every model in every setting ``(n_models, n_settings)`` by the mean over runs
        (1 = best); NaN in settings where some model has no value."""
        mean, _ = self.mean_std(metric)
        out = np.full(mean.shape, np.nan)
        for j in range(mean.shape[1]):
            if np.isfinite(mean[:, j]).all():
                out[:, j] = rankdata(-mean[:, j])
        return out

    def average_ranks(self, metric: str) -> np.ndarray:
        """Average rank of each model over the settings where all have a value ``(n_models,)``."""
        ranks = self.ranks(metric)
        ranked = np.isfinite(ranks).all(axis=0)
        return ranks[:, ranked].mean(axis=1) if ranked.any() else np.full(len(self.models), np.nan)

    def overall(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Per model: mean and std over runs of the run's mean over settings ``(n_models,)``."""
        with _quiet():
            per_run = np.nanmean(self.values[metric], axis=1)  # (models, runs)
        return _stats(per_run)

    # -- tables -----------------------------------------------------------------------------
    def setting_rows(self) -> list[dict[str, object]]:
        """Long table: one row per (setting, model) with ``<metric> mean``/``std`` and ``runs``."""
        stats = {m: self.mean_std(m) for m in COMPARED_METRICS}
        ranks = {m: self.ranks(m) for m in COMPARED_METRICS}
        rows = []
        for j, (machine, section) in enumerate(self.settings):
            for i, model in enumerate(self.models):
                row: dict[str, object] = {"machine": machine, "section": section, "model": model}
                for m in COMPARED_METRICS:
                    row[f"{m} mean"], row[f"{m} std"] = float(stats[m][0][i, j]), float(stats[m][1][i, j])
                    row[f"{m} rank"] = float(ranks[m][i, j])
                row["runs"] = int(np.isfinite(self.values["AUC"][i, j]).sum())
                rows.append(row)
        return rows

    def model_rows(self) -> list[dict[str, object]]:
        """One row per model: mean ± std over runs of its mean over settings, average ranks,
        context-prediction accuracies."""
        rows = []
        overall = {m: self.overall(m) for m in COMPARED_METRICS}
        avg = {m: self.average_ranks(m) for m in COMPARED_METRICS}
        acc = {c: _stats(self.accuracy[c]) for c in ACCURACY_COLUMNS}
        for i, model in enumerate(self.models):
            row: dict[str, object] = {"model": model}
            for m in COMPARED_METRICS:
                row[f"{m} mean"], row[f"{m} std"] = float(overall[m][0][i]), float(overall[m][1][i])
                row[f"{m} average rank"] = float(avg[m][i])
            for c in ACCURACY_COLUMNS:
                row[f"context {c} mean"], row[f"context {c} std"] = float(acc[c][0][i]), float(acc[c][1][i])
            row["runs"] = len(self.runs.get(model, [])) or int(self.values["AUC"].shape[2])
            row["status"] = "partial" if self.missing.get(model) else "official"
            rows.append(row)
        return rows

    def format_text(self, metrics: Sequence[str] = ("AUC", "PR-AUC"), digits: int = 3) -> str:
        """Text tables: per metric, settings × models (``mean ± std``) with a ``mean`` and an
        ``average rank`` row; then the models with their context-prediction accuracies."""
        blocks = []
        for metric in metrics:
            mean, std = self.mean_std(metric)
            o_mean, o_std = self.overall(metric)
            avg = self.average_ranks(metric)
            header = ["setting", *self.models]
            body = [[f"{m} {s}", *(format_mean_std(mean[i, j], std[i, j], digits) for i in range(len(self.models)))]
                    for j, (m, s) in enumerate(self.settings)]
            body.append(["mean", *(format_mean_std(o_mean[i], o_std[i], digits) for i in range(len(self.models)))])
            body.append(["average rank", *(f"{r:.2f}" if math.isfinite(r) else "-" for r in avg)])
            blocks.append(f"{metric} (mean ± std over runs)\n" + _table([header, *body]))
        acc_rows = [["model", "runs", "context accuracy", "context accuracy (window)"]]
        for row in self.model_rows():
            acc_rows.append([str(row["model"]), str(row["runs"]),
                             *(format_mean_std(row[f"context {c} mean"], row[f"context {c} std"], digits)
                               for c in ACCURACY_COLUMNS)])
        blocks.append("context prediction (share of test files, mean ± std over runs)\n" + _table(acc_rows))
        partial = [f"  {m}: {'; '.join(self.missing[m])}" for m in self.models if self.missing.get(m)]
        if partial:
            blocks.append("PARTIAL (not the official score's coverage; the means are over the settings "
                          "scored):\n" + "\n".join(partial))
        return "\n\n".join(blocks)

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``comparison_settings.csv`` (long, per setting and model),
        ``comparison_models.csv`` (per model) and ``comparison.txt`` (:meth:`format_text`)."""
        out_dir = Path(out_dir)
        return [
            write_dict_csv(out_dir / "comparison_settings.csv", self.setting_rows()),
            write_dict_csv(out_dir / "comparison_models.csv", self.model_rows()),
            atomic_write_text(out_dir / "comparison.txt", self.format_text(COMPARED_METRICS) + "\n"),
        ]


def _stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std over the last axis, ignoring NaN runs (a model with fewer runs)."""
    moved = np.moveaxis(values, -1, 0)
    n = np.isfinite(moved).sum(axis=0)
    if moved.shape[0] and (n == moved.shape[0]).all():
        return mean_std(moved)
    with _quiet():
        mean = np.nanmean(moved, axis=0)
        std = np.where(n > 1, np.nanstd(moved, axis=0, ddof=1), np.nan)
    return mean, std


@contextmanager
def _quiet():
    """Silence numpy's "mean of empty slice" warnings (an all-NaN cell is meant to be NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        yield


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def compare_runs(models: Mapping[str, Sequence[tuple[str | Path, str]]]) -> Comparison:
    """Compare models given as ``{name: [(run folder, score mode), ...]}`` (one pair per run).

    Raises:
        EvaluationError: no models, a model without runs, a missing ``sections.csv``, or runs
            that evaluated different settings (the runs and settings are named).
    """
    if not models:
        raise EvaluationError("no models to compare")
    names = list(models)
    tables: dict[str, list[dict[tuple[str, str], dict[str, float]]]] = {}
    accuracy: dict[str, list[dict[str, float]]] = {}
    for name in names:
        pairs = [(Path(r), mode) for r, mode in models[name]]
        if not pairs:
            raise EvaluationError(f"model {name!r} has no runs")
        tables[name] = [read_sections(r, mode) for r, mode in pairs]
        accuracy[name] = [read_context_accuracy(r) for r, _ in pairs]
    reference = sorted(tables[names[0]][0])
    for name in names:
        for (run, mode), table in zip(models[name], tables[name]):
            if sorted(table) != reference:
                diff = sorted(set(table) ^ set(reference))
                raise EvaluationError(
                    f"{run} ({mode}) evaluated other settings than {models[names[0]][0][0]}: "
                    + ", ".join(f"{m} {s}" for m, s in diff[:10]) + "; only runs on the same test data compare"
                )
    n_runs = max(len(v) for v in tables.values())
    values = {m: np.full((len(names), len(reference), n_runs), np.nan) for m in COMPARED_METRICS}
    acc = {c: np.full((len(names), n_runs), np.nan) for c in ACCURACY_COLUMNS}
    for i, name in enumerate(names):
        for k, table in enumerate(tables[name]):
            for j, setting in enumerate(reference):
                for m in COMPARED_METRICS:
                    values[m][i, j, k] = table[setting][m]
            for c in ACCURACY_COLUMNS:
                acc[c][i, k] = accuracy[name][k][c]
    undefined = [f"{m} {s}" for j, (m, s) in enumerate(reference) if not np.isfinite(values["AUC"][:, j]).any()]
    if undefined:
        log.warning("AUC undefined (one class only) in %d setting(s), left out of the ranks: %s",
                    len(undefined), ", ".join(undefined[:10]))
    missing = {n: _missing(models[n]) for n in names}
    return Comparison(names, reference, values, acc, {n: [(Path(r), m) for r, m in models[n]] for n in names},
                      missing)


def _missing(pairs: Sequence[tuple[str | Path, str]]) -> list[str]:
    """What the partial runs among ``pairs`` miss for an official score (their ``summary.csv``);
    runs without a ``summary.csv`` count as official."""
    out: list[str] = []
    for run, mode in pairs:
        path = Path(run) / "results" / mode / "summary.csv"
        if path.is_file():
            summary = read_summary_file(path)
            if summary.partial:
                out += [m for m in (summary.missing or ["missing parts not recorded"]) if m not in out]
    return out
