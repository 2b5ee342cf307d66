"""The detector contract every method follows (scikit-learn / PyOD style).

A detector **only produces scores**; the base class owns everything about decisions:

* ``fit(clips, features=None, context=None)`` checks the declared parameter constraints, sets
  clips aside for calibration (``calibration``), trains the method on the rest through the
  subclass hook ``_fit``, scores the calibration clips with ``_score_all`` and fits the
  thresholds. Extra inputs (work dir for checkpoints, unlabeled or validation clips) come in one
  typed :class:`FitContext`.
* ``decision_scores_[mode]``: one **out-of-sample** score per calibration clip (held-out training
  clips, or every training clip when cross-fitted), with the clips in ``calibration_``
  (``file``, ``machine``, ``section``, ``domain`` lists).
* ``thresholds_[mode][machine]``: always this shape; ``threshold_for(mode, machine)``.
* ``score`` / ``score_all`` / ``predict``; ``save`` / ``load`` round-trip (format version 2).
* What they take: clips, or audio file / folder paths, or float arrays of samples with their
  ``sample_rate`` (:mod:`stetho.models.inputs`); and the scikit-learn / PyOD names
  ``decision_function`` (= ``score``, higher = more anomalous), ``score_samples`` (its negative,
  scikit-learn's higher = more normal), ``predict`` (PyOD's 1 = anomalous, 0 = normal),
  ``get_params`` / ``set_params`` (so ``sklearn.base.clone`` and a ``Pipeline`` work).

Two parts of the base live in modules of their own: which clips calibrate
(:class:`stetho.models.calibration.Calibration`: hold-out, cross-fitting) and model files
(:class:`stetho.models.persistence.Persistence`: save, load, devices).

Hyper-parameters are constructor arguments only (plus the common ones of :data:`COMMON_PARAMS`);
learnt state ends in ``_``. Each class declares ``_parameter_constraints`` for every parameter
(:mod:`stetho.models.params`); :meth:`Detector.check_params` checks them before any audio is read.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from stetho.backends import fpr_threshold, gamma_threshold
from stetho.datasets.clip import SOURCE, Clip
from stetho.errors import ConfigError, ExportError, NotFittedError, StethoError
from stetho.features import Extracted, FeatureCache, FeatureList, take
from stetho.models.calibration import Calibration
from stetho.models.inputs import as_clips
from stetho.models.params import DEVICE, SEED, Boolean, Constraint, Interval, Options, validate_params
from stetho.models.persistence import FORMAT, FORMAT_SINCE, FORMAT_VERSION, Persistence  # noqa: F401 (importable here)
from stetho.models.training import TrainingDivergedError, resolve_device, training_settings, use_threads

if TYPE_CHECKING:  # torch only for the export hook's annotation: the base imports no torch itself
    import torch

log = logging.getLogger(__name__)

#: Parameters every detector takes (keyword-only), with their defaults: where and how it runs
#: (``seed`` of every random choice, ``device``, the ``channel`` read from multi-channel files,
#: ``progress`` bars), then how it decides.
COMMON_PARAMS: dict[str, Any] = {
    "seed": 13711,
    "device": "auto",
    "channel": 0,
    "progress": False,
    "threshold": "calibrated",
    "calibration": "holdout",
    "calibration_split": 0.2,
    "calibration_folds": 5,
    "decision_fpr": 0.1,
    "decision_quantile": 0.9,
    "threads": "auto",
}

#: Fewer held-out clips of a machine type than this give rough thresholds (a warning says so).
FEW_CALIBRATION_CLIPS = 20

#: Parameters read only after training (decisions): left out of checkpoint fingerprints, like
#: the run-only ones of :func:`stetho.models.training.training_settings`.
DECISION_PARAMS = ("decision_fpr", "decision_quantile")

COMMON_CONSTRAINTS: dict[str, list[Constraint | None]] = {
    "seed": [SEED],
    "device": [DEVICE],
    "channel": [Interval(int, 0, None)],
    "progress": [Boolean()],
    "threshold": [Options("calibrated", "official")],
    "calibration": [Options("holdout", "cv")],
    "calibration_split": [Interval(float, 0, 0.5, closed="right")],
    "calibration_folds": [Interval(int, 2, 20)],
    "decision_fpr": [Interval(float, 0, 1, closed="neither"), None],
    "decision_quantile": [Interval(float, 0, 1, closed="neither")],
    "threads": [Options("auto"), Interval(int, 1, None), None],
}


@dataclass(frozen=True)
class FitContext:
    """What a detector's ``fit`` may use beyond its training clips.

    Attributes:
        work_dir: folder for checkpoints and intermediate files (resuming a killed training
            reads them); ``None``: nothing written.
        unlabeled: ``(clips, features)`` of unlabeled (test) clips, for transductive methods.
        validation: ``(clips, features)`` of validation clips, for methods that choose their
            best epoch on them (``Detector.uses_validation``).
        on_epoch: called after each training epoch as ``on_epoch(epoch, detector)`` with the
            network being trained in place (``detector.score_arrays`` works); the mapping it
            returns (or ``None``) is added to the epoch's history and log line, e.g. a test AUC
            learning curve. Honoured by detectors whose docstring says so (ARAE).
        stop: asked before each epoch but the first; True stops the training with
            :class:`~stetho.models.training.TrainingStopped` after the last epoch's checkpoint
            (a time budget; the next fit with the same work dir resumes). Same detectors.
    """

    work_dir: Path | None = None
    unlabeled: tuple[Sequence[Clip], Sequence[np.ndarray]] | None = None
    validation: tuple[Sequence[Clip], Sequence[np.ndarray]] | None = None
    on_epoch: Callable[[int, Any], Mapping[str, float] | None] | None = None
    stop: Callable[[], bool] | None = None

    def sub(self, name: str) -> "FitContext":
        """The same context with its work dir in a sub-folder ``name`` (one per fold)."""
        return replace(self, work_dir=None if self.work_dir is None else Path(self.work_dir) / name)


class Detector(Calibration, Persistence):
    """Base class. A method implements ``_fit``, ``_score_all``, ``_get_state``, ``_set_state``
    and ``extract`` (a log-mel method inherits it from :class:`stetho.models.logmel.LogMelDetector`),
    declares ``_parameter_constraints`` for its own constructor arguments, and registers itself
    in :data:`stetho.models.MODELS`; the base does the common parameters, calibration,
    thresholds, decisions and persistence (see the module docstring)."""

    #: Registry name (``--model``).
    name: ClassVar[str] = ""
    #: Score modes the detector offers; the first is the default.
    score_modes: ClassVar[tuple[str, ...]] = ("default",)
    #: One model for all machine types of a dataset (True), or one per machine type (False).
    joint: ClassVar[bool] = False
    #: ``fit`` uses validation clips (``FitContext.validation``, e.g. the CANDE-CP MIMII split)
    #: for choosing its best epoch; for other detectors the pipeline leaves them out of training.
    uses_validation: ClassVar[bool] = False
    #: Allowed values of each constructor argument (:mod:`stetho.models.params`); every
    #: argument must be declared (a test checks it for every registered model).
    _parameter_constraints: ClassVar[dict[str, list[Constraint | None]]] = {}

    seed: int
    device: str
    channel: int
    progress: bool
    threshold: str
    calibration: str
    calibration_split: float
    calibration_folds: int
    decision_fpr: float | None
    decision_quantile: float
    threads: int | str | None

    #: A method's own defaults of common parameters (e.g. ``{"calibration": "cv"}`` for a
    #: detector whose fits cost nothing); the rest are :data:`COMMON_PARAMS`'.
    common_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **common: Any) -> None:
        unknown = sorted(set(common) - set(COMMON_PARAMS))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(unknown)}")
        for key, default in {**COMMON_PARAMS, **self.common_defaults}.items():
            setattr(self, key, common.get(key, default))

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

    @property
    def signal_spec(self) -> tuple[int, int]:
        """``(sample rate in Hz, fewest samples)`` a signal must have at that rate for
        :meth:`signal_features` (what :meth:`extract` asks of a file)."""
        raise NotImplementedError(f"{self.name} does not score signals held in memory")

    def signal_features(self, y: np.ndarray, path: str | Path = "<signal>") -> np.ndarray:
        """The features :meth:`extract` gives a clip whose validated samples at
        ``signal_spec[0]`` Hz are ``y`` ``(n_samples,)`` (one upload, scored without a file or
        the feature cache); ``path`` names it in errors."""
        raise NotImplementedError(f"{self.name} does not score signals held in memory")

    def _features(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """``features`` when given (one per clip), else :meth:`extract` of the clips (validated)."""
        if features is None:
            return self.extract(clips).features
        if len(features) != len(clips):
            raise ValueError(f"{len(features)} feature arrays for {len(clips)} clips")
        return features if isinstance(features, FeatureList) else list(features)  # a FeatureList stays on disk

    # -- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Every parameter the detector takes with its default: the constructor's own
        arguments, then the common ones (:data:`COMMON_PARAMS`, with the class's
        :attr:`common_defaults`)."""
        sig = inspect.signature(cls.__init__)
        own = {k: p.default for k, p in sig.parameters.items()
               if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        return {**own, **COMMON_PARAMS, **cls.common_defaults}

    @classmethod
    def parameter_constraints(cls) -> dict[str, list[Constraint | None]]:
        """Allowed values of every parameter (the common ones and the class's own)."""
        return {**COMMON_CONSTRAINTS, **cls._parameter_constraints}

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters as a plain dict (``type(det)(**det.get_params())`` is an unfitted copy);
        ``deep`` is scikit-learn's argument (a detector holds no nested estimators)."""
        return {k: getattr(self, k) for k in self.param_defaults()}

    def set_params(self, **params: Any) -> "Detector":
        """Set parameters by name (scikit-learn's ``set_params``); checked at the next ``fit``
        (:meth:`check_params`). A name the detector does not take is a :class:`ConfigError`."""
        valid = self.param_defaults()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ConfigError(f"{self.name}: unknown parameter(s) {', '.join(unknown)}; it takes {', '.join(valid)}")
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __sklearn_clone__(self) -> "Detector":
        """What ``sklearn.base.clone`` returns: an unfitted detector with deep copies of these
        parameters. (scikit-learn's default clone insists that a constructor stores each argument
        as the very object given; CANDE's ``predictor_hidden`` and the discriminative model's
        ``branches`` are stored as lists, for their model files.)"""
        return type(self)(**copy.deepcopy(self.get_params()))

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's estimator tags (a ``Pipeline`` asks for them): an unsupervised
        outlier detector (no ``y``) that validates its own inputs (clips, paths, arrays).
        scikit-learn is imported here only, when scikit-learn itself asks."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type="outlier_detector", target_tags=TargetTags(required=False),
                    input_tags=InputTags(one_d_array=True, two_d_array=True, string=True), no_validation=True)

    def check_params(self) -> None:
        """Raise :class:`~stetho.errors.ConfigError` (one line naming the parameter and its
        allowed values) for a value that cannot work; called before any data is read."""
        validate_params(self.name, self.get_params(), self.parameter_constraints())
        if isinstance(self.device, str):
            resolve_device(self.device)  # cuda without CUDA: one line now, not a crash in torch later
        self._mode(None)
        self._check_params()

    def _fingerprint_params(self) -> dict[str, Any]:
        """The parameters that shape training (for checkpoint fingerprints)."""
        return {k: v for k, v in training_settings(self.get_params()).items() if k not in DECISION_PARAMS}

    def _check_params(self) -> None:
        """Checks across parameters (e.g. ensemble epochs within the training epochs)."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the contract -----------------------------------------------------------------------
    def fit(
        self, clips: Any, features: Sequence[np.ndarray] | None = None,
        context: FitContext | None = None, *, sample_rate: int | None = None, machine_type: str | None = None,
    ) -> "Detector":
        """Learn from normal training ``clips`` (features extracted when not given) and fit the
        decision thresholds on out-of-sample scores (see ``threshold`` / ``calibration``).

        ``clips`` may also be audio file / folder paths or float arrays of samples with their
        ``sample_rate`` in Hz, all of one machine type (``machine_type``, default
        ``"machine"``); see :mod:`stetho.models.inputs`. (A scikit-learn ``Pipeline`` passes its
        ``y=None`` as ``features``.)"""
        self.check_params()
        clips, features = as_clips(self, clips, features, sample_rate=sample_rate, machine_type=machine_type,
                                   fitting=True)
        if not clips:
            raise ValueError("fit() needs at least one training clip")
        context = context or FitContext()
        feats = self._features(clips, features)
        self.machines_ = sorted({c.machine for c in clips})
        with use_threads(self.threads):
            try:
                self._fit_and_calibrate(clips, feats, context)
            except TrainingDivergedError as exc:
                raise exc.with_context(f"{self.name} ({', '.join(self.machines_)})", self._divergence_hint()) from None
        return self

    def _divergence_hint(self) -> str:
        """What to change after a diverged training: the learning rate(s), with their values."""
        rates = [f"{k} (now {v:g})" for k, v in self.get_params().items()
                 if (k == "lr" or k.endswith("_lr")) and isinstance(v, (int, float))]
        return f"lower {' or '.join(rates)}" if rates else "lower the learning rate"

    def _fit_and_calibrate(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> None:
        if self.threshold == "official":
            # The DCASE baselines' own fit: every clip trains, thresholds from in-sample scores.
            self._fit(clips, feats, context)
            cal, scores = clips, self._in_sample_scores(clips, feats)
        elif self.calibration == "holdout":
            held = set(self._holdout(clips))
            rest = [i for i in range(len(clips)) if i not in held]
            cal_idx = sorted(held)
            log.info("%s: %d of %d training clips held out to calibrate the thresholds",
                     self.name, len(cal_idx), len(clips))
            self._fit([clips[i] for i in rest], take(feats, rest), context)
            cal = [clips[i] for i in cal_idx]
            scores = self._calibration_scores(cal, take(feats, cal_idx))
        else:
            cal, scores = clips, self._cross_fit(clips, feats, context)
        self._set_calibration(cal, scores)

    def calibrate(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None) -> "Detector":
        """Refit the thresholds on the scores of other normal ``clips`` (e.g. recordings of a
        machine's first healthy days), with the detector's ``decision_fpr``."""
        self._check_fitted()
        clips = list(clips)
        self._set_calibration(clips, self.score_all(clips, features))
        return self

    def refit_thresholds(self, decision_fpr: float | None | str = "keep",
                         decision_quantile: float | None = None) -> "Detector":
        """New thresholds from the stored out-of-sample scores for another false-alarm target
        (``decision_fpr``; ``None``: the Gamma quantile ``decision_quantile``); no scoring."""
        self._check_fitted()
        new = dict(self.get_params())
        if decision_fpr != "keep":
            new["decision_fpr"] = decision_fpr
        if decision_quantile is not None:
            new["decision_quantile"] = decision_quantile
        validate_params(self.name, {k: new[k] for k in ("decision_fpr", "decision_quantile")},
                        self.parameter_constraints())
        self.decision_fpr, self.decision_quantile = new["decision_fpr"], new["decision_quantile"]
        self._fit_thresholds()
        return self

    def score(
        self, clips: Any, features: Sequence[np.ndarray] | None = None,
        mode: str | None = None, *, sample_rate: int | None = None, machine_type: str | None = None,
    ) -> np.ndarray:
        """Anomaly scores ``(n_clips,)``, higher = more anomalous, for score ``mode``.

        ``clips`` may also be paths or arrays, as in :meth:`fit`; their machine type is
        ``machine_type``, else the only one the detector was fitted on."""
        return self.score_all(clips, features, sample_rate=sample_rate, machine_type=machine_type)[self._mode(mode)]

    def score_all(
        self, clips: Any, features: Sequence[np.ndarray] | None = None, *,
        sample_rate: int | None = None, machine_type: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Scores in every mode at once (one pass over the clips): ``{mode: (n_clips,)}``."""
        self._check_fitted()
        clips, features = as_clips(self, clips, features, sample_rate=sample_rate, machine_type=machine_type)
        with use_threads(self.threads):
            return self._score_all(clips, features)

    def predict(
        self, clips: Any, features: Sequence[np.ndarray] | None = None,
        mode: str | None = None, *, sample_rate: int | None = None, machine_type: str | None = None,
    ) -> np.ndarray:
        """0/1 decisions (PyOD's convention, not scikit-learn's -1/1): 1 = anomalous, when the
        score exceeds the threshold of the mode and machine type (:attr:`thresholds_`)."""
        mode = self._mode(mode)
        self._check_fitted()
        clips, features = as_clips(self, clips, features, sample_rate=sample_rate, machine_type=machine_type)
        scores = self.score(clips, features, mode)
        return self.decide(scores, [c.machine for c in clips], mode)

    def decision_function(
        self, clips: Any, mode: str | None = None, *, sample_rate: int | None = None,
        machine_type: str | None = None,
    ) -> np.ndarray:
        """PyOD's name for :meth:`score`: anomaly scores ``(n_clips,)``, higher = more anomalous."""
        return self.score(clips, None, mode, sample_rate=sample_rate, machine_type=machine_type)

    def score_samples(
        self, clips: Any, mode: str | None = None, *, sample_rate: int | None = None,
        machine_type: str | None = None,
    ) -> np.ndarray:
        """scikit-learn's convention (``IsolationForest.score_samples``): higher = more *normal*,
        i.e. ``-decision_function``."""
        return -self.decision_function(clips, mode, sample_rate=sample_rate, machine_type=machine_type)

    def decide(self, scores: np.ndarray, machines: Sequence[str], mode: str | None = None) -> np.ndarray:
        """0/1 decisions of ``scores`` of clips of ``machines`` in score ``mode``."""
        mode = self._mode(mode)
        thresholds = np.array([self.threshold_for(mode, m) for m in machines], dtype=np.float64)
        return (np.asarray(scores, dtype=np.float64) > thresholds).astype(np.int64)

    @property
    def threshold_(self) -> dict[str, float]:
        """Thresholds of the default score mode by machine type (``thresholds_[mode]``)."""
        self._check_fitted()
        return dict(self.thresholds_[self._mode(None)])

    def threshold_for(self, mode: str | None = None, machine: str | None = None) -> float:
        """The decision threshold of ``mode`` for clips of ``machine`` (``None``: the only
        machine type of a detector fitted on one)."""
        self._check_fitted()
        per = self.thresholds_[self._mode(mode)]
        if machine is None and len(per) == 1:
            machine = next(iter(per))
        if machine not in per:
            raise StethoError(f"{self.name}: no threshold for machine type {machine!r}; "
                              f"fitted on {', '.join(per)}")
        return float(per[machine])

    def _set_calibration(self, clips: Sequence[Clip], scores: Mapping[str, np.ndarray]) -> None:
        """Store the out-of-sample scores of the calibration clips and fit the thresholds."""
        self.decision_scores_ = {}
        for mode in self.score_modes:
            s = np.asarray(scores[mode], dtype=np.float64).ravel()
            if s.shape != (len(clips),):
                raise ValueError(f"{self.name}: {s.size} {mode} scores for {len(clips)} calibration clips")
            if not np.isfinite(s).all():
                bad = [str(c.path) for c, v in zip(clips, s) if not np.isfinite(v)][:3]
                raise StethoError(f"{self.name}: non-finite {mode} score of normal clip(s) {', '.join(bad)}; "
                                  "the model diverged or the audio is degenerate")
            self.decision_scores_[mode] = s
        self.calibration_ = {
            "file": [str(c.path) for c in clips], "machine": [c.machine for c in clips],
            "section": [c.section for c in clips], "domain": [c.domain or SOURCE for c in clips],
        }
        self._fit_thresholds()

    def _fit_thresholds(self) -> None:
        """``thresholds_[mode][machine]`` from ``decision_scores_``: the Gamma quantile for
        ``threshold="official"`` (or ``decision_fpr=None``), else the false-alarm target with
        each domain weighted equally (:func:`stetho.backends.fpr_threshold`)."""
        machines = np.array(self.calibration_["machine"], dtype=object)
        domains = np.array(self.calibration_["domain"], dtype=object)
        thresholds: dict[str, dict[str, float]] = {}
        for mode in self.score_modes:
            s = self.decision_scores_[mode]
            per: dict[str, float] = {}
            for m in self.machines_:
                sel = machines == m
                if not sel.any():
                    raise StethoError(f"{self.name}: no calibration clips of machine type {m}")
                if mode == self.score_modes[0] and self.threshold == "calibrated" and sel.sum() < FEW_CALIBRATION_CLIPS:
                    log.warning("%s: the thresholds of %s rest on %d held-out normal clip(s): the share of normal "
                                "clips they flag may be far from decision_fpr=%s (README: Calibrated decisions)",
                                self.name, m, int(sel.sum()), self.decision_fpr)
                if self.threshold == "official" or self.decision_fpr is None:
                    per[m] = gamma_threshold(s[sel], self.decision_quantile)
                else:
                    per[m] = fpr_threshold(s[sel], domains[sel], self.decision_fpr)
                if not np.isfinite(per[m]):
                    raise StethoError(f"{self.name}: the {mode} threshold of {m} is {per[m]}: the model diverged "
                                      "or its scores are degenerate; nothing was saved")
            thresholds[mode] = per
        self.thresholds_ = thresholds

    # -- what else a run records ------------------------------------------------------------
    def histories(self) -> dict[str, dict[str, list]]:
        """Training histories by part, each ``{column: values per epoch}`` with at least
        ``epoch``, ``train_loss`` and ``val_loss``; ``""`` is the main one (``history_``).
        Detectors that train several networks add parts (CANDE-CP: ``"predictor"``)."""
        return {"": self.history_}

    # -- export (optional) -------------------------------------------------------------------
    #: Why the detector has no :meth:`export_module` (shown in its :class:`ExportError`); a
    #: detector that exports overrides :meth:`export_module` instead.
    export_unsupported: ClassVar[str] = "it has no export module yet"
    #: Whether the exported module's scores depend on its ``section`` input (an edge scorer then
    #: refuses a section the detector was not fitted on; otherwise any section scores alike).
    export_uses_section: ClassVar[bool] = True

    def export_module(self, machine_type: str) -> "torch.nn.Module":
        """A pure-torch module (eval mode, on the CPU) that scores one clip of ``machine_type``
        from its raw samples, for export to ONNX / TorchScript (:mod:`stetho.export`).

        Its ``forward(waveform, section)`` takes float32 ``(n_samples,)`` mono samples at
        ``signal_spec[0]`` Hz (at least ``signal_spec[1]`` of them) and an int64 scalar tensor,
        the index of the clip's section in :meth:`export_sections`, and returns float32
        ``(len(score_modes),)``: the clip's score in every mode, in :attr:`score_modes` order,
        equal to what :meth:`score_all` gives for the same clip (front end, network, backend
        statistics and score reductions all inside the module).

        Raises:
            ExportError: the detector cannot be exported (naming the model and why), or it was
                not fitted on ``machine_type``.
        """
        raise ExportError(f"{self.name} models cannot be exported for scoring without PyTorch: "
                          f"{self.export_unsupported}")

    def export_sections(self, machine_type: str) -> list[str]:
        """The sections (machine IDs) of ``machine_type`` the exported module knows, sorted: its
        ``section`` input is an index into this list. By default those of the calibration clips."""
        self._check_export_machine(machine_type)
        return sorted({s for m, s in zip(self.calibration_["machine"], self.calibration_["section"])
                       if m == machine_type})

    def _check_export_machine(self, machine_type: str) -> None:
        """:class:`ExportError` unless the fitted detector scores ``machine_type``."""
        self._check_fitted()
        if machine_type not in self.machines_:
            raise ExportError(f"{self.name}: cannot export machine type {machine_type!r}: it was fitted on "
                              f"{', '.join(self.machines_)}")

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

    # -- for subclasses ---------------------------------------------------------------------
    thresholds_: dict[str, dict[str, float]]
    decision_scores_: dict[str, np.ndarray]
    calibration_: dict[str, list[str]]
    #: The machine types the fitted detector scores.
    machines_: list[str]

    def _mode(self, mode: str | None) -> str:
        mode = mode or getattr(self, "score_mode", None) or self.score_modes[0]
        if mode not in self.score_modes:
            raise ConfigError(f"unknown score mode '{mode}' for {self.name}; choose from {', '.join(self.score_modes)}")
        return mode

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholds_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit() or load()")

    def _fit(self, clips: list[Clip], features: list[np.ndarray], context: FitContext) -> None:
        """Train the method on ``clips`` (``self.machines_`` is set); no thresholds."""
        raise NotImplementedError

    def _score_all(self, clips: list[Clip], features: Sequence[np.ndarray] | None) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def _set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

