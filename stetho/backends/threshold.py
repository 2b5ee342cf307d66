"""Decision threshold from a Gamma fit of normal scores (DCASE baselines, METHODS.md §2)."""

from __future__ import annotations

import logging

import numpy as np
import scipy.stats

log = logging.getLogger(__name__)


def gamma_threshold(scores: np.ndarray, quantile: float = 0.9) -> float:
    """Fit ``scipy.stats.gamma`` to anomaly scores of normal data; return its ``quantile``.

    A clip is anomalous when its score exceeds the threshold. The DCASE baseline fits per-batch
    mean losses; stetho fits per-clip scores (documented deviation). Scores must be finite and
    not all equal; with fewer than 3 values, or if the fit fails, the empirical quantile is used
    (logged).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("gamma_threshold needs a non-empty array of finite scores")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if s.size < 3 or np.ptp(s) == 0:
        log.warning("too few distinct normal scores (%d) for a Gamma fit; using the empirical quantile", s.size)
        return float(np.quantile(s, quantile))
    try:
        shape, loc, scale = scipy.stats.gamma.fit(s)
        thr = float(scipy.stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    except (RuntimeError, ValueError, FloatingPointError) as exc:  # pragma: no cover - scipy edge
        log.warning("Gamma fit failed (%s); using the empirical quantile", exc)
        return float(np.quantile(s, quantile))
    if not np.isfinite(thr):
        log.warning("Gamma fit gave a non-finite quantile; using the empirical quantile")
        return float(np.quantile(s, quantile))
    return thr
