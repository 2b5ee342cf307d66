"""Streaming covariance with Ledoit-Wolf shrinkage (exactly sklearn's estimate, in one pass).

Selective Mahalanobis needs the covariance of millions of 128-d error blocks; holding them all
(as sklearn's ``ledoit_wolf`` would) costs gigabytes. One pass over the batches accumulates the
sums the estimate needs, and the result equals ``sklearn.covariance.ledoit_wolf(X)`` on the
concatenated samples (tests check it).

The shrinkage intensity needs ``sum_i ||x_i - m||^4`` around the final mean ``m``. Expanding the
square gives it from sums known in one pass: with ``a_i = ||x_i||^2`` and ``S = sum_i x_i x_i^T``,

    sum ||x - m||^4 = sum a^2 - 4 m.(sum a x) + 4 m^T S m + 2 |m|^2 sum a
                      - 4 |m|^2 m.(sum x) + n |m|^4.

To keep this free of cancellation when the data sit far from the origin, every sample is first
shifted by the mean of the first batch (covariance and shrinkage do not depend on the shift).
"""

from __future__ import annotations

import numpy as np


class StreamingLedoitWolf:
    """One-pass Ledoit-Wolf covariance over sample batches: ``update(batch)``..., ``covariance()``.

    Args:
        dim: sample dimension.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self._shift: np.ndarray | None = None
        self._sum = np.zeros(dim)  # sum y
        self._scatter = np.zeros((dim, dim))  # sum y y^T
        self._sum_a = 0.0  # sum |y|^2
        self._sum_a2 = 0.0  # sum |y|^4
        self._sum_ay = np.zeros(dim)  # sum |y|^2 y

    def update(self, x: np.ndarray) -> None:
        """Add samples ``(n, dim)`` (any float dtype; accumulated in float64)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.dim)
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(axis=0)
        y = x - self._shift
        a = np.einsum("ij,ij->i", y, y)
        self.n += y.shape[0]
        self._sum += y.sum(axis=0)
        self._scatter += y.T @ y
        self._sum_a += float(a.sum())
        self._sum_a2 += float(np.square(a).sum())
        self._sum_ay += a @ y

    def _check(self) -> None:
        if self.n == 0:
            raise ValueError("no samples were given to the covariance estimate")

    @property
    def mean_(self) -> np.ndarray:
        """Sample mean."""
        self._check()
        return self._shift + self._sum / self.n

    def empirical(self) -> np.ndarray:
        """Maximum-likelihood covariance (divides by n)."""
        self._check()
        m = self._sum / self.n
        return self._scatter / self.n - np.outer(m, m)

    def _fourth(self) -> float:
        """``sum_i ||x_i - mean||^4`` from the one-pass sums (see the module docstring)."""
        m = self._sum / self.n
        mm = float(m @ m)
        total = (
            self._sum_a2
            - 4.0 * float(m @ self._sum_ay)
            + 4.0 * float(m @ self._scatter @ m)
            + 2.0 * mm * self._sum_a
            - 4.0 * mm * float(m @ self._sum)
            + self.n * mm**2
        )
        return max(total, 0.0)

    def covariance(self) -> tuple[np.ndarray, float]:
        """Shrunk covariance and the shrinkage intensity in [0, 1] (sklearn's formula)."""
        self._check()
        n, d = self.n, self.dim
        emp = self.empirical()
        mu = np.trace(emp) / d
        # sklearn.covariance.ledoit_wolf_shrinkage, written with the accumulated sums.
        delta = (np.square(emp).sum() - 2.0 * mu * np.trace(emp) + d * mu**2) / d
        beta = (self._fourth() / n - np.square(emp).sum()) / (d * n)
        shrinkage = 0.0 if delta == 0 else min(beta, delta) / delta
        cov = (1.0 - shrinkage) * emp
        cov.flat[:: d + 1] += shrinkage * mu
        return cov, float(shrinkage)
