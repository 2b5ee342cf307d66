"""DCASE2023 Task 2 baseline autoencoder detector: MSE and Selective Mahalanobis scoring."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stetho.backends import StreamingLedoitWolf, precision_from_covariance, selective_mahalanobis
from stetho.datasets.clip import SOURCE, TARGET, Clip
from stetho.models.ae.torch_model import AENet
from stetho.models.base import FitContext
from stetho.models.logmel import LogMelDetector
from stetho.models.params import Boolean, Interval, Options
from stetho.models.persistence import cpu_weights, plain_history
from stetho.models.training import ClipMeans, FrameVectors, Trainer, optimizer_step, recompute_batchnorm

log = logging.getLogger(__name__)


class AEDetector(LogMelDetector):
    """The DCASE2023 baseline AE for one machine type (METHODS.md §3).

    Trained with MSE on 5-frame stacked log-mel vectors of all training clips (source + target).
    Two score modes: ``"mse"`` (mean squared reconstruction error of the clip) and
    ``"mahalanobis"`` (Selective Mahalanobis: ``min_d ē^T Σ_d^{-1} ē`` with ``ē`` the clip-mean
    error block and ``Σ_d`` the Ledoit-Wolf covariance of training error blocks of domain ``d``).
    Thresholds are the base class's (:class:`~stetho.models.base.Detector`): calibrated on
    held-out training clips by default, or ``threshold="official"`` for the baseline's Gamma fit
    of in-sample training scores.

    Args:
        n_mels: mel bands (128).
        n_frames: stacked frames per vector (5).
        frame_hop: frame hop between vectors (1).
        n_fft: FFT size in samples.
        hop_length: STFT hop in samples.
        sr: sample rate in Hz.
        hidden: hidden width (128).
        bottleneck: latent size (8).
        epochs: training epochs (100).
        batch_size: vectors per batch (256).
        lr: Adam learning rate (1e-3).
        validation_split: fraction of vectors held out for the validation loss (0.1).
        score_mode: default score mode, ``"mahalanobis"`` or ``"mse"``.
        precise_bn: after training, recompute BatchNorm statistics over the training vectors with
            the final weights (documented deviation: the original keeps the running averages,
            which lag the weights badly when a small dataset gives few steps). ``False`` = original.
        seed: seeds initialisation, split and shuffling (13711).
        **common: the parameters every detector takes (seed, device, channel, progress, threshold,
            calibration, decision_fpr ...; :data:`stetho.models.base.COMMON_PARAMS`).
    """

    name = "ae"
    score_modes = ("mahalanobis", "mse")
    _parameter_constraints = {
        "n_mels": [Interval(int, 1, None)], "n_frames": [Interval(int, 1, None)],
        "frame_hop": [Interval(int, 1, None)], "n_fft": [Interval(int, 16, None)],
        "hop_length": [Interval(int, 1, None)], "sr": [Interval(int, 1000, None)],
        "hidden": [Interval(int, 1, None)], "bottleneck": [Interval(int, 1, None)],
        "epochs": [Interval(int, 1, None)], "batch_size": [Interval(int, 2, None)],
        "lr": [Interval(float, 0, None, closed="neither")],
        "validation_split": [Interval(float, 0, 1, closed="left")],
        "score_mode": [Options(*score_modes)], "precise_bn": [Boolean()],
    }

    def __init__(
        self, n_mels: int = 128, n_frames: int = 5, frame_hop: int = 1, n_fft: int = 1024,
        hop_length: int = 512, sr: int = 16000, hidden: int = 128, bottleneck: int = 8,
        epochs: int = 100, batch_size: int = 256, lr: float = 1e-3, validation_split: float = 0.1,
        score_mode: str = "mahalanobis", precise_bn: bool = True, **common: Any,
    ) -> None:
        super().__init__(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, sr=sr, **common)
        self.n_frames = n_frames
        self.frame_hop = frame_hop
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.validation_split = validation_split
        self.score_mode = score_mode
        self.precise_bn = precise_bn

    # -- training ---------------------------------------------------------------------------
    def _fit(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> None:
        """Train on normal clips of one machine type (checkpoints in ``context.work_dir``)."""
        with Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress) as tr:
            device, gen = tr.device, tr.generator
            vectors = FrameVectors(feats, self.n_frames, self.frame_hop)
            net = AENet(vectors.dim, self.hidden, self.bottleneck).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)

            perm = torch.randperm(len(vectors), generator=gen)
            n_val = int(round(len(vectors) * self.validation_split)) if len(vectors) > 10 else 0
            val_idx, train_idx = perm[:n_val], perm[n_val:]

            def step(batch) -> float:
                x = batch[0].to(device, non_blocking=True)
                return optimizer_step(opt, torch.nn.functional.mse_loss(net(x), x))

            def validate() -> float:
                net.eval()
                total = 0.0
                with torch.no_grad():
                    for x, _ in vectors.batches(val_idx, 4096):
                        x = x.to(device)
                        total += float(torch.nn.functional.mse_loss(net(x), x, reduction="sum"))
                net.train()
                return total / (n_val * vectors.dim)

            net.train()
            ckpt = None
            if context.work_dir is not None:
                ckpt = Path(context.work_dir) / f"{self.name}_{'+'.join(self.machines_)}.ckpt"
            self.history_ = tr.run(
                step,
                lambda epoch: vectors.batches(train_idx, self.batch_size, shuffle=True, generator=gen, min_batch=2),
                self.epochs, evaluate=validate if n_val else None, desc="AE epochs", checkpoint=ckpt,
                state={"net": net, "opt": opt},
                fingerprint=(self._fingerprint_params(), [str(c.path) for c in clips]),
            )
            if self.precise_bn:
                recompute_batchnorm(
                    net, (x for x, _ in vectors.batches(train_idx, 4096, shuffle=True, generator=gen, min_batch=2)),
                    device,
                )
        net.eval()
        self.net_ = net
        self._fit_covariances(clips, vectors)

    def _errors(self, vectors: FrameVectors, batch: int = 8192):
        """Yield ``(error (b, dim), clip_index (b,))`` for every vector, model in eval mode."""
        device = next(self.net_.parameters()).device
        with torch.no_grad():
            for x, owner in vectors.batches(torch.arange(len(vectors)), batch):
                x = x.to(device)
                yield (x - self.net_(x)).float().cpu(), owner

    def _clip_errors(
        self, vectors: FrameVectors, covariances: dict[str, tuple[torch.Tensor, StreamingLedoitWolf]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per clip: MSE score ``(n,)`` and clip-mean error block ``ē`` ``(n, n_mels)``.

        ``covariances`` maps a domain to ``(clip mask, estimator)``; when given, the same pass
        feeds every error block of that domain's clips to its estimator.
        """
        sq, blocks = ClipMeans(vectors.n_clips), ClipMeans(vectors.n_clips, self.n_mels)
        for err, owner in self._errors(vectors):
            sq.add(err.square().mean(dim=1), owner)
            blocks.add(err.view(len(err), self.n_frames, self.n_mels).mean(dim=1), owner)
            for mask, est in (covariances or {}).values():
                sel = mask[owner]
                if sel.any():
                    est.update(err[sel].reshape(-1, self.n_mels).numpy())
        return sq.means(), blocks.means()

    def _fit_covariances(self, clips: Sequence[Clip], vectors: FrameVectors) -> None:
        """Ledoit-Wolf covariances of the training error blocks per domain (one pass)."""
        is_target = torch.tensor([c.domain == TARGET for c in clips])
        domains = {SOURCE: ~is_target, TARGET: is_target}
        est = {d: (m, StreamingLedoitWolf(self.n_mels)) for d, m in domains.items() if bool(m.any())}
        self._clip_errors(vectors, est)
        self.covariances_: dict[str, np.ndarray] = {}
        self.shrinkage_: dict[str, float] = {}
        for d, (_, e) in est.items():
            self.covariances_[d], self.shrinkage_[d] = e.covariance()
        if TARGET not in self.covariances_:
            log.info("no target-domain training clips: the target covariance is the source one")
        if SOURCE not in self.covariances_:
            log.info("no source-domain training clips: the source covariance is the target one")
        only = next(iter(self.covariances_.values()))
        for d in (SOURCE, TARGET):
            self.covariances_.setdefault(d, only)
        self.precisions_ = {d: precision_from_covariance(c) for d, c in self.covariances_.items()}

    # -- scoring ----------------------------------------------------------------------------
    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        feats = self._features(clips, features)
        if not feats:
            return {m: np.zeros(0) for m in self.score_modes}
        mse, mean_err = self._clip_errors(FrameVectors(feats, self.n_frames, self.frame_hop))
        return {"mahalanobis": selective_mahalanobis(mean_err, self.precisions_), "mse": mse}

    # -- export -----------------------------------------------------------------------------
    export_uses_section = False  # one model per machine type: every section scores alike

    def export_module(self, machine_type: str) -> torch.nn.Module:
        """The clip scores ``[mahalanobis, mse]`` of raw samples as one module
        (:class:`~stetho.models.ae.export.AEScoreModule`; see :meth:`Detector.export_module`)."""
        from stetho.models.ae.export import AEScoreModule

        self._check_export_machine(machine_type)
        module = AEScoreModule(self.logmel_params, self.net_, self.n_frames, self.frame_hop,
                               [self.precisions_[d] for d in sorted(self.precisions_)])
        assert tuple(self.score_modes) == ("mahalanobis", "mse")  # the module's output order
        return module.eval()

    # -- persistence ------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        t = lambda a: torch.as_tensor(np.asarray(a))  # noqa: E731
        return {
            "net": cpu_weights(self.net_),
            "covariances": {d: t(c) for d, c in self.covariances_.items()},
            "shrinkage": dict(self.shrinkage_),
            "history": plain_history(self.history_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        net = AENet(self.n_mels * self.n_frames, self.hidden, self.bottleneck)
        self.net_ = self._restore_net(net, state["net"])
        self.covariances_ = {d: c.numpy() for d, c in state["covariances"].items()}
        self.precisions_ = {d: precision_from_covariance(c) for d, c in self.covariances_.items()}
        self.shrinkage_ = dict(state["shrinkage"])
        self.history_ = plain_history(state["history"])
