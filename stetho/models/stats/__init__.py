"""Clip-statistics baselines: per-band log-mel statistics scored by kNN, density-normalised kNN,
Mahalanobis or GMM backends, with no training loop (issue 18)."""

from stetho.models.stats.detector import STATISTICS, StatsDetector, clip_statistics

__all__ = ["STATISTICS", "StatsDetector", "clip_statistics"]
