"""The detector contract every method follows (scikit-learn / PyOD style).

``fit(clips)`` learns from normal training clips and returns ``self``; ``score(clips)`` gives
anomaly scores (higher = more anomalous); ``threshold_`` is the decision threshold learnt on
normal data; ``predict(clips)`` gives 0/1 decisions; ``save(path)`` / ``load(path)`` round-trip.
Hyper-parameters are constructor arguments only; learnt state ends in ``_``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from stetho.datasets.clip import Clip
from stetho.errors import NotFittedError, StethoError
from stetho.features import Extracted, FeatureCache
from stetho.models.training import atomic_torch_save

FORMAT = "stetho-detector"
FORMAT_VERSION = 1


class Detector:
    """Base class: subclasses implement ``fit``, ``_score_all``, ``_get_state``, ``_set_state``."""

    #: Registry name (``--model``).
    name: ClassVar[str] = ""
    #: Score modes the detector offers; the first is the default.
    score_modes: ClassVar[tuple[str, ...]] = ("default",)
    #: One model for all machine types of a dataset (True), or one per machine type (False).
    joint: ClassVar[bool] = False
    #: ``fit`` takes validation clips (``Clip.is_validation``, e.g. the CANDE-CP MIMII split) for
    #: choosing its best epoch; for other detectors the pipeline leaves them out of training.
    uses_validation: ClassVar[bool] = False

    # -- features ---------------------------------------------------------------------------
    def extract(
        self, clips: Sequence[Clip], resample: bool = True, cache: FeatureCache | None = None,
        progress: bool = False, raise_on_error: bool = True, desc: str = "features",
    ) -> Extracted:
        """The features this detector learns from (log-mels, waveforms ...) of ``clips``.

        The audio is validated on the way; see :func:`stetho.features.extract_logmels` for
        ``raise_on_error`` (every bad clip reported at once) and the other arguments.
        """
        raise NotImplementedError

    def _features(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """``features`` when given (one per clip), else :meth:`extract` of the clips (validated)."""
        if features is None:
            return self.extract(clips).features
        if len(features) != len(clips):
            raise ValueError(f"{len(features)} feature arrays for {len(clips)} clips")
        return list(features)

    # -- hyper-parameters -------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments as a plain dict."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def check_params(self) -> None:
        """Raise :class:`~stetho.errors.ConfigError` for hyper-parameter values that cannot work
        (checked before any data is read); the base checks the default score mode."""
        self._mode(None)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the contract -----------------------------------------------------------------------
    def fit(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None) -> "Detector":
        raise NotImplementedError

    def score(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
        mode: str | None = None,
    ) -> np.ndarray:
        """Anomaly scores ``(n_clips,)``, higher = more anomalous, for score ``mode``."""
        return self.score_all(clips, features)[self._mode(mode)]

    def score_all(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Scores in every mode at once (one pass over the clips): ``{mode: (n_clips,)}``."""
        self._check_fitted()
        return self._score_all(clips, features)

    def predict(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
        mode: str | None = None,
    ) -> np.ndarray:
        """0/1 decisions: 1 when the score exceeds the mode's threshold."""
        mode = self._mode(mode)
        scores = self.score(clips, features, mode)
        thresholds = np.array([self.threshold_for(mode, c.machine) for c in clips])
        return (scores > thresholds).astype(np.int64)

    @property
    def threshold_(self) -> float | dict[str, float]:
        """Decision threshold of the default score mode (per machine type for joint detectors)."""
        self._check_fitted()
        return self.thresholds_[self._mode(None)]

    def threshold_for(self, mode: str | None = None, machine: str | None = None) -> float:
        """The decision threshold of ``mode`` for clips of ``machine`` (joint detectors keep one
        per machine type: ``thresholds_[mode][machine]``)."""
        self._check_fitted()
        value = self.thresholds_[self._mode(mode)]
        if isinstance(value, dict):
            if machine not in value:
                raise StethoError(f"{self.name}: no threshold for machine type {machine!r}; "
                                  f"fitted on {', '.join(value)}")
            return float(value[machine])
        return float(value)

    # -- what else a run records ------------------------------------------------------------
    def histories(self) -> dict[str, dict[str, list]]:
        """Training histories by part, each ``{column: values per epoch}`` with at least
        ``epoch``, ``train_loss`` and ``val_loss``; ``""`` is the main one (``history_``).
        Detectors that train several networks add parts (CANDE-CP: ``"predictor"``)."""
        return {"": self.history_}

    def report_tables(self) -> dict[str, list[dict[str, Any]]]:
        """Tables about the last :meth:`score_all` call beyond the scores (CANDE-CP: the context
        predicted for each file in streaming order), by name; the pipeline writes each to
        ``RUN/results/<name>.csv``. None by default."""
        return {}

    def report_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Arrays about the last :meth:`score_all` call, by name; each array has one row per
        scored clip, in the order the clips were given (embedding detectors: the test clips'
        embeddings). The pipeline adds the clips' ``name``, ``machine``, ``section``, ``domain``
        and ``label`` (-1 unknown) and writes each to ``RUN/results/<name>.npz``. None by default."""
        return {}

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the detector (parameters + learnt state) to ``path`` atomically."""
        self._check_fitted()
        atomic_torch_save(
            {"format": FORMAT, "version": FORMAT_VERSION, "model": self.name,
             "params": self.get_params(), "state": self._get_state()},
            path,
        )

    @classmethod
    def load(cls, path: str | Path) -> "Detector":
        """Read a detector written by :meth:`save` (any registered kind when called on the base)."""
        from stetho.models import get_model  # registry lives in the package

        path = Path(path)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise StethoError(f"{path}: model file does not exist") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds
            raise StethoError(f"{path}: not a stetho model file ({type(exc).__name__}: {exc})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise StethoError(f"{path}: not a stetho model file")
        if blob.get("version") != FORMAT_VERSION:
            raise StethoError(f"{path}: model format version {blob.get('version')}, expected {FORMAT_VERSION}")
        kind = get_model(blob["model"])
        if cls is not Detector and not issubclass(kind, cls):
            raise StethoError(f"{path}: holds a '{blob['model']}' model, not '{cls.name}'")
        det = kind(**blob["params"])
        det._set_state(blob["state"])
        return det

    # -- for subclasses ---------------------------------------------------------------------
    thresholds_: dict[str, float]
    #: The machine types the fitted detector scores.
    machines_: list[str]

    def _mode(self, mode: str | None) -> str:
        mode = mode or getattr(self, "score_mode", None) or self.score_modes[0]
        if mode not in self.score_modes:
            raise StethoError(f"unknown score mode '{mode}' for {self.name}; choose from {', '.join(self.score_modes)}")
        return mode

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit() or load()")

    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError
