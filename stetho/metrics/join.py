"""Joining scores (or decisions) to the ground truth by file name, never by position."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import PurePath

import numpy as np

from stetho.datasets.base import listing
from stetho.datasets.clip import Clip
from stetho.errors import EvaluationError

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
