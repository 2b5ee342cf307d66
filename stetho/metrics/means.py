"""Harmonic and arithmetic means of metric values: official (every term defined) and partial."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable

import numpy as np
from scipy.stats import hmean

log = logging.getLogger("stetho.metrics")  # one logger for the package, as when it was one module

#: Floor applied to every value entering a harmonic mean (as the official evaluators do).
EPS = sys.float_info.epsilon


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
