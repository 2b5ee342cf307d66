"""Selective Mahalanobis scoring (DCASE2023 baseline, METHODS.md §3).

Per domain (source, target) a covariance of per-frame error blocks is estimated on training
data; a clip's score is ``min_d  ē^T Σ_d^{-1} ē`` where ``ē`` is the clip's mean error block.
"""

from __future__ import annotations

import numpy as np


def mahalanobis_sq(e: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``e^T P e`` for each row of ``e`` ``(n, dim)`` (or one vector ``(dim,)``)."""
    e = np.asarray(e, dtype=np.float64)
    return np.einsum("...i,ij,...j->...", e, precision, e)


def precision_from_covariance(cov: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive-definite covariance (Cholesky; pinv as last resort)."""
    import scipy.linalg  # here, not at import: scoring with fitted precisions needs no scipy

    cov = np.asarray(cov, dtype=np.float64)
    try:
        factor = scipy.linalg.cho_factor(cov, lower=True)
        precision = scipy.linalg.cho_solve(factor, np.eye(len(cov)))
        return (precision + precision.T) / 2.0
    except np.linalg.LinAlgError:
        return np.linalg.pinv(cov, hermitian=True)


def selective_mahalanobis(clip_mean_errors: np.ndarray, precisions: dict[str, np.ndarray]) -> np.ndarray:
    """Selective Mahalanobis score of clips.

    Args:
        clip_mean_errors: ``(n_clips, dim)`` clip-mean error blocks ``ē``.
        precisions: inverse covariance per domain (``{"source": P_s, "target": P_t}``).

    Returns:
        ``(n_clips,)``: ``min over domains of ē^T P_d ē``.
    """
    scores = np.stack([mahalanobis_sq(clip_mean_errors, p) for p in precisions.values()])
    return scores.min(axis=0)
