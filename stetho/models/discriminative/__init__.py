"""Discriminative feature-space training with pseudo-labels (seed 002, Fujimura et al. 2024)."""

from stetho.models.discriminative.detector import DiscriminativeDetector
from stetho.models.discriminative.torch_model import MultiResolutionNet, SCAdaCosHead
from stetho.models.discriminative.waves import WaveBank

__all__ = ["DiscriminativeDetector", "MultiResolutionNet", "SCAdaCosHead", "WaveBank"]
