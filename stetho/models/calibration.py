"""Which training clips calibrate the thresholds: a stratified hold-out, or K-fold cross-fitting
whose every clip is scored by a model that did not train on it.

:class:`Calibration` is a base of :class:`~stetho.models.base.Detector`; the base's ``fit`` calls
it, then fits the thresholds on the out-of-sample scores (``Detector._set_calibration``). A
method overrides a step when it must (CANDE-CP: never hold out a context's last clip).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from stetho.datasets.clip import SOURCE, Clip
from stetho.errors import ConfigError
from stetho.features import take

if TYPE_CHECKING:
    from stetho.models.base import Detector, FitContext

log = logging.getLogger(__name__)


class Calibration:
    """The calibration splits of a detector (``calibration_split``, ``calibration_folds``, ``seed``)
    and the scores of the clips they hold out."""

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
            clone._fit([clips[i] for i in rest], take(feats, rest), context.sub(f"fold_{f + 1}"))
            scores = clone._calibration_scores([clips[i] for i in held], take(feats, held))
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
