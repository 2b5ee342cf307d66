"""Models: one folder per method, each a pure ``nn.Module`` beside its detector; a registry.

Shared by every method: ``base`` (the detector contract: parameters, fit, scores, thresholds)
with ``calibration`` (held-out and cross-fitted calibration clips) and ``persistence`` (model
files, devices); ``params`` (parameter constraints); ``logmel`` (the log-mel front end of the
frame-based methods); ``training`` (the one training loop) with ``runtime`` (device, threads,
RNGs), ``checkpoints`` (fingerprints, resumable state, atomic files) and ``frames`` (stacked-frame
vectors, per-clip means).

The registry names each detector by module and class, and :data:`MODELS` imports a class only when
it is looked up: listing the names (``--model`` choices) does not load torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from stetho.errors import ConfigError

if TYPE_CHECKING:
    from stetho.models.base import Detector

#: Name used in recipes and ``--model`` → (module, class) of its detector, whose ``name`` is the
#: key. Adding a method: one folder + one line here.
REGISTRY: dict[str, tuple[str, str]] = {
    "ae": ("stetho.models.ae", "AEDetector"),
    "arae": ("stetho.models.arae", "ARAEDetector"),
    "bigan": ("stetho.models.bigan", "BiGANDetector"),
    "cande": ("stetho.models.cande", "CANDEDetector"),
    "discriminative": ("stetho.models.discriminative", "DiscriminativeDetector"),
    "stats": ("stetho.models.stats", "StatsDetector"),
}


class _Models(Mapping[str, "type[Detector]"]):
    """:data:`REGISTRY` as name → detector class, each class imported on first access."""

    def __getitem__(self, name: str) -> type[Detector]:
        module, cls = REGISTRY[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)

    def __repr__(self) -> str:
        return f"MODELS({', '.join(REGISTRY)})"


#: Name → detector class (a read-only mapping over :data:`REGISTRY`).
MODELS: Mapping[str, type[Detector]] = _Models()


def get_model(name: str) -> type[Detector]:
    """The detector class registered as ``name``."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(MODELS))}") from None


def __getattr__(attr: str) -> Any:
    """``Detector`` and the registered detector classes (``from stetho.models import AEDetector``),
    imported when first asked for (PEP 562)."""
    if attr == "Detector":
        from stetho.models.base import Detector

        return Detector
    for module, cls in REGISTRY.values():
        if cls == attr:
            return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["MODELS", "REGISTRY", "Detector", "get_model", *(cls for _, cls in REGISTRY.values())]
