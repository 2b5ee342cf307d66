"""The model registry (stetho/models/__init__.py): one line per method, classes loaded on use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stetho.errors import ConfigError
from stetho.models import MODELS, REGISTRY, Detector, get_model


def test_every_registry_line_names_a_detector_registered_under_its_own_name():
    assert list(MODELS) == list(REGISTRY) and len(MODELS) >= 5
    for name, cls in MODELS.items():
        assert issubclass(cls, Detector) and cls.name == name and cls.score_modes, name
        assert get_model(name) is cls
    with pytest.raises(ConfigError, match="unknown model 'vae'; available: ae, arae"):
        get_model("vae")


def test_detector_classes_are_importable_from_the_package():
    from stetho.models import AEDetector, CANDEDetector

    assert (AEDetector.name, CANDEDetector.name) == ("ae", "cande")
    with pytest.raises(ImportError):
        from stetho.models import NoSuchDetector  # noqa: F401


def test_listing_the_models_does_not_import_torch():
    code = ("import sys; from stetho.models import MODELS; names = list(MODELS); "
            "print(names, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{list(REGISTRY)} False"
