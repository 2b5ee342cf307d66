"""Streaming covariance with Ledoit-Wolf shrinkage (exactly sklearn's estimate, in two passes).

Selective Mahalanobis needs the covariance of millions of 128-d error blocks; holding them all
(as sklearn's ``ledoit_wolf`` would) costs gigabytes. Pass 1 accumulates the mean and the
scatter matrix, pass 2 the fourth-moment term the shrinkage intensity needs. The result equals
``sklearn.covariance.ledoit_wolf(X)`` on the concatenated samples (a test checks it).
"""

from __future__ import annotations

import numpy as np


class StreamingLedoitWolf:
    """Two-pass Ledoit-Wolf covariance over sample batches.

    Usage: ``update_moments(batch)`` for every batch, ``finish_moments()``, then
    ``update_fourth(batch)`` for the same batches, then ``covariance()``.

    Args:
        dim: sample dimension.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self._sum = np.zeros(dim)
        self._scatter = np.zeros((dim, dim))
        self._fourth = 0.0
        self.mean_: np.ndarray | None = None
        self._n_fourth = 0

    def update_moments(self, x: np.ndarray) -> None:
        """Pass 1: add samples ``(n, dim)``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        self.n += x.shape[0]
        self._sum += x.sum(axis=0)
        self._scatter += x.T @ x

    def finish_moments(self) -> None:
        """End pass 1: fix the mean so pass 2 can centre."""
        if self.n == 0:
            raise ValueError("no samples were given to the covariance estimate")
        self.mean_ = self._sum / self.n

    def update_fourth(self, x: np.ndarray) -> None:
        """Pass 2: add the same samples again (for the shrinkage intensity)."""
        if self.mean_ is None:
            raise RuntimeError("call finish_moments() after the first pass")
        xc = np.asarray(x, dtype=np.float64).reshape(-1, self.dim) - self.mean_
        self._fourth += float(np.square(np.einsum("ij,ij->i", xc, xc)).sum())
        self._n_fourth += xc.shape[0]

    def empirical(self) -> np.ndarray:
        """Maximum-likelihood covariance (divides by n)."""
        if self.mean_ is None:
            self.finish_moments()
        return self._scatter / self.n - np.outer(self.mean_, self.mean_)

    def covariance(self) -> tuple[np.ndarray, float]:
        """Shrunk covariance and the shrinkage intensity in [0, 1] (sklearn's formula)."""
        if self._n_fourth != self.n:
            raise RuntimeError(
                f"second pass saw {self._n_fourth} samples, first pass {self.n}: give the same data"
            )
        n, d = self.n, self.dim
        emp = self.empirical()
        mu = np.trace(emp) / d
        # sklearn.covariance.ledoit_wolf_shrinkage, written with the accumulated sums.
        delta = (np.square(emp).sum() - 2.0 * mu * np.trace(emp) + d * mu**2) / d
        beta = (self._fourth / n - np.square(emp).sum()) / (d * n)
        shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
        cov = (1.0 - shrinkage) * emp
        cov.flat[:: d + 1] += shrinkage * mu
        return cov, float(shrinkage)
