"""CANDE-CP: contextual novelty detection with context prediction (seed 000, METHODS.md §4).

A context is a known operating condition of a machine (for MIMII, the machine ID across SNRs).
An autoencoder learns the normal sound of every context; at test time the context of a file is
not taken from its name but predicted from the sound by a frame classifier and smoothed over the
stream of past files, and the file is scored by the autoencoder conditioned on that context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stetho.backends import gamma_threshold
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, StethoError
from stetho.features import AudioOptions, LogMelParams, extract_logmels
from stetho.models.base import Detector
from stetho.models.cande.context import (
    CONTEXT_COLUMNS, STREAM_ORDERS, context_indices, context_of, embedding_table, file_modes, file_votes,
    resolve_context_column, stream_order, windowed_predictions,
)
from stetho.models.cande.torch_model import ContextPredictor, FiLMAE, PlainAE
from stetho.models.training import BestState, FrameVectors, resolve_device, run_epochs, seed_everything

log = logging.getLogger(__name__)

#: ``variant`` values: FiLM AE with one-hot or embedding codes, one plain AE per context, one
#: plain AE for all contexts.
VARIANTS = ("film-onehot", "film-embedding", "separate", "unconditioned")
#: Score modes = where the context of a test file comes from.
CONTEXT_MODES = ("predicted_window", "predicted", "oracle")


class CANDEDetector(Detector):
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
    Validation: the clips marked ``role=validation`` (``--mimii-split cande``), else
    ``validation_split`` of each context's training files (at least one when it has two).
    Thresholds: Gamma(``decision_quantile``) per machine type over the training files' oracle
    scores, used by every mode.

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
            clip is marked for validation (0.1; 0 = no validation, the last epoch is kept).
        score_mode: default score mode, one of :data:`CONTEXT_MODES`.
        decision_quantile: Gamma quantile of the thresholds (0.9).
        seed: seed of initialisation, hold-out, shuffling and the shuffled stream order.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        channel: channel read from multi-channel files (MIMII: 0).
        progress: progress bars.
    """

    name = "cande"
    score_modes = CONTEXT_MODES
    joint = True
    uses_validation = True

    def __init__(
        self, variant: str = "film-embedding", context: str = "auto", n_mels: int = 64, n_frames: int = 5,
        frame_hop: int = 1, n_fft: int = 1024, hop_length: int = 512, sr: int = 16000, log_floor: str = "add",
        hidden: int = 64, bottleneck: int = 8, epochs: int = 100, batch_size: int = 256, lr: float = 1e-4,
        predictor_hidden: Sequence[int] = (512, 512, 256, 128, 128, 64), predictor_epochs: int = 50,
        predictor_batch_size: int = 512, predictor_lr: float = 1e-4, window: int = 50, window_lambda: float = 0.1,
        reset_window_per_directory: bool = False, stream_order: str = "path", validation_split: float = 0.1,
        score_mode: str = "predicted_window", decision_quantile: float = 0.9, seed: int = 13711,
        device: str = "auto", channel: int = 0, progress: bool = False,
    ) -> None:
        self.variant = variant
        self.context = context
        self.n_mels = n_mels
        self.n_frames = n_frames
        self.frame_hop = frame_hop
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.sr = sr
        self.log_floor = log_floor
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.predictor_hidden = [int(h) for h in predictor_hidden]
        self.predictor_epochs = predictor_epochs
        self.predictor_batch_size = predictor_batch_size
        self.predictor_lr = predictor_lr
        self.window = window
        self.window_lambda = window_lambda
        self.reset_window_per_directory = reset_window_per_directory
        self.stream_order = stream_order
        self.validation_split = validation_split
        self.score_mode = score_mode
        self.decision_quantile = decision_quantile
        self.seed = seed
        self.device = device
        self.channel = channel
        self.progress = progress

    # -- configuration ----------------------------------------------------------------------
    def check_params(self) -> None:
        self._mode(self.score_mode)
        checks = [
            (self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}"),
            (self.context in CONTEXT_COLUMNS,
             f"unknown context column {self.context!r}; choose from {', '.join(CONTEXT_COLUMNS)}"),
            (self.stream_order in STREAM_ORDERS,
             f"stream_order must be one of {', '.join(STREAM_ORDERS)}, got {self.stream_order!r}"),
            (int(self.window) >= 1, f"window must be at least 1 file, got {self.window}"),
            (0.0 <= float(self.window_lambda) < 1.0, f"window_lambda must be in [0, 1), got {self.window_lambda}"),
            (0.0 <= float(self.validation_split) < 1.0,
             f"validation_split must be in [0, 1), got {self.validation_split}"),
            (bool(self.predictor_hidden) and min(self.predictor_hidden) >= 1,
             f"predictor_hidden must be a non-empty list of widths, got {self.predictor_hidden}"),
            (min(self.epochs, self.predictor_epochs) >= 1, "epochs and predictor_epochs must be at least 1"),
            (self.log_floor in ("add", "max"), f"log_floor must be add or max, got {self.log_floor!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{self.name}: {message}")

    @property
    def needs_predictor(self) -> bool:
        return self.variant != "unconditioned"

    # -- features ---------------------------------------------------------------------------
    @property
    def logmel_params(self) -> LogMelParams:
        return LogMelParams(sr=self.sr, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels,
                            log_floor=self.log_floor)

    def extract(self, clips, resample=True, cache=None, progress=False, raise_on_error=True, desc="log-mel"):
        """64-band log-mels of ``clips`` (see :meth:`Detector.extract`)."""
        audio = AudioOptions(channel=self.channel, min_frames=self.n_frames, resample=resample)
        return extract_logmels(clips, self.logmel_params, audio, cache=cache, progress=progress,
                               raise_on_error=raise_on_error, desc=desc)

    # -- training ---------------------------------------------------------------------------
    def fit(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None) -> "CANDEDetector":
        """Train on normal clips of every machine type at once; clips marked for validation
        (``Clip.is_validation``) choose the best epochs and are not trained on."""
        self.check_params()
        if not clips:
            raise ValueError("fit() needs at least one training clip")
        feats = self._features(clips, features)
        self.context_column_ = resolve_context_column(clips, self.context)
        names = [context_of(c, self.context_column_) for c in clips]
        train = [i for i, c in enumerate(clips) if not c.is_validation]
        if not train:
            raise StethoError(f"{self.name}: every training clip is marked for validation; nothing to train on")
        self.contexts_ = sorted({names[i] for i in train})
        val = [i for i, c in enumerate(clips) if c.is_validation]
        orphans = [i for i in val if names[i] not in self.contexts_]
        if orphans:
            log.warning("%d validation clip(s) of contexts without training clips left out (e.g. %s)",
                        len(orphans), clips[orphans[0]].path)
            val = [i for i in val if i not in set(orphans)]
        gen = seed_everything(self.seed)
        if not val:
            train, val = self._hold_out(train, names, gen)
        index = {n: k for k, n in enumerate(self.contexts_)}
        ctx = np.array([index[n] for n in names], dtype=np.int64)
        if len(self.contexts_) == 1:
            log.warning("one context only (%s): conditioning has nothing to tell apart", self.contexts_[0])
        log.info("%s: %d contexts (%s), %d training and %d validation files", self.name, len(self.contexts_),
                 self.context_column_, len(train), len(val))

        device = resolve_device(self.device)
        tr = _Part(FrameVectors([feats[i] for i in train], self.n_frames, self.frame_hop), ctx[train])
        va = _Part(FrameVectors([feats[i] for i in val], self.n_frames, self.frame_hop), ctx[val]) if val else None
        self.predictor_ = None
        self.predictor_history_: dict[str, list] = {}
        self.predictor_best_epoch_: int | None = None
        self.table_ = np.eye(len(self.contexts_))
        if self.needs_predictor:
            self._fit_predictor(tr, va, device, gen)
            if self.variant == "film-embedding":
                self.table_ = self._embedding_table(tr, device)
        self._fit_autoencoders(tr, va, device, gen)
        self.machines_ = sorted({c.machine for c in clips})
        self._fit_thresholds([clips[i] for i in train], [feats[i] for i in train], ctx[train])
        return self

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
        log.info("no clips marked for validation: %d of %d training files held out (validation_split=%g)",
                 len(held), len(train), self.validation_split)
        return sorted(keep), sorted(held)

    def _fit_predictor(self, tr: "_Part", va: "_Part | None", device: torch.device, gen: torch.Generator) -> None:
        net = ContextPredictor(tr.vectors.dim, len(self.contexts_), self.predictor_hidden).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=self.predictor_lr)
        best = BestState(net, higher_is_better=True)
        history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "val_accuracy": []}
        accuracy: list[float] = []

        def step(batch) -> float:
            x, owner = batch
            x, y = x.to(device, non_blocking=True), tr.context_of(owner).to(device)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            return float(loss.detach())

        def validate() -> float:
            if va is None:
                accuracy.append(float("nan"))
                return float("nan")
            net.eval()
            total, correct = 0.0, 0
            with torch.no_grad():
                for x, owner in va.vectors.batches(torch.arange(len(va.vectors)), 8192):
                    logits, y = net(x.to(device)), va.context_of(owner).to(device)
                    total += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                    correct += int((logits.argmax(1) == y).sum())
            net.train()
            accuracy.append(correct / len(va.vectors))
            return total / len(va.vectors)

        def checkpoint(epoch: int, hist: dict) -> None:
            hist["val_accuracy"].append(accuracy[-1])
            best.update(epoch, accuracy[-1])

        net.train()
        run_epochs(step, validate,
                   lambda e: tr.vectors.batches(tr.all, self.predictor_batch_size, shuffle=True, generator=gen),
                   self.predictor_epochs, progress=self.progress, desc="context predictor epochs",
                   checkpoint=checkpoint, history=history)
        self.predictor_best_epoch_ = best.restore()
        history["best"] = [int(e == self.predictor_best_epoch_) for e in history["epoch"]]
        self.predictor_ = net.eval()
        self.predictor_history_ = history
        log.info("context predictor: best epoch %s, validation frame accuracy %.4f",
                 self.predictor_best_epoch_, best.value)

    def _embedding_table(self, tr: "_Part", device: torch.device) -> np.ndarray:
        """The frozen context embeddings from the predictor's 64-unit layer (training frames)."""
        chunks, owners = [], []
        with torch.no_grad():
            for x, owner in tr.vectors.batches(tr.all, 8192):
                chunks.append(self.predictor_.embed(x.to(device)).double().cpu().numpy())
                owners.append(owner.numpy())
        return embedding_table(np.concatenate(chunks), tr.contexts[np.concatenate(owners)], len(self.contexts_))

    def _new_aes(self) -> list[torch.nn.Module]:
        dim = self.n_mels * self.n_frames
        if self.variant == "separate":
            return [PlainAE(dim, self.hidden, self.bottleneck) for _ in self.contexts_]
        if self.variant == "unconditioned":
            return [PlainAE(dim, self.hidden, self.bottleneck)]
        return [FiLMAE(dim, self.table_.shape[1], self.hidden, self.bottleneck)]

    def _fit_autoencoders(self, tr: "_Part", va: "_Part | None", device: torch.device, gen: torch.Generator) -> None:
        self.aes_ = [net.to(device) for net in self._new_aes()]
        self.codes_ = torch.as_tensor(self.table_, dtype=torch.float32)
        if self.variant == "separate":
            runs = [(k, tr.vectors_of(k), va.vectors_of(k) if va is not None else None)
                    for k in range(len(self.contexts_))]
        else:
            runs = [(0, tr.all, torch.arange(len(va.vectors)) if va is not None else None)]
        self.ae_histories_: dict[str, dict[str, list]] = {}
        self.ae_best_epochs_: dict[str, int | None] = {}
        for k, train_idx, val_idx in runs:
            name = self.contexts_[k] if self.variant == "separate" else self.variant
            hist, best_epoch = self._fit_one_ae(self.aes_[k], tr, va, train_idx, val_idx, device, gen, name)
            self.ae_histories_[name], self.ae_best_epochs_[name] = hist, best_epoch
        for net in self.aes_:
            net.eval()

    def _fit_one_ae(self, net, tr, va, train_idx, val_idx, device, gen, name):
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        codes = self.codes_.to(device)
        best = BestState(net, higher_is_better=False)

        def step(batch) -> float:
            x, owner = batch
            x = x.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(self._reconstruct(net, x, codes[tr.context_of(owner).to(device)]), x)
            loss.backward()
            opt.step()
            return float(loss.detach())

        def validate() -> float:
            if va is None or val_idx is None or len(val_idx) == 0:
                return float("nan")
            net.eval()
            total = 0.0
            with torch.no_grad():
                for x, owner in va.vectors.batches(val_idx, 8192):
                    x = x.to(device)
                    rec = self._reconstruct(net, x, codes[va.context_of(owner).to(device)])
                    total += float(torch.nn.functional.mse_loss(rec, x, reduction="sum"))
            net.train()
            return total / (len(val_idx) * va.vectors.dim)

        net.train()
        if len(train_idx) == 0:
            raise StethoError(f"{self.name}: no training vectors for {name}")
        history = run_epochs(
            step, validate, lambda e: tr.vectors.batches(train_idx, self.batch_size, shuffle=True, generator=gen),
            self.epochs, progress=self.progress, desc=f"AE epochs ({name})",
            checkpoint=lambda epoch, hist: best.update(epoch, hist["val_loss"][-1]),
        )
        best_epoch = best.restore()
        history["best"] = [int(e == best_epoch) for e in history["epoch"]]
        log.info("AE %s: best epoch %s (validation MSE %.4g)", name, best_epoch, best.value)
        return history, best_epoch

    def _reconstruct(self, net: torch.nn.Module, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return net(x, c) if isinstance(net, FiLMAE) else net(x)

    def _fit_thresholds(self, clips: Sequence[Clip], feats: Sequence[np.ndarray], ctx: np.ndarray) -> None:
        mse = self._clip_mse(FrameVectors(feats, self.n_frames, self.frame_hop), {"oracle": ctx})["oracle"]
        self.train_scores_ = {m: mse[[i for i, c in enumerate(clips) if c.machine == m]] for m in self.machines_}
        per_machine = {m: gamma_threshold(s, self.decision_quantile) for m, s in self.train_scores_.items()}
        self.thresholds_ = {mode: dict(per_machine) for mode in self.score_modes}

    # -- scoring ----------------------------------------------------------------------------
    def _clip_mse(self, vectors: FrameVectors, choice: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per-clip mean squared error ``(n,)`` for each mode's context choice ``(n,)``; every
        (clip, context) pair is computed once however many modes chose it."""
        n = vectors.n_clips
        if self.variant == "unconditioned":  # no context: one pass serves every mode
            choice = {m: np.zeros(n, dtype=np.int64) for m in choice}
        device = next(self.aes_[0].parameters()).device
        codes = self.codes_.to(device)
        sums: dict[int, torch.Tensor] = {}
        counts = torch.zeros(n, dtype=torch.float64)
        counts.index_add_(0, vectors.clip_index, torch.ones(len(vectors), dtype=torch.float64))
        for k in sorted({int(k) for c in choice.values() for k in c}):
            owners = torch.from_numpy(np.flatnonzero(np.any([c == k for c in choice.values()], axis=0)))
            idx = torch.nonzero(torch.isin(vectors.clip_index, owners)).flatten()
            net = self.aes_[k if self.variant == "separate" else 0]
            sums[k] = torch.zeros(n, dtype=torch.float64)
            with torch.no_grad():
                for x, owner in vectors.batches(idx, 8192):
                    x = x.to(device)
                    code = codes[k].expand(len(x), -1)
                    err = (x - self._reconstruct(net, x, code)).square().mean(dim=1)
                    sums[k].index_add_(0, owner, err.double().cpu())
        return {m: np.array([float(sums[int(k)][i] / counts[i]) for i, k in enumerate(c)]) for m, c in choice.items()}

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
        device = next(self.predictor_.parameters()).device
        preds, owners = [], []
        with torch.no_grad():
            for x, owner in vectors.batches(torch.arange(len(vectors)), 8192):
                preds.append(self.predictor_(x.to(device)).argmax(1).cpu().numpy())
                owners.append(owner.numpy())
        votes = file_votes(np.concatenate(preds), np.concatenate(owners), len(clips), len(self.contexts_))
        raw = file_modes(votes)
        order = stream_order(clips, self.stream_order, self.seed)
        groups = [str(clips[i].path.parent) for i in order] if self.reset_window_per_directory else None
        windowed = np.empty_like(raw)
        windowed[order] = windowed_predictions(raw[order], len(self.contexts_), int(self.window),
                                               float(self.window_lambda), groups)
        position = np.empty(len(clips), dtype=np.int64)
        position[order] = np.arange(len(clips))
        return {"predicted": raw, "predicted_window": windowed, "order": position}, votes

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
            "predictor": None if self.predictor_ is None else {k: v.cpu() for k, v in self.predictor_.state_dict().items()},
            "aes": [{k: v.cpu() for k, v in net.state_dict().items()} for net in self.aes_],
            "thresholds": {mode: dict(v) for mode, v in self.thresholds_.items()},
            "train_scores": {m: torch.as_tensor(s) for m, s in self.train_scores_.items()},
            "machines": list(self.machines_),
            "predictor_history": {k: list(v) for k, v in self.predictor_history_.items()},
            "predictor_best_epoch": self.predictor_best_epoch_,
            "ae_histories": {n: {k: list(v) for k, v in h.items()} for n, h in self.ae_histories_.items()},
            "ae_best_epochs": dict(self.ae_best_epochs_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        device = resolve_device(self.device)
        self.context_column_ = state["context_column"]
        self.contexts_ = list(state["contexts"])
        self.table_ = state["table"].double().numpy()
        self.codes_ = torch.as_tensor(self.table_, dtype=torch.float32)
        self.predictor_ = None
        if state["predictor"] is not None:
            net = ContextPredictor(self.n_mels * self.n_frames, len(self.contexts_), self.predictor_hidden)
            net.load_state_dict(state["predictor"])
            self.predictor_ = net.to(device).eval()
        self.aes_ = self._new_aes()
        for net, sd in zip(self.aes_, state["aes"]):
            net.load_state_dict(sd)
            net.to(device).eval()
        self.thresholds_ = {mode: dict(v) for mode, v in state["thresholds"].items()}
        self.train_scores_ = {m: s.numpy() for m, s in state["train_scores"].items()}
        self.machines_ = list(state["machines"])
        self.predictor_history_ = {k: list(v) for k, v in state["predictor_history"].items()}
        self.predictor_best_epoch_ = state["predictor_best_epoch"]
        self.ae_histories_ = {n: {k: list(v) for k, v in h.items()} for n, h in state["ae_histories"].items()}
        self.ae_best_epochs_ = dict(state["ae_best_epochs"])


class _Part:
    """Frame vectors of a set of files with each file's context index."""

    def __init__(self, vectors: FrameVectors, contexts: np.ndarray) -> None:
        self.vectors = vectors
        self.contexts = np.asarray(contexts, dtype=np.int64)
        self._ctx = torch.from_numpy(self.contexts)
        self.all = torch.arange(len(vectors))

    def context_of(self, owner: torch.Tensor) -> torch.Tensor:
        """Context index of each vector, from its owning file ``owner``."""
        return self._ctx[owner]

    def vectors_of(self, k: int) -> torch.Tensor:
        """Indices of the vectors of context ``k``'s files."""
        return torch.nonzero(self._ctx[self.vectors.clip_index] == k).flatten()


def context_accuracy_rows(stream: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Context-prediction accuracy of a context stream (rows as in :meth:`CANDEDetector.report_tables`):
    one row overall (``scope`` ``all``), then per machine type and per true context, with the
    number of files and the share right without (``accuracy``) and with the window
    (``accuracy (window)``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {("all", "all"): list(stream)}
    for r in stream:
        groups.setdefault(("machine", r["machine"]), []).append(r)
    for r in stream:
        groups.setdefault(("context", r["context"]), []).append(r)
    out = []
    for (scope, name), rows in groups.items():
        out.append({
            "scope": scope, "name": name, "files": len(rows),
            "accuracy": float(np.mean([r["predicted"] == r["context"] for r in rows])),
            "accuracy (window)": float(np.mean([r["predicted_window"] == r["context"] for r in rows])),
        })
    return out
