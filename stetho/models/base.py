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

Hyper-parameters are constructor arguments only (plus the common ones of :data:`COMMON_PARAMS`);
learnt state ends in ``_``. Each class declares ``_parameter_constraints`` for every parameter
(:mod:`stetho.models.params`); :meth:`Detector.check_params` checks them before any audio is read.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from stetho.backends import fpr_threshold, gamma_threshold
from stetho.datasets.clip import SOURCE, Clip
from stetho.errors import ConfigError, NotFittedError, StethoError
from stetho.features import Extracted, FeatureCache
from stetho.models.params import Constraint, Interval, Options, validate_params
from stetho.models.training import (TrainingDivergedError, atomic_torch_save, resolve_device, training_settings,
                                    use_threads)

log = logging.getLogger(__name__)

FORMAT = "stetho-detector"
#: Version 2: base-owned decision scores and ``thresholds_[mode][machine]`` (stetho 0.2.0).
FORMAT_VERSION = 2
FORMAT_SINCE = "0.2.0"

#: Parameters every detector takes (keyword-only), with their defaults.
COMMON_PARAMS: dict[str, Any] = {
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
    """

    work_dir: Path | None = None
    unlabeled: tuple[Sequence[Clip], Sequence[np.ndarray]] | None = None
    validation: tuple[Sequence[Clip], Sequence[np.ndarray]] | None = None

    def sub(self, name: str) -> "FitContext":
        """The same context with its work dir in a sub-folder ``name`` (one per fold)."""
        return replace(self, work_dir=None if self.work_dir is None else Path(self.work_dir) / name)


class Detector:
    """Base class. A method implements ``_fit``, ``_score_all``, ``_get_state``, ``_set_state``
    and ``extract``, declares ``_parameter_constraints``, and registers itself in
    :data:`stetho.models.MODELS`; the base does parameters, calibration, thresholds, decisions
    and persistence (see the module docstring)."""

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

    threshold: str
    calibration: str
    calibration_split: float
    calibration_folds: int
    decision_fpr: float | None
    decision_quantile: float
    threads: int | str | None

    def __init__(self, **common: Any) -> None:
        unknown = sorted(set(common) - set(COMMON_PARAMS))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unexpected keyword argument(s) {', '.join(unknown)}")
        for key, default in COMMON_PARAMS.items():
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

    def _features(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None) -> list[np.ndarray]:
        """``features`` when given (one per clip), else :meth:`extract` of the clips (validated)."""
        if features is None:
            return self.extract(clips).features
        if len(features) != len(clips):
            raise ValueError(f"{len(features)} feature arrays for {len(clips)} clips")
        return list(features)

    # -- hyper-parameters -------------------------------------------------------------------
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Every parameter the detector takes with its default: the constructor's own
        arguments, then the common ones (:data:`COMMON_PARAMS`)."""
        sig = inspect.signature(cls.__init__)
        own = {k: p.default for k, p in sig.parameters.items()
               if k != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        return {**own, **COMMON_PARAMS}

    @classmethod
    def parameter_constraints(cls) -> dict[str, list[Constraint | None]]:
        """Allowed values of every parameter (the common ones and the class's own)."""
        return {**COMMON_CONSTRAINTS, **cls._parameter_constraints}

    def get_params(self) -> dict[str, Any]:
        """Parameters as a plain dict (``type(det)(**det.get_params())`` is an unfitted copy)."""
        return {k: getattr(self, k) for k in self.param_defaults()}

    def check_params(self) -> None:
        """Raise :class:`~stetho.errors.ConfigError` (one line naming the parameter and its
        allowed values) for a value that cannot work; called before any data is read."""
        validate_params(self.name, self.get_params(), self.parameter_constraints())
        if isinstance(getattr(self, "device", None), str):
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
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
        context: FitContext | None = None,
    ) -> "Detector":
        """Learn from normal training ``clips`` (features extracted when not given) and fit the
        decision thresholds on out-of-sample scores (see ``threshold`` / ``calibration``)."""
        self.check_params()
        clips = list(clips)
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
            self._fit([clips[i] for i in rest], [feats[i] for i in rest], context)
            cal = [clips[i] for i in cal_idx]
            scores = self._calibration_scores(cal, [feats[i] for i in cal_idx])
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
        with use_threads(self.threads):
            return self._score_all(list(clips), features)

    def predict(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
        mode: str | None = None,
    ) -> np.ndarray:
        """0/1 decisions: 1 when the score exceeds the threshold of the mode and machine type."""
        mode = self._mode(mode)
        scores = self.score(clips, features, mode)
        return self.decide(scores, [c.machine for c in clips], mode)

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

    # -- calibration ------------------------------------------------------------------------
    def _groups(self, clips: Sequence[Clip]) -> dict[tuple[str, str, str], list[int]]:
        groups: dict[tuple[str, str, str], list[int]] = {}
        for i, c in enumerate(clips):
            groups.setdefault((c.machine, c.section, c.domain or SOURCE), []).append(i)
        return dict(sorted(groups.items()))

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([int(getattr(self, "seed", 0)) % 2**32, 0xCA11B])

    def _holdout(self, clips: Sequence[Clip]) -> list[int]:
        """Indices of the calibration clips: a share ``calibration_split`` of every (machine
        type, section, domain), at least one of a group of 3 or more, never a whole group."""
        rng = self._rng()
        held: list[int] = []
        per_machine: dict[str, list[list[int]]] = {}
        for (machine, _, _), idx in self._groups(clips).items():
            perm = [idx[j] for j in rng.permutation(len(idx))]
            k = min(max(int(round(self.calibration_split * len(idx))), 1 if len(idx) >= 3 else 0), len(idx) - 1)
            held += perm[:k]
            per_machine.setdefault(machine, []).append(perm)
        have = {clips[i].machine for i in held}
        for machine, perms in per_machine.items():
            if machine in have:
                continue
            if sum(map(len, perms)) < 2:
                raise ConfigError(
                    f"{self.name}: machine type {machine} has {sum(map(len, perms))} training clip(s): a "
                    "calibrated threshold needs clips the model did not train on; add clips or use "
                    "params.threshold=official (thresholds from in-sample scores)")
            held.append(max(perms, key=len)[0])  # groups of 1-2 clips: one clip of the largest
        return sorted(held)

    def _folds(self, clips: Sequence[Clip]) -> list[list[int]]:
        """``calibration_folds`` folds, stratified by (machine type, section, domain)."""
        k = self.calibration_folds
        rng = self._rng()
        fold_of = np.empty(len(clips), dtype=np.int64)
        offset = 0
        for idx in self._groups(clips).values():
            perm = [idx[j] for j in rng.permutation(len(idx))]
            for r, i in enumerate(perm):
                fold_of[i] = (offset + r) % k
            offset += len(idx)
        folds = [np.flatnonzero(fold_of == f).tolist() for f in range(k)]
        for f, held in enumerate(folds):
            left = {clips[i].machine for i in range(len(clips)) if fold_of[i] != f}
            lost = sorted(set(self.machines_) - left)
            if lost:
                raise ConfigError(f"{self.name}: too few training clips of {', '.join(lost)} for "
                                  f"{k}-fold calibration; lower params.calibration_folds or use holdout")
        return [f for f in folds if f]

    def _clone(self) -> "Detector":
        return type(self)(**copy.deepcopy(self.get_params()))

    def _cross_fit(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> dict[str, np.ndarray]:
        """Out-of-sample scores of every clip by K-fold cross-fitting, then the final fit on all."""
        folds = self._folds(clips)
        out = {m: np.full(len(clips), np.nan) for m in self.score_modes}
        for f, held in enumerate(folds):
            log.info("%s: calibration fold %d of %d (%d clips held out)", self.name, f + 1, len(folds), len(held))
            held_set = set(held)
            rest = [i for i in range(len(clips)) if i not in held_set]
            clone = self._clone()
            clone.machines_ = sorted({clips[i].machine for i in rest})
            clone._fit([clips[i] for i in rest], [feats[i] for i in rest], context.sub(f"fold_{f + 1}"))
            scores = clone._calibration_scores([clips[i] for i in held], [feats[i] for i in held])
            for m in self.score_modes:
                out[m][held] = scores[m]
        self._fit(clips, feats, context if context.work_dir is None else context.sub("final"))
        return out

    def _calibration_scores(self, clips: list[Clip], feats: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Scores of held-out normal clips, as the method scores test clips (``_score_all``); a
        method whose scores depend on the order of a stream overrides it (CANDE-CP)."""
        return self._score_all(clips, feats)

    def _in_sample_scores(self, clips: list[Clip], feats: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Scores of the training clips for ``threshold="official"`` (the baselines' in-sample
        fit); a method whose original fits differently (e.g. cross-fitted backends) overrides it."""
        return self._score_all(clips, feats)

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
    def _base_state(self) -> dict[str, Any]:
        return {
            "machines": list(self.machines_),
            "thresholds": {m: dict(v) for m, v in self.thresholds_.items()},
            "decision_scores": {m: torch.from_numpy(np.asarray(s, dtype=np.float64))
                                for m, s in self.decision_scores_.items()},
            "calibration": {k: list(v) for k, v in self.calibration_.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the detector (parameters + learnt state) to ``path`` atomically.

        A detector with a non-finite threshold, decision score or weight is never written
        (:class:`~stetho.errors.StethoError`); a full or read-only disk is a
        :class:`~stetho.errors.StorageError` and leaves the previous file as it was.
        """
        self._check_fitted()
        base, state = self._base_state(), self._get_state()
        bad = _non_finite({"thresholds": base["thresholds"], "decision_scores": base["decision_scores"],
                           "state": state})
        if bad:
            raise StethoError(f"{self.name}: not saved to {path}: {', '.join(bad[:3])} hold NaN/inf "
                              "(the training diverged)")
        atomic_torch_save(
            {"format": FORMAT, "version": FORMAT_VERSION, "model": self.name,
             "params": self.get_params(), "base": base, "state": state},
            path,
        )

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "Detector":
        """Read a detector written by :meth:`save` (any registered kind when called on the base).

        Args:
            path: the model file. ``torch.load`` reads it with ``weights_only=True`` (no code in
                a crafted file runs) and ``map_location="cpu"`` (a file written on a GPU loads on
                a machine without one); the networks are then moved to ``device``.
            device: where the networks score: ``None`` keeps the device the model was trained
                with when it is usable here and falls back to the CPU otherwise (a model trained
                on CUDA loads on a machine without CUDA); ``"auto"``, ``"cpu"``, ``"cuda"``,
                ``"cuda:N"`` use that one (:class:`~stetho.errors.ConfigError` when it is not
                there). :meth:`set_device` moves a loaded detector later.

        Raises:
            StethoError: one line naming ``path`` for a missing, truncated, foreign, damaged or
                crafted file: not a torch file, another format or version, a missing entry,
                an unknown or invalid parameter, NaN/inf weights, a state that does not fit.
        """
        path = Path(path)
        if device is not None:
            resolve_device(device)  # an unusable --device: its own one-line error, before reading
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise StethoError(f"{path}: model file does not exist") from None
        except IsADirectoryError:
            raise StethoError(f"{path}: is a folder, not a model file") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds
            raise StethoError(f"{path}: not a stetho model file, or a truncated or damaged one "
                              f"({_one_line(exc)})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise StethoError(f"{path}: not a stetho model file")
        version = blob.get("version")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise StethoError(f"{path}: written by an older stetho (model format {version}, before the "
                              f"calibrated thresholds); re-train with stetho >= {FORMAT_SINCE}")
        if version != FORMAT_VERSION:
            raise StethoError(f"{path}: model format version {version!r}, this stetho reads {FORMAT_VERSION}; "
                              "upgrade stetho")
        try:
            return cls._from_blob(blob, path, device)
        except StethoError as exc:
            text = str(exc)
            raise StethoError(text if text.startswith(str(path)) else f"{path}: {text}") from None
        except Exception as exc:  # noqa: BLE001 - a crafted or damaged file fails anywhere in _set_state
            what = (f"the entry {exc.args[0]!r} is missing" if isinstance(exc, KeyError) and exc.args
                    else _one_line(exc))
            raise StethoError(f"{path}: damaged or foreign model file ({what}); re-train") from None

    @classmethod
    def _from_blob(cls, blob: dict, path: Path, device: str | None) -> "Detector":
        """The detector of a loaded file's ``blob`` (see :meth:`load`)."""
        from stetho.models import get_model  # registry lives in the package

        name = blob["model"]
        if not isinstance(name, str):
            raise StethoError(f"its model name is a {type(name).__name__}, not a name")
        kind = get_model(name)
        if cls is not Detector and not issubclass(kind, cls):
            raise StethoError(f"holds a '{name}' model, not '{cls.name}'")
        params = blob["params"]
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise StethoError("its parameters are not a table of names and values")
        unknown = sorted(set(params) - set(kind.param_defaults()))
        if unknown:
            raise StethoError(f"parameter(s) {', '.join(unknown)} unknown to this stetho's '{name}' (written by "
                              "another version, or edited); re-train")
        params = dict(params)
        if "device" in params:
            params["device"] = _load_device(params["device"], device, path)
        det = kind(**params)
        det.check_params()  # a crafted value (lr="x", epochs=-3) is named like a recipe's
        bad = _non_finite({"state": blob["state"], "base": blob["base"]})
        if bad:
            raise StethoError(f"weights contain NaN/inf ({', '.join(bad[:3])}): the file is damaged or the "
                              "training diverged; re-train")
        base = blob["base"]
        det.machines_ = list(base["machines"])  # before _set_state: a method may use it
        det._set_state(blob["state"])
        det.thresholds_ = {m: {k: float(v) for k, v in per.items()} for m, per in base["thresholds"].items()}
        det.decision_scores_ = {m: s.numpy() for m, s in base["decision_scores"].items()}
        det.calibration_ = {k: list(v) for k, v in base["calibration"].items()}
        missing = [m for m in det.score_modes if m not in det.thresholds_]
        if missing:  # a score mode added to the method after this file was written
            raise StethoError(f"no thresholds for score mode(s) {', '.join(missing)} (added to "
                              f"'{det.name}' after this model was trained); re-train")
        return det

    def set_device(self, device: str) -> "Detector":
        """Score on ``device`` from now on (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``): sets
        :attr:`device` and moves every network of the fitted detector there. An unusable device
        is a :class:`~stetho.errors.ConfigError` (see :func:`~stetho.models.training.resolve_device`)."""
        target = resolve_device(device)
        self.device = device

        def move(x: Any) -> None:  # modules move in place; containers are walked
            if isinstance(x, torch.nn.Module):
                x.to(target)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    move(v)
            elif isinstance(x, dict):
                for v in x.values():
                    move(v)

        for attr, value in vars(self).items():
            if attr.endswith("_") and not attr.startswith("_"):
                move(value)
        return self

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


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch's unpickler messages run over many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Names (``state.net.encoder.0.weight``) of the floating tensors and arrays in ``tree``
    (nested dicts and lists) that hold NaN or inf, and of the thresholds that are NaN or inf."""
    out: list[str] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _non_finite(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        if tree and all(isinstance(v, (int, float)) for v in tree):
            return out  # histories: NaN marks epochs without validation
        for i, v in enumerate(tree):
            out += _non_finite(v, f"{prefix}[{i}]")
    elif isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            out.append(prefix)
    elif isinstance(tree, np.ndarray):
        if np.issubdtype(tree.dtype, np.floating) and not np.isfinite(tree).all():
            out.append(prefix)
    elif isinstance(tree, float) and prefix.startswith(("thresholds", "base.thresholds")) and not np.isfinite(tree):
        out.append(prefix)  # other plain numbers may be inf by design (BiGAN's diversity of constant data)
    return out


def _load_device(stored: Any, asked: str | None, path: Path) -> Any:
    """The device a loaded detector scores on: ``asked`` when given, else the one it was trained
    with when it is usable here, else the CPU (with a log line)."""
    if asked is not None:
        return asked
    if not isinstance(stored, str):
        return stored  # check_params names it
    try:
        resolve_device(stored)
    except ConfigError:
        log.info("%s: trained on device %s, which is not available here: scoring on the CPU", path, stored)
        return "cpu"
    return stored
