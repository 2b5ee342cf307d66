"""Discriminative feature-space training with pseudo-labels (seed 002, Fujimura et al. 2024)."""

from stetho.models.discriminative.detector import DiscriminativeDetector, WaveBank
from stetho.models.discriminative.torch_model import MultiResolutionNet, SCAdaCosHead

__all__ = ["DiscriminativeDetector", "MultiResolutionNet", "SCAdaCosHead", "WaveBank"]
