"""CANDE-CP: contextual novelty detection with context prediction (seed 000, METHODS.md §4).

A context is a known operating condition of a machine (for MIMII, the machine ID across SNRs).
An autoencoder learns the normal sound of every context; at test time the context of a file is
not taken from its name but predicted from the sound by a frame classifier and smoothed over the
stream of past files, and the file is scored by the autoencoder conditioned on that context.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, StethoError
from stetho.models.base import FitContext
from stetho.models.cande.context import (CONTEXT_COLUMNS, STREAM_ORDERS, context_indices, context_of,
                                        resolve_context_column)
from stetho.models.cande.predictor import (ContextFrames, context_accuracy_rows, context_embedding_table,
                                          predict_stream_contexts, train_predictor)
from stetho.models.cande.torch_model import ContextPredictor, FiLMAE, PlainAE
from stetho.models.inputs import as_clips
from stetho.models.logmel import LogMelDetector
from stetho.models.params import Boolean, Interval, Options, SequenceOf
from stetho.models.persistence import cpu_weights, plain_history
from stetho.models.training import BestState, ClipMeans, FrameVectors, Trainer, optimizer_step

log = logging.getLogger(__name__)

#: ``variant`` values: FiLM AE with one-hot or embedding codes, one plain AE per context, one
#: plain AE for all contexts.
VARIANTS = ("film-onehot", "film-embedding", "separate", "unconditioned")
#: Score modes = where the context of a test file comes from.
CONTEXT_MODES = ("predicted_window", "predicted", "oracle")


class CANDEDetector(LogMelDetector):
    """CANDE-CP (METHODS.md §4): context-conditioned autoencoders with a context predictor.

    One model for all machine types (``joint``). Training, on 64-mel × 5-frame vectors (320-d):

    1. the context predictor (an MLP frame classifier over the training contexts), best epoch by
       validation frame accuracy; the context embedding table = each context's mean 64-unit
       pre-activation over its training frames, min-max normalised per dimension;
    2. the autoencoder(s) of ``variant``: ``"film-onehot"`` / ``"film-embedding"`` (one FiLM AE
       conditioned on the one-hot code or the frozen embedding of the true context),
       ``"separate"`` (one plain AE per context) or ``"unconditioned"`` (one plain AE); best
       epoch by validation MSE with the true context.

    Score modes (the file score is always the mean per-frame MSE of the AE for the chosen context):
    ``"predicted_window"`` (default; the context with the largest weighted count among the last
    ``window`` per-file predictions, weights ``(1 − λ)^(n − t)``), ``"predicted"`` (the file's
    own prediction: the mode of its frames' argmax) and ``"oracle"`` (the true context). The
    ``"unconditioned"`` variant scores the same in every mode and trains no predictor.

    Test files are streamed in sorted path order (``stream_order``) — the order and every
    file's predictions are in :meth:`report_tables` (``RUN/results/context_stream.csv``).

    Validation (choosing the best epochs; never trained on): the clips of
    ``FitContext.validation`` (the pipeline passes those marked ``role=validation``,
    ``--mimii-split cande``). Clips marked for validation (``Clip.is_validation``) that are given
    to :meth:`fit` with the training clips are moved there first, so they are neither trained on
    nor used for calibration. Without validation clips, ``validation_split`` of each context's
    training files is held out (at least one when it has two).

    Thresholds are the base class's (:class:`~stetho.models.base.Detector`), one per score mode
    and machine type: calibrated on held-out training clips by default (a clip is never held out
    when it is the last training clip of its context: no AE could score it), or
    ``threshold="official"`` for the original's rule: Gamma(``decision_quantile``) per machine type
    over the in-sample oracle scores of the training files, the same for every mode (the files
    ``validation_split`` holds out for validation are among them: the base scores every clip
    ``fit`` trains on, where the original scored the trained ones only).

    Args:
        variant: one of :data:`VARIANTS`.
        context: what a clip's context is, one of :data:`~stetho.models.cande.context.CONTEXT_COLUMNS`
            (``"auto"``: machine × ID when every clip has an ID, e.g. MIMII; else machine × section).
        n_mels: mel bands (64).
        n_frames: stacked frames per vector (5).
        frame_hop: frame hop between vectors (1).
        n_fft: FFT size in samples.
        hop_length: STFT hop in samples.
        sr: sample rate in Hz.
        log_floor: ``"add"`` for ``10 log10(mel + eps)`` (the seed's) or ``"max"``.
        hidden: AE hidden width (64).
        bottleneck: AE latent size (8).
        epochs: AE epochs (100).
        batch_size: AE vectors per batch (256).
        lr: AE Adam learning rate (1e-4).
        predictor_hidden: predictor hidden widths; the last is the embedding size
            ((512, 512, 256, 128, 128, 64)).
        predictor_epochs: predictor epochs (50).
        predictor_batch_size: predictor vectors per batch (512).
        predictor_lr: predictor Adam learning rate (1e-4).
        window: W, past file predictions in the window (50).
        window_lambda: λ, forgetting rate of the window weights (0.1).
        reset_window_per_directory: restart the window when the stream enters another directory.
        stream_order: ``"path"`` (sorted, the default) or ``"shuffle"`` (seeded permutation).
        validation_split: share of each context's training files held out for validation when no
            validation clips are given (0.1; 0 = no validation, the last epoch is kept).
        score_mode: default score mode, one of :data:`CONTEXT_MODES`.
        seed: seeds initialisation, hold-out, shuffling and the shuffled stream order.
        **common: the parameters every detector takes (seed, device, channel, progress, threshold,
            calibration, decision_fpr ...; :data:`stetho.models.base.COMMON_PARAMS`).
    """

    name = "cande"
    score_modes = CONTEXT_MODES
    joint = True
    uses_validation = True
    _parameter_constraints = {
        "variant": [Options(*VARIANTS)], "context": [Options(*CONTEXT_COLUMNS)],
        "n_mels": [Interval(int, 1, None)], "n_frames": [Interval(int, 1, None)],
        "frame_hop": [Interval(int, 1, None)], "n_fft": [Interval(int, 16, None)],
        "hop_length": [Interval(int, 1, None)], "sr": [Interval(int, 1000, None)],
        "log_floor": [Options("add", "max")],
        "hidden": [Interval(int, 1, None)], "bottleneck": [Interval(int, 1, None)],
        "epochs": [Interval(int, 1, None)], "batch_size": [Interval(int, 1, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "predictor_hidden": [SequenceOf(Interval(int, 1, None), min_len=1)],
        "predictor_epochs": [Interval(int, 1, None)], "predictor_batch_size": [Interval(int, 1, None)],
        "predictor_lr": [Interval(float, 0, None, closed="neither")],
        "window": [Interval(int, 1, None)], "window_lambda": [Interval(float, 0, 1, closed="left")],
        "reset_window_per_directory": [Boolean()], "stream_order": [Options(*STREAM_ORDERS)],
        "validation_split": [Interval(float, 0, 1, closed="left")],
        "score_mode": [Options(*CONTEXT_MODES)],
    }

    def __init__(
        self, variant: str = "film-embedding", context: str = "auto", n_mels: int = 64, n_frames: int = 5,
        frame_hop: int = 1, n_fft: int = 1024, hop_length: int = 512, sr: int = 16000, log_floor: str = "add",
        hidden: int = 64, bottleneck: int = 8, epochs: int = 100, batch_size: int = 256, lr: float = 1e-4,
        predictor_hidden: Sequence[int] = (512, 512, 256, 128, 128, 64), predictor_epochs: int = 50,
        predictor_batch_size: int = 512, predictor_lr: float = 1e-4, window: int = 50, window_lambda: float = 0.1,
        reset_window_per_directory: bool = False, stream_order: str = "path", validation_split: float = 0.1,
        score_mode: str = "predicted_window", **common: Any,
    ) -> None:
        super().__init__(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, sr=sr, **common)
        self.variant = variant
        self.context = context
        self.n_frames = n_frames
        self.frame_hop = frame_hop
        self.log_floor = log_floor
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.predictor_hidden = _widths(predictor_hidden)
        self.predictor_epochs = predictor_epochs
        self.predictor_batch_size = predictor_batch_size
        self.predictor_lr = predictor_lr
        self.window = window
        self.window_lambda = window_lambda
        self.reset_window_per_directory = reset_window_per_directory
        self.stream_order = stream_order
        self.validation_split = validation_split
        self.score_mode = score_mode

    @property
    def needs_predictor(self) -> bool:
        return self.variant != "unconditioned"

    # -- training ---------------------------------------------------------------------------
    def fit(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None,
        context: FitContext | None = None, *, sample_rate: int | None = None, machine_type: str | None = None,
    ) -> "CANDEDetector":
        """Train on normal clips of every machine type at once (see :meth:`Detector.fit`, also for
        paths and arrays).

        Clips marked for validation (``Clip.is_validation``) among ``clips`` join
        ``context.validation`` before anything else: they choose the best epochs and are neither
        trained on nor held out for calibration.
        """
        self.check_params()
        clips, features = as_clips(self, clips, features, sample_rate=sample_rate, machine_type=machine_type,
                                   fitting=True)
        context = context or FitContext()
        if any(c.is_validation for c in clips):
            clips, features, context = _split_validation(clips, self._features(clips, features), context)
            if not clips:
                raise StethoError(f"{self.name}: every training clip is marked for validation; nothing to train on")
        super().fit(clips, features, context)
        self.context_stream_ = []  # the calibration clips' stream is not a report of the user's scoring
        return self

    def _fit(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> None:
        """Train the predictor and the AE(s) on ``clips``; validation clips from ``context``."""
        if any(c.is_validation for c in clips):  # called directly, without fit()
            clips, feats, context = _split_validation(clips, feats, context)
        if not clips:
            raise StethoError(f"{self.name}: every training clip is marked for validation; nothing to train on")
        vclips, vfeats = ([], []) if context.validation is None else (list(context.validation[0]),
                                                                       list(context.validation[1]))
        if len(vclips) != len(vfeats):
            raise ValueError(f"{len(vfeats)} feature arrays for {len(vclips)} validation clips")
        machines = getattr(self, "machines_", None) or sorted({c.machine for c in clips})
        self.context_column_ = resolve_context_column(clips + vclips, self.context)
        names = [context_of(c, self.context_column_) for c in clips]
        vnames = [context_of(c, self.context_column_) for c in vclips]
        self.contexts_ = sorted(set(names))
        orphans = [i for i, n in enumerate(vnames) if n not in self.contexts_]
        if orphans:
            log.warning("%d validation clip(s) of contexts without training clips left out (e.g. %s)",
                        len(orphans), vclips[orphans[0]].path)
            keep = [i for i in range(len(vclips)) if i not in set(orphans)]
            vclips, vfeats, vnames = [vclips[i] for i in keep], [vfeats[i] for i in keep], [vnames[i] for i in keep]
        with Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress) as tr:
            if not vclips:
                train, held = self._hold_out(list(range(len(clips))), names, tr.generator)
                vclips, vfeats, vnames = [clips[i] for i in held], [feats[i] for i in held], [names[i] for i in held]
                clips, feats, names = [clips[i] for i in train], [feats[i] for i in train], [names[i] for i in train]
            index = {n: k for k, n in enumerate(self.contexts_)}
            if len(self.contexts_) == 1:
                log.warning("one context only (%s): conditioning has nothing to tell apart", self.contexts_[0])
            log.info("%s: %d contexts (%s), %d training and %d validation files", self.name, len(self.contexts_),
                     self.context_column_, len(clips), len(vclips))
            trp = ContextFrames(FrameVectors(feats, self.n_frames, self.frame_hop),
                                np.array([index[n] for n in names]))
            vap = (ContextFrames(FrameVectors(vfeats, self.n_frames, self.frame_hop),
                                 np.array([index[n] for n in vnames])) if vclips else None)
            # Resuming needs the same hyper-parameters and the same training and validation files.
            fp = (self._fingerprint_params(), [str(c.path) for c in clips], [str(c.path) for c in vclips])
            prefix = None if context.work_dir is None else Path(context.work_dir) / f"{self.name}_{'+'.join(machines)}"
            self.predictor_ = None
            self.predictor_history_: dict[str, list] = {}
            self.predictor_best_epoch_: int | None = None
            self.table_ = np.eye(len(self.contexts_))
            if self.needs_predictor:
                self._fit_predictor(tr, trp, vap, _checkpoint(prefix, "predictor"), fp)
                if self.variant == "film-embedding":
                    self.table_ = self._embedding_table(trp, tr.device)
            self._fit_autoencoders(tr, trp, vap, prefix, (fp, self.table_))

    def _hold_out(self, train: list[int], names: list[str], gen: torch.Generator) -> tuple[list[int], list[int]]:
        """(train, validation) files: ``validation_split`` of each context's files (at least one
        of a context with two or more), chosen by the seeded generator."""
        if self.validation_split <= 0:
            log.info("no validation: the last epoch of every network is kept")
            return train, []
        keep, held = [], []
        for name in sorted({names[i] for i in train}):
            mine = [i for i in train if names[i] == name]
            n_val = max(1, int(round(self.validation_split * len(mine)))) if len(mine) >= 2 else 0
            perm = torch.randperm(len(mine), generator=gen).tolist()
            held += sorted(mine[j] for j in perm[:n_val])
            keep += sorted(mine[j] for j in perm[n_val:])
        log.info("no validation clips given: %d of %d training files held out (validation_split=%g)",
                 len(held), len(train), self.validation_split)
        return sorted(keep), sorted(held)

    def _fit_predictor(self, tr: Trainer, trp: ContextFrames, vap: ContextFrames | None, checkpoint: Path | None,
                       fp: Any) -> None:
        self.predictor_, self.predictor_history_, self.predictor_best_epoch_ = train_predictor(
            tr, trp, vap, len(self.contexts_), self.predictor_hidden, self.predictor_lr, self.predictor_batch_size,
            self.predictor_epochs, checkpoint, fp)

    def _embedding_table(self, trp: ContextFrames, device: torch.device) -> np.ndarray:
        """The frozen context embeddings from the predictor's 64-unit layer (training frames)."""
        return context_embedding_table(self.predictor_, trp, len(self.contexts_), device)

    def _new_aes(self) -> list[torch.nn.Module]:
        dim = self.n_mels * self.n_frames
        if self.variant == "separate":
            return [PlainAE(dim, self.hidden, self.bottleneck) for _ in self.contexts_]
        if self.variant == "unconditioned":
            return [PlainAE(dim, self.hidden, self.bottleneck)]
        return [FiLMAE(dim, self.table_.shape[1], self.hidden, self.bottleneck)]

    def _fit_autoencoders(self, tr: Trainer, trp: ContextFrames, vap: ContextFrames | None, prefix: Path | None,
                          fp: Any) -> None:
        self.aes_ = [net.to(tr.device) for net in self._new_aes()]
        self.codes_ = torch.as_tensor(self.table_, dtype=torch.float32)
        if self.variant == "separate":
            runs = [(k, trp.vectors_of(k), vap.vectors_of(k) if vap is not None else None)
                    for k in range(len(self.contexts_))]
        else:
            runs = [(0, trp.all, torch.arange(len(vap.vectors)) if vap is not None else None)]
        self.ae_histories_: dict[str, dict[str, list]] = {}
        self.ae_best_epochs_: dict[str, int | None] = {}
        for k, train_idx, val_idx in runs:
            name = self.contexts_[k] if self.variant == "separate" else self.variant
            part = f"ae_{k:03d}" if self.variant == "separate" else "ae"  # one checkpoint per AE
            hist, best_epoch = self._fit_one_ae(tr, self.aes_[k], trp, vap, train_idx, val_idx, name,
                                                _checkpoint(prefix, part), (part, fp))
            self.ae_histories_[name], self.ae_best_epochs_[name] = hist, best_epoch
        for net in self.aes_:
            net.eval()

    def _fit_one_ae(self, tr, net, trp, vap, train_idx, val_idx, name, checkpoint, fp):
        device = tr.device
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        codes = self.codes_.to(device)
        best = BestState(net, higher_is_better=False)
        validated = vap is not None and val_idx is not None and len(val_idx) > 0

        def step(batch) -> float:
            x, owner = batch
            x = x.to(device, non_blocking=True)
            rec = self._reconstruct(net, x, codes[trp.context_of(owner).to(device)])
            return optimizer_step(opt, torch.nn.functional.mse_loss(rec, x))

        def validate() -> float:
            net.eval()
            total = 0.0
            with torch.no_grad():
                for x, owner in vap.vectors.batches(val_idx, 8192):
                    x = x.to(device)
                    rec = self._reconstruct(net, x, codes[vap.context_of(owner).to(device)])
                    total += float(torch.nn.functional.mse_loss(rec, x, reduction="sum"))
            net.train()
            return total / (len(val_idx) * vap.vectors.dim)

        net.train()
        if len(train_idx) == 0:
            raise StethoError(f"{self.name}: no training vectors for {name}")
        history = tr.run(
            step, lambda e: trp.vectors.batches(train_idx, self.batch_size, shuffle=True, generator=tr.generator),
            self.epochs, evaluate=validate if validated else None,
            on_epoch=lambda epoch, hist: best.update(epoch, hist["val_loss"][-1]),
            desc=f"AE epochs ({name})", checkpoint=checkpoint,
            state={"net": net, "opt": opt, "best": best}, fingerprint=fp,
        )
        best_epoch = best.restore()
        history["best"] = [int(e == best_epoch) for e in history["epoch"]]
        if best_epoch is None:
            log.info("AE %s: no validation files, the last epoch is kept", name)
        else:
            log.info("AE %s: best epoch %d (validation MSE %.4g)", name, best_epoch, best.value)
        return history, best_epoch

    def _reconstruct(self, net: torch.nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(x, c) if isinstance(net, FiLMAE) else net(x)

    # -- calibration ------------------------------------------------------------------------
    def _context_names(self, clips: Sequence[Clip]) -> list[str]:
        column = resolve_context_column(clips, self.context)
        return [context_of(c, column) for c in clips]

    def _holdout(self, clips: Sequence[Clip]) -> list[int]:
        """The base's calibration clips, except that the last training clip of a context stays
        in training (no AE could score a context it never saw)."""
        names = self._context_names(clips)  # a clip without the context's column: named first
        held = set(super()._holdout(clips))
        for name in sorted(set(names)):
            mine = [i for i, n in enumerate(names) if n == name]
            if all(i in held for i in mine):
                held.discard(mine[0])
        for machine in self.machines_:
            if not any(clips[i].machine == machine for i in held):
                mine = sorted({n for c, n in zip(clips, names) if c.machine == machine})
                raise ConfigError(
                    f"{self.name}: machine type {machine} has no training clip to spare for calibration (each of "
                    f"its {len(mine)} context(s) needs its clips to train); add clips or use "
                    "params.threshold=official (thresholds from in-sample scores)")
        return sorted(held)

    def _folds(self, clips: Sequence[Clip]) -> list[list[int]]:
        """The base's folds, refused when one would hold out every clip of a context."""
        folds = super()._folds(clips)
        names = self._context_names(clips)
        for held in folds:
            held_set = set(held)
            left = {n for i, n in enumerate(names) if i not in held_set}
            lost = sorted({names[i] for i in held} - left)
            if lost:
                raise ConfigError(f"{self.name}: too few training clips of context(s) {', '.join(lost)} for "
                                  f"{self.calibration_folds}-fold calibration; lower params.calibration_folds "
                                  "or use holdout")
        return folds

    def _in_sample_scores(self, clips: list[Clip], feats: list[np.ndarray]) -> dict[str, np.ndarray]:
        """``threshold="official"``: the original's thresholds come from the training files'
        oracle scores, used by every mode."""
        ctx = context_indices(clips, self.context_column_, self.contexts_, "training")
        mse = self._clip_mse(FrameVectors(feats, self.n_frames, self.frame_hop), {"oracle": ctx})["oracle"]
        return {mode: mse for mode in self.score_modes}

    def _calibration_scores(self, clips: list[Clip], feats: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Held-out clips are streamed one context at a time. Sorted by path into one stream, each
        context's window would carry over into the next context's first clips: a few clips of a
        long test stream, but a large share of a small calibration set, whose scores (and so the
        ``predicted_window`` thresholds) it would inflate."""
        if self.variant == "unconditioned":
            return self._score_all(clips, feats)
        true = context_indices(clips, self.context_column_, self.contexts_, "calibration")
        out = {m: np.empty(len(clips)) for m in self.score_modes}
        for k in np.unique(true):
            idx = np.flatnonzero(true == k)
            part = self._score_all([clips[i] for i in idx], [feats[i] for i in idx])
            for m in out:
                out[m][idx] = part[m]
        self.context_stream_ = []
        return out

    # -- scoring ----------------------------------------------------------------------------
    def _clip_mse(self, vectors: FrameVectors, choice: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-clip mean squared error ``(n,)`` for each mode's context choice ``(n,)``; every
        (clip, context) pair is computed once however many modes chose it."""
        n = vectors.n_clips
        if self.variant == "unconditioned":  # no context: one pass serves every mode
            choice = {m: np.zeros(n, dtype=np.int64) for m in choice}
        device = next(self.aes_[0].parameters()).device
        codes = self.codes_.to(device)
        means: dict[int, np.ndarray] = {}
        for k in sorted({int(k) for c in choice.values() for k in c}):
            owners = torch.from_numpy(np.flatnonzero(np.any([c == k for c in choice.values()], axis=0)))
            idx = torch.nonzero(torch.isin(vectors.clip_index, owners)).flatten()
            net = self.aes_[k if self.variant == "separate" else 0]
            acc = ClipMeans(n)  # the clips of ``owners`` get all their vectors: their means are complete
            with torch.no_grad():
                for x, owner in vectors.batches(idx, 8192):
                    x = x.to(device)
                    code = codes[k].expand(len(x), -1)
                    acc.add((x - self._reconstruct(net, x, code)).square().mean(dim=1).cpu(), owner)
            means[k] = acc.means()
        return {m: np.array([float(means[int(k)][i]) for i, k in enumerate(c)]) for m, c in choice.items()}

    def predict_contexts(
        self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Predicted contexts (indices into ``contexts_``) of ``clips``: ``"predicted"`` (mode of
        the frame predictions), ``"predicted_window"`` (windowed over the stream) and ``"order"``
        (the stream position of each clip)."""
        self._check_fitted()
        if self.predictor_ is None:
            raise StethoError(f"{self.name}: the {self.variant} variant has no context predictor")
        feats = self._features(clips, features)
        return self._predict_contexts(clips, FrameVectors(feats, self.n_frames, self.frame_hop))[0]

    def _predict_contexts(self, clips: Sequence[Clip], vectors: FrameVectors):
        return predict_stream_contexts(self.predictor_, clips, vectors, len(self.contexts_), self.stream_order,
                                       self.seed, int(self.window), float(self.window_lambda),
                                       self.reset_window_per_directory)

    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        unknown = sorted({c.machine for c in clips} - set(self.machines_))
        if unknown:
            raise StethoError(f"{self.name}: no training clips of machine type(s) {', '.join(unknown)}; "
                              f"trained on {', '.join(self.machines_)}")
        self.context_stream_: list[dict[str, Any]] = []
        if not clips:
            return {m: np.zeros(0) for m in self.score_modes}
        vectors = FrameVectors(self._features(clips, features), self.n_frames, self.frame_hop)
        if self.variant == "unconditioned":
            zeros = np.zeros(len(clips), dtype=np.int64)
            return self._clip_mse(vectors, {m: zeros for m in self.score_modes})
        true = context_indices(clips, self.context_column_, self.contexts_, "test")
        choice, votes = self._predict_contexts(clips, vectors)
        self.context_stream_ = self._stream_rows(clips, true, choice, votes)
        return self._clip_mse(vectors, {"oracle": true, "predicted": choice["predicted"],
                                        "predicted_window": choice["predicted_window"]})

    def _stream_rows(self, clips, true, choice, votes) -> list[dict[str, Any]]:
        rows = []
        for i in np.argsort(choice["order"]):
            c = clips[i]
            rows.append({
                "order": int(choice["order"][i]), "file": str(c.path), "name": c.name, "machine": c.machine,
                "section": c.section, "label": "" if c.label is None else c.label,
                "context": self.contexts_[true[i]], "predicted": self.contexts_[choice["predicted"][i]],
                "frame share": float(votes[i].max() / votes[i].sum()),
                "predicted_window": self.contexts_[choice["predicted_window"][i]],
            })
        return rows

    def report_tables(self) -> dict[str, list[dict[str, Any]]]:
        """``context_stream``: every test file of the last scoring in streaming order with its
        true, predicted and windowed context; ``context_accuracy``: the share of files whose
        predicted (windowed) context is right, overall, per machine type and per context.
        Nothing for the ``unconditioned`` variant (it predicts no context)."""
        rows = getattr(self, "context_stream_", [])
        if not rows:
            return {}
        return {"context_stream": rows, "context_accuracy": context_accuracy_rows(rows)}

    # -- what a run records -----------------------------------------------------------------
    def histories(self) -> dict[str, dict[str, list]]:
        """``""``: the AE (for ``separate``, the mean over the per-context AEs per epoch);
        ``"predictor"``: the context predictor (with ``val_accuracy``); ``"contexts"`` (separate
        only): every per-context AE's history, one row per context and epoch."""
        out = {"": self.history_}
        if self.predictor_history_:
            out["predictor"] = self.predictor_history_
        if self.variant == "separate":
            stacked: dict[str, list] = {"context": []}
            for name, hist in self.ae_histories_.items():
                stacked["context"] += [name] * len(hist["epoch"])
                for key, values in hist.items():
                    stacked.setdefault(key, []).extend(values)
            out["contexts"] = stacked
        return out

    @property
    def history_(self) -> dict[str, list]:
        hists = list(self.ae_histories_.values())
        if len(hists) == 1:
            return hists[0]
        out: dict[str, list] = {"epoch": list(hists[0]["epoch"])}
        for key in ("train_loss", "val_loss"):
            values = np.array([h[key] for h in hists], dtype=np.float64)
            seen = np.isfinite(values)  # contexts without validation files have NaN losses
            out[key] = np.where(seen.any(axis=0), np.where(seen, values, 0).sum(axis=0)
                                / np.maximum(seen.sum(axis=0), 1), np.nan).tolist()
        return out

    # -- persistence ------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "context_column": self.context_column_,
            "contexts": list(self.contexts_),
            "table": torch.as_tensor(self.table_),
            "predictor": (None if self.predictor_ is None
                          else cpu_weights(self.predictor_)),
            "aes": [cpu_weights(net) for net in self.aes_],
            "predictor_history": plain_history(self.predictor_history_),
            "predictor_best_epoch": self.predictor_best_epoch_,
            "ae_histories": {n: plain_history(h) for n, h in self.ae_histories_.items()},
            "ae_best_epochs": dict(self.ae_best_epochs_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        self.context_column_ = state["context_column"]
        self.contexts_ = list(state["contexts"])
        self.table_ = state["table"].double().numpy()
        self.codes_ = torch.as_tensor(self.table_, dtype=torch.float32)
        self.predictor_ = None
        if state["predictor"] is not None:
            net = ContextPredictor(self.n_mels * self.n_frames, len(self.contexts_), self.predictor_hidden)
            self.predictor_ = self._restore_net(net, state["predictor"])
        self.aes_ = self._new_aes()
        for net, sd in zip(self.aes_, state["aes"]):
            self._restore_net(net, sd)
        self.predictor_history_ = plain_history(state["predictor_history"])
        self.predictor_best_epoch_ = state["predictor_best_epoch"]
        self.ae_histories_ = {n: plain_history(h) for n, h in state["ae_histories"].items()}
        self.ae_best_epochs_ = dict(state["ae_best_epochs"])


def _widths(value: Any) -> Any:
    """``value`` as a list of ints when it is a sequence of integers (NumPy's too: the list is
    saved in the model file); anything else unchanged, for :meth:`Detector.check_params` to name."""
    if isinstance(value, Sequence) and not isinstance(value, str) and all(
            isinstance(h, numbers.Integral) and not isinstance(h, bool) for h in value):
        return [int(h) for h in value]
    return value


def _split_validation(
    clips: list[Clip], feats: list[np.ndarray], context: FitContext,
) -> tuple[list[Clip], list[np.ndarray], FitContext]:
    """``clips`` without those marked for validation, which join ``context.validation``."""
    if len(feats) != len(clips):
        raise ValueError(f"{len(feats)} feature arrays for {len(clips)} clips")
    val = [i for i, c in enumerate(clips) if c.is_validation]
    if not val:
        return clips, feats, context
    given = context.validation or ([], [])
    validation = ([*given[0], *(clips[i] for i in val)], [*given[1], *(feats[i] for i in val)])
    train = [i for i, c in enumerate(clips) if not c.is_validation]
    return [clips[i] for i in train], [feats[i] for i in train], replace(context, validation=validation)


def _checkpoint(prefix: Path | None, part: str) -> Path | None:
    """The checkpoint file of one training (``<work_dir>/cande_<machines>_<part>.ckpt``)."""
    return None if prefix is None else prefix.with_name(f"{prefix.name}_{part}.ckpt")
