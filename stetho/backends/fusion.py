"""Score fusion: z-scores of each member's anomaly scores on its own out-of-sample normal scores,
then a weighted mean (the way most top DCASE systems combine, e.g., an autoencoder with a
discriminative model).

The scores of two detectors live on unrelated scales (a reconstruction error, a cosine distance);
averaging them raw lets the wider one decide alone. Standardising each on the scores of normal
clips it did not train on (the calibration clips its thresholds were fitted on) makes "how
unusual for this machine type and domain" the common unit. Pure numpy, no file I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: A (machine type, domain) group needs this many calibration scores for statistics of its own.
MIN_GROUP = 5


def _strings(values: Sequence[Any] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    """``values`` as an object array of ``n`` strings ("" for a missing domain)."""
    if values is None:
        return np.full(n, "", dtype=object)
    out = np.array(["" if v is None else str(v) for v in values], dtype=object)
    if out.shape != (n,):
        raise ValueError(f"{out.size} {what} labels for {n} scores")
    return out


def _scores(scores: Sequence[float] | np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{int((~np.isfinite(s)).sum())} score(s) are not finite")
    return s


class ScoreStandardizer:
    """Per machine type (and domain where known) mean and standard deviation of one member's
    out-of-sample normal scores; ``transform`` turns its scores into z-scores.

    A (machine type, domain) group with at least ``min_group`` scores and a positive spread gets
    its own mean and standard deviation (``ddof=1``); every other clip of the machine type (a
    small domain, an unknown domain "" or one without calibration clips) is standardised with the
    statistics of all the machine type's scores. Deterministic: no randomness, groups sorted.

    Attributes (after :meth:`fit`):
        machine_stats_: ``machine -> (mean, std, n)`` over all domains.
        group_stats_: ``(machine, domain) -> (mean, std, n)`` of the groups that have their own.
    """

    def __init__(self, min_group: int = MIN_GROUP) -> None:
        self.min_group = min_group

    def fit(self, scores: Sequence[float] | np.ndarray, machines: Sequence[str],
            domains: Sequence[str | None] | None = None) -> ScoreStandardizer:
        """Learn the statistics from calibration ``scores`` (shape ``(n,)``) of clips of
        ``machines`` and ``domains`` (one label each; ``None`` or "" = unknown).

        Raises:
            ValueError: ``min_group`` below 2, mismatched lengths, non-finite scores, or a
                machine type with fewer than 2 scores or all of them equal (no spread to divide by).
        """
        if isinstance(self.min_group, bool) or not isinstance(self.min_group, (int, np.integer)) \
                or self.min_group < 2:
            raise ValueError(f"min_group must be an integer of at least 2, got {self.min_group!r}")
        s = _scores(scores)
        m = _strings(machines, s.size, "machine")
        d = _strings(domains, s.size, "domain")
        self.machine_stats_: dict[str, tuple[float, float, int]] = {}
        self.group_stats_: dict[tuple[str, str], tuple[float, float, int]] = {}
        for machine in sorted(set(m)):
            sel = s[m == machine]
            std = float(np.std(sel, ddof=1)) if sel.size >= 2 else 0.0
            if sel.size < 2 or not std > 0:
                raise ValueError(f"machine type {machine}: {sel.size} calibration score(s) with no spread "
                                 "(need at least 2 different ones to standardise)")
            self.machine_stats_[machine] = (float(np.mean(sel)), std, int(sel.size))
            for domain in sorted(set(d[m == machine]) - {""}):
                part = s[(m == machine) & (d == domain)]
                if part.size >= self.min_group:
                    std = float(np.std(part, ddof=1))
                    if std > 0:
                        self.group_stats_[(machine, domain)] = (float(np.mean(part)), std, int(part.size))
        return self

    def transform(self, scores: Sequence[float] | np.ndarray, machines: Sequence[str],
                  domains: Sequence[str | None] | None = None) -> np.ndarray:
        """z-scores ``(score - mean) / std`` of ``scores`` (shape ``(n,)``) with the statistics
        of each clip's (machine type, domain) group, else of its machine type.

        Raises:
            ValueError: not fitted, mismatched lengths, non-finite scores, or a machine type the
                calibration scores did not have.
        """
        if not hasattr(self, "machine_stats_"):
            raise ValueError("ScoreStandardizer.transform before fit")
        s = _scores(scores)
        m = _strings(machines, s.size, "machine")
        d = _strings(domains, s.size, "domain")
        unknown = sorted(set(m) - set(self.machine_stats_))
        if unknown:
            raise ValueError(f"no calibration scores of machine type(s) {', '.join(unknown)} "
                             f"(calibrated: {', '.join(self.machine_stats_)})")
        mean = np.empty(s.size)
        std = np.empty(s.size)
        for i, key in enumerate(zip(m, d)):
            mean[i], std[i], _ = self.group_stats_.get(key, self.machine_stats_[key[0]])
        return (s - mean) / std

    def statistics(self) -> dict[str, dict[str, Any]]:
        """The learnt statistics as plain data (for ``ensemble.json``): per machine type its
        ``mean``, ``std``, ``n`` and ``domains`` (each group with its own statistics)."""
        if not hasattr(self, "machine_stats_"):
            raise ValueError("ScoreStandardizer.statistics before fit")
        out: dict[str, dict[str, Any]] = {}
        for machine, (mean, std, n) in self.machine_stats_.items():
            groups = {dom: {"mean": g[0], "std": g[1], "n": g[2]}
                      for (mm, dom), g in sorted(self.group_stats_.items()) if mm == machine}
            out[machine] = {"mean": mean, "std": std, "n": n, "domains": groups}
        return out


def normalized_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """``weights`` (default: equal) scaled to sum 1, shape ``(n,)``.

    Raises:
        ValueError: a count other than ``n``, a negative or non-finite weight, or a zero sum.
    """
    if n < 1:
        raise ValueError("fusion needs at least one member")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.size != n:
        raise ValueError(f"{w.size} weight(s) for {n} member(s)")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and non-negative, got {w.tolist()}")
    if not w.sum() > 0:
        raise ValueError(f"weights sum to zero: {w.tolist()}")
    return w / w.sum()


def fuse(z_list: Sequence[np.ndarray], weights: Sequence[float] | None = None) -> np.ndarray:
    """The weighted mean of the members' z-scores (each of shape ``(n,)``, the same clips in the
    same order); ``weights`` are normalised to sum 1 (default: equal).

    Raises:
        ValueError: no member, arrays of different shapes, or bad weights (see
            :func:`normalized_weights`).
    """
    arrays = [np.asarray(z, dtype=np.float64) for z in z_list]
    w = normalized_weights(weights, len(arrays))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"members' scores have different shapes: {sorted(shapes)}")
    return np.tensordot(w, np.stack(arrays), axes=1)
