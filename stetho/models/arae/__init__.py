"""ARAE: adversarially robust autoencoders for novelty detection (seed 004, METHODS.md §7)."""

from stetho.models.arae.detector import VARIANTS, ARAEDetector, arae_loss, union_loss
from stetho.models.arae.torch_model import ARAENet

__all__ = ["VARIANTS", "ARAEDetector", "ARAENet", "arae_loss", "union_loss"]
