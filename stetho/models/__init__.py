"""Models: one folder per method, each a pure ``nn.Module`` beside its detector; a registry."""

from __future__ import annotations

from stetho.errors import ConfigError
from stetho.models.ae import AEDetector
from stetho.models.arae import ARAEDetector
from stetho.models.base import Detector
from stetho.models.bigan import BiGANDetector
from stetho.models.cande import CANDEDetector
from stetho.models.discriminative import DiscriminativeDetector

#: Name used in recipes and ``--model`` → detector class. Adding a method: one folder + one line.
MODELS: dict[str, type[Detector]] = {
    AEDetector.name: AEDetector,
    ARAEDetector.name: ARAEDetector,
    BiGANDetector.name: BiGANDetector,
    CANDEDetector.name: CANDEDetector,
    DiscriminativeDetector.name: DiscriminativeDetector,
}


def get_model(name: str) -> type[Detector]:
    """The detector class registered as ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}") from None


__all__ = ["MODELS", "AEDetector", "ARAEDetector", "BiGANDetector", "CANDEDetector", "Detector", "DiscriminativeDetector", "get_model"]
