"""BiGAN / EGBAD detector on log-mel patches (METHODS.md §5, seed 001)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.functional import binary_cross_entropy_with_logits as bce

from stetho.datasets.clip import Clip
from stetho.errors import StethoError
from stetho.models.base import FitContext
from stetho.models.bigan.torch_model import BiGAN, anomaly_scores, ema_update
from stetho.models.logmel import LogMelDetector
from stetho.models.params import Boolean, Check, Interval, Options, SequenceOf
from stetho.models.persistence import cpu_weights, plain_history
from stetho.models.training import ClipMeans, FrameVectors, Trainer, optimizer_step

log = logging.getLogger(__name__)

PATCH_REDUCE = ("mean", "max")
#: Columns of the training history: ``train_loss`` is ``d_loss + ge_loss`` (D's loss and the
#: joint G+E loss, epoch means); there is no validation loss (NaN in the table, never logged).
HISTORY = ("epoch", "train_loss", "val_loss", "d_loss", "ge_loss")


_POSITIVE_INT = Interval(int, 1, None)


def _multiple_of_4(v: Any) -> bool:
    """Patch sides: two stride-2 stages in E, G and D."""
    return Interval(int, 4, None).accepts(v) and v % 4 == 0


# -- normalisation ------------------------------------------------------------------------------
def norm_stats(logmels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean and standard deviation ``(n_mels,)`` over every frame of ``logmels``
    (float64 sums; a constant bin gets std 1 so that it maps to 0)."""
    n = sum(len(m) for m in logmels)
    s = sum(np.asarray(m, np.float64).sum(axis=0) for m in logmels)
    mean = s / n
    var = sum(np.square(np.asarray(m, np.float64) - mean).sum(axis=0) for m in logmels) / n
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def normalise(logmel: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """Log-mel (dB, ``(frames, n_mels)``) → the generator's tanh range: standardise each mel bin
    with the training ``mean``/``std``, divide by ``scale`` (3: ±3 standard deviations → ±1) and
    clip to [-1, 1]. Clipping keeps real inputs inside the range G can produce, so D cannot tell
    real from fake by out-of-range values alone."""
    return np.clip((np.asarray(logmel, np.float32) - mean) / (std * scale), -1.0, 1.0).astype(np.float32)


def denormalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """Inverse of :func:`normalise` (exact for log-mels within ±``scale`` standard deviations;
    clipped values come back as mean ± scale·std)."""
    return (np.asarray(x, np.float32) * (std * scale) + mean).astype(np.float32)


# -- mode collapse --------------------------------------------------------------------------------
def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance over all pairs of rows of ``x`` ``(n, ...)`` (n ≥ 2)."""
    flat = x.reshape(len(x), -1).double()
    d = torch.cdist(flat, flat)
    n = len(flat)
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def generator_diversity(net: BiGAN, data: torch.Tensor, n_samples: int = 64,
                        generator: torch.Generator | None = None) -> float:
    """Mode-collapse measure: mean pairwise distance of ``G(z)`` for ``n_samples`` draws
    ``z ~ N(0, I)`` divided by the mean pairwise distance of the (normalised) ``data`` patches.
    Near 0: G maps different z to the same output (collapse); about 1: as varied as the data."""
    device = next(net.parameters()).device
    was = net.training
    net.eval()
    z = torch.randn(n_samples, net.latent, generator=generator).to(device)
    fake = net.generator(z).cpu()
    net.train(was)
    spread = mean_pairwise_distance(data)
    return mean_pairwise_distance(fake) / spread if spread > 0 else float("inf")


class BiGANDetector(LogMelDetector):
    """BiGAN / EGBAD (Zenati et al. 2018) for one machine type (METHODS.md §5).

    Inputs are 64-frame × 128-mel log-mel patches with a hop of 8 frames (32 per 10 s clip),
    standardised per mel bin with the training statistics, divided by ``norm_scale`` and clipped
    to the generator's [-1, 1] (:func:`normalise`; the statistics are those of the clips the
    networks train on, stored with the model). D learns real pairs ``(E(x), x)`` against fake
    ``(z, G(z))``, ``z ~ N(0, I)``; G and E learn jointly to fool it (BCE with logits; one Adam
    per side). Scoring uses an exponential moving average of the weights. Per patch: ``"fm"``
    ``(1−w)‖x−G(E(x))‖_p + w‖f(E(x),x) − f(E(x),G(E(x)))‖_p`` or ``"cross-e"``
    ``(1−w)‖x−G(E(x))‖_p + w·BCE(D(E(x),x), 1)``; a clip's score is the mean (or max) over its
    patches. Clips shorter than one patch are refused with an error naming the file (padding
    would invent content the model then calls anomalous). Thresholds are the base class's
    (:class:`~stetho.models.base.Detector`): calibrated on held-out training clips by default,
    or ``threshold="official"`` for the Gamma fit of in-sample training scores (every clip
    trains).

    Args:
        n_mels, n_fft, hop_length, sr: log-mel parameters (128 mels, 1024/512 at 16 kHz); ``n_mels``
            a multiple of 4.
        patch_frames: frames per patch (64, a multiple of 4).
        patch_hop: frame hop between patches (8).
        latent: size of z (200).
        enc_channels: encoder conv widths (32, 64, 128).
        gen_hidden: generator's first dense width (1024).
        gen_channels: generator channels after the reshape and the first transposed conv (128, 64).
        dis_channels: discriminator x-path conv width (64).
        dis_z_hidden: discriminator z-path width (512).
        dis_feature: width of the discriminator's feature layer f (1024).
        dropout: discriminator dropout (0.5).
        epochs: training epochs (100).
        batch_size: patches per batch (100).
        lr: Adam learning rate of D and of G+E (1e-5).
        beta1: Adam β1 (0.5).
        ema_decay: decay of the weight average used for scoring (0.999).
        ema_warmup: use ``min(ema_decay, (1+t)/(10+t))`` at step ``t`` (TensorFlow's
            ``num_updates``), so that a short training is not scored with weights that are still
            mostly the initial ones; ``False`` = the fixed decay of the original.
        weight: w, weight of the discriminator term in the score (0.1).
        degree: p, norm degree of both score terms (1).
        score_mode: default score mode, ``"fm"`` or ``"cross-e"``.
        patch_reduce: clip score from patch scores, ``"mean"`` (the method) or ``"max"``.
        norm_scale: standard deviations mapped to ±1 (3).
        collapse_threshold: after training, warn of mode collapse when :func:`generator_diversity`
            is below this (0.05). Measured: a freshly initialised G (BatchNorm statistics not
            yet fitted) at about 1e-4 or less with narrow networks and 0.017 with the paper's
            widths, a constant G at 0, trained ones at 0.1-0.25. The value is kept in
            ``diversity_``.
        checkpoint_every: epochs between checkpoints in ``FitContext.work_dir`` (5; 0: none). A
            killed training run again with the same settings and clips resumes from the last
            one (:class:`~stetho.models.training.Trainer`); they are deleted after a finished fit.
        seed: seeds initialisation, shuffling, noise and dropout (13711).
        **common: the parameters every detector takes (seed, device, channel, progress, threshold,
            calibration, decision_fpr ...; :data:`stetho.models.base.COMMON_PARAMS`).
    """

    name = "bigan"
    min_frames_param = "patch_frames"  # a clip shorter than one patch is refused
    score_modes = ("fm", "cross-e")
    _parameter_constraints = {
        "n_mels": [Check(_multiple_of_4, "a positive multiple of 4")],
        "n_fft": [Interval(int, 16, None)], "hop_length": [_POSITIVE_INT], "sr": [Interval(int, 1000, None)],
        "patch_frames": [Check(_multiple_of_4, "a positive multiple of 4")], "patch_hop": [_POSITIVE_INT],
        "latent": [_POSITIVE_INT], "enc_channels": [SequenceOf(_POSITIVE_INT, 3, 3)],
        "gen_hidden": [_POSITIVE_INT], "gen_channels": [SequenceOf(_POSITIVE_INT, 2, 2)],
        "dis_channels": [_POSITIVE_INT], "dis_z_hidden": [_POSITIVE_INT], "dis_feature": [_POSITIVE_INT],
        "dropout": [Interval(float, 0, 1, closed="left")],
        "epochs": [_POSITIVE_INT], "batch_size": [Interval(int, 2, None)],
        "lr": [Interval(float, 0, None, closed="neither")], "beta1": [Interval(float, 0, 1, closed="left")],
        "ema_decay": [Interval(float, 0, 1, closed="left")], "ema_warmup": [Boolean()],
        "weight": [Interval(float, 0, 1)], "degree": [Interval(float, 0, None, closed="neither")],
        "score_mode": [Options(*score_modes)], "patch_reduce": [Options(*PATCH_REDUCE)],
        "norm_scale": [Interval(float, 0, None, closed="neither")],
        "collapse_threshold": [Interval(float, 0, None)], "checkpoint_every": [Interval(int, 0, None)],
    }

    def __init__(
        self, n_mels: int = 128, n_fft: int = 1024, hop_length: int = 512, sr: int = 16000,
        patch_frames: int = 64, patch_hop: int = 8, latent: int = 200,
        enc_channels: Sequence[int] = (32, 64, 128), gen_hidden: int = 1024, gen_channels: Sequence[int] = (128, 64),
        dis_channels: int = 64, dis_z_hidden: int = 512, dis_feature: int = 1024, dropout: float = 0.5,
        epochs: int = 100, batch_size: int = 100, lr: float = 1e-5, beta1: float = 0.5, ema_decay: float = 0.999,
        ema_warmup: bool = True, weight: float = 0.1, degree: float = 1.0, score_mode: str = "fm",
        patch_reduce: str = "mean", norm_scale: float = 3.0, collapse_threshold: float = 0.05,
        checkpoint_every: int = 5, **common: Any,
    ) -> None:
        super().__init__(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, sr=sr, **common)
        self.patch_frames = patch_frames
        self.patch_hop = patch_hop
        self.latent = latent
        self.enc_channels = tuple(enc_channels) if isinstance(enc_channels, (list, tuple)) else enc_channels
        self.gen_hidden = gen_hidden
        self.gen_channels = tuple(gen_channels) if isinstance(gen_channels, (list, tuple)) else gen_channels
        self.dis_channels = dis_channels
        self.dis_z_hidden = dis_z_hidden
        self.dis_feature = dis_feature
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.beta1 = beta1
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup
        self.weight = weight
        self.degree = degree
        self.score_mode = score_mode
        self.patch_reduce = patch_reduce
        self.norm_scale = norm_scale
        self.collapse_threshold = collapse_threshold
        self.checkpoint_every = checkpoint_every

    def _patches(self, clips: Sequence[Clip], feats: Sequence[np.ndarray]) -> FrameVectors:
        """Normalised patches of every clip (gathered on demand as ``(b, frames·mels)``)."""
        short = [f"{c.path} ({len(f)} frames)" for c, f in zip(clips, feats) if len(f) < self.patch_frames]
        if short:
            raise StethoError(f"{len(short)} clip(s) shorter than one {self.patch_frames}-frame patch: "
                              + ", ".join(short[:5]) + (" ..." if len(short) > 5 else ""))
        bad = [str(c.path) for c, f in zip(clips, feats) if f.ndim != 2 or f.shape[1] != self.n_mels]
        if bad:
            raise StethoError(f"log-mels must be (frames, {self.n_mels}): {', '.join(bad[:5])}")
        norm = [normalise(f, self.mean_, self.std_, self.norm_scale) for f in feats]
        return FrameVectors(norm, self.patch_frames, self.patch_hop)

    def _view(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), 1, self.patch_frames, self.n_mels)

    def _new_net(self) -> BiGAN:
        return BiGAN(self.patch_frames, self.n_mels, self.latent, self.enc_channels, self.gen_hidden,
                     self.gen_channels, self.dis_channels, self.dis_z_hidden, self.dis_feature, self.dropout)

    # -- training ---------------------------------------------------------------------------
    def _fit(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> None:
        """Train on normal clips of one machine type; checkpoints in ``context.work_dir``
        (``bigan_<machine>.ckpt``), resumed when a killed fit is run again with the same settings."""
        self.mean_, self.std_ = norm_stats(feats)
        patches = self._patches(clips, feats)
        if len(patches) < 2:
            raise StethoError(f"{len(patches)} training patch: BiGAN training needs at least 2")
        ckpt = (None if context.work_dir is None
                else Path(context.work_dir) / f"{self.name}_{'+'.join(self.machines_)}.ckpt")
        # what makes a training different: settings (not those read after it), clips, features
        settings = {k: v for k, v in self._fingerprint_params().items() if k != "collapse_threshold"}
        with Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress,
                     checkpoint_every=self.checkpoint_every) as tr:
            device, gen = tr.device, tr.generator
            net = self._new_net().to(device)  # weights from the trainer's seeded global RNG
            ema = self._new_net().to(device)
            ema.load_state_dict(net.state_dict())
            betas = (self.beta1, 0.999)
            opt_d = torch.optim.Adam(net.discriminator.parameters(), lr=self.lr, betas=betas)
            # G and E minimise separate losses of disjoint parameters: one Adam over both is the
            # original's two Adams.
            opt_ge = torch.optim.Adam(list(net.encoder.parameters()) + list(net.generator.parameters()),
                                      lr=self.lr, betas=betas)
            # EMA step count (the warm-up decay) and the epoch's loss sums: saved with checkpoints
            counters = {"step": 0, "d": 0.0, "ge": 0.0, "n": 0}
            ones = lambda t: torch.ones_like(t)  # noqa: E731
            zeros = lambda t: torch.zeros_like(t)  # noqa: E731

            def batches(epoch: int):
                counters.update(d=0.0, ge=0.0, n=0)
                return patches.batches(torch.arange(len(patches)), self.batch_size, shuffle=True, generator=gen,
                                       min_batch=2)

            def step(batch) -> float:
                x = self._view(batch[0]).to(device, non_blocking=True)
                z = torch.randn(len(x), self.latent, generator=gen).to(device)
                # discriminator: real pairs (E(x), x) → 1, fake pairs (z, G(z)) → 0
                with torch.no_grad():
                    ez, gz = net.encoder(x), net.generator(z)
                l_real, _ = net.discriminator(ez, x)
                l_fake, _ = net.discriminator(z, gz)
                d_loss = bce(l_real, ones(l_real)) + bce(l_fake, zeros(l_fake))
                d = optimizer_step(opt_d, d_loss)
                # generator and encoder: the opposite labels
                l_real, _ = net.discriminator(net.encoder(x), x)
                l_fake, _ = net.discriminator(z, net.generator(z))
                ge_loss = bce(l_fake, ones(l_fake)) + bce(l_real, zeros(l_real))
                g = optimizer_step(opt_ge, ge_loss)
                t = counters["step"]
                decay = min(self.ema_decay, (1 + t) / (10 + t)) if self.ema_warmup else self.ema_decay
                ema_update(ema, net, decay)
                counters["step"] = t + 1
                counters["d"] += d
                counters["ge"] += g
                counters["n"] += 1
                return d + g

            def on_epoch(epoch: int, hist: dict) -> None:
                n = max(counters["n"], 1)
                hist.setdefault("d_loss", []).append(counters["d"] / n)
                hist.setdefault("ge_loss", []).append(counters["ge"] / n)

            net.train()
            ema.train()  # only its parameters are averaged; eval mode below for scoring
            history = tr.run(
                step, batches, self.epochs, on_epoch=on_epoch, desc=f"{self.name} epochs", checkpoint=ckpt,
                state={"net": net, "ema": ema, "opt_d": opt_d, "opt_ge": opt_ge, "counters": counters},
                fingerprint=(settings, [str(c.path) for c in clips], self.mean_, self.std_),
            )
            self.history_ = {k: list(history.get(k, [])) for k in HISTORY}
            self.net_ = ema.eval()
            self.diversity_ = generator_diversity(
                self.net_, self._view(patches.gather(torch.randperm(len(patches), generator=gen)[:64])), 64, gen)
        if self.diversity_ < self.collapse_threshold:
            log.warning("%s: the generator looks collapsed (diversity %.3g < %.3g: G(z) barely depends on z)",
                        "+".join(self.machines_), self.diversity_, self.collapse_threshold)

    # -- scoring ----------------------------------------------------------------------------
    @torch.no_grad()
    def patch_scores(self, patches: FrameVectors, batch: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-patch scores ``{mode: (n_patches,)}`` and each patch's clip index."""
        device = next(self.net_.parameters()).device
        out: dict[str, list[torch.Tensor]] = {m: [] for m in self.score_modes}
        owners = []
        for x, owner in patches.batches(torch.arange(len(patches)), batch):
            s = anomaly_scores(self.net_, self._view(x).to(device), self.weight, self.degree)
            for m in self.score_modes:
                out[m].append(s[m].double().cpu())
            owners.append(owner)
        return {m: torch.cat(v) for m, v in out.items()}, torch.cat(owners)

    def _clip_scores(self, patches: FrameVectors) -> dict[str, np.ndarray]:
        scores, owner = self.patch_scores(patches)
        n = patches.n_clips
        result = {}
        for m, s in scores.items():
            if self.patch_reduce == "max":
                clip = torch.full((n,), -torch.inf, dtype=torch.float64).scatter_reduce(0, owner, s, "amax")
                result[m] = clip.numpy()
            else:
                means = ClipMeans(n)
                means.add(s, owner)
                result[m] = means.means()
        return result

    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        feats = self._features(clips, features)
        if not feats:
            return {m: np.zeros(0) for m in self.score_modes}
        return self._clip_scores(self._patches(clips, feats))

    # -- persistence ------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "net": cpu_weights(self.net_),
            "mean": torch.from_numpy(self.mean_), "std": torch.from_numpy(self.std_),
            "history": plain_history(self.history_),
            "diversity": float(self.diversity_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        net = self._new_net()
        self.net_ = self._restore_net(net, state["net"])
        self.mean_, self.std_ = state["mean"].numpy(), state["std"].numpy()
        self.history_ = plain_history(state["history"])
        self.diversity_ = float(state["diversity"])
