"""DCASE2023 Task 2 baseline autoencoder (seed 003)."""

from stetho.models.ae.detector import AEDetector
from stetho.models.ae.torch_model import AENet

__all__ = ["AEDetector", "AENet"]
