"""ARAE detector: adversarially robust autoencoder training and reconstruction scoring (seed 004).

One class serves images (flattened to ``(n, dim)`` arrays in [0, 1]: :meth:`ARAEDetector.fit_arrays`,
:meth:`ARAEDetector.score_arrays`) and DCASE clips through the pipeline (5-frame stacked log-mel
vectors, min-max scaled to [0, 1] with training statistics; clip score = mean frame score).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stetho.backends import gamma_threshold
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError
from stetho.features import AudioOptions, LogMelParams, extract_logmels
from stetho.models.arae.attacks import l2_pgd, linf_pgd, spatial_attack, spatial_grid
from stetho.models.arae.torch_model import ARAENet
from stetho.models.base import Detector
from stetho.models.training import FrameVectors, resolve_device, run_epochs, seed_everything

log = logging.getLogger(__name__)

VARIANTS = ("linf", "union", "plain", "denoising")


def arae_loss(recon_adv: torch.Tensor, x: torch.Tensor, z: torch.Tensor, z_adv: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """``mean((D(E(x')) − x)²) + γ · mean((E(x) − E(x'))²)`` (METHODS.md §7)."""
    return F.mse_loss(recon_adv, x) + gamma * F.mse_loss(z_adv, z)


def union_loss(recons: Sequence[torch.Tensor], x: torch.Tensor, z: torch.Tensor, z_advs: Sequence[torch.Tensor],
               gamma: float) -> torch.Tensor:
    """Union variant: ``Σ_k mean((D(E(x'_k)) − x)²) + γ · mean_k mean((E(x) − E(x'_k))²)`` over the
    attacks k (L2, L∞, spatial)."""
    rec = sum(F.mse_loss(r, x) for r in recons)
    lat = sum(F.mse_loss(za, z) for za in z_advs) / len(z_advs)
    return rec + gamma * lat


class ARAEDetector(Detector):
    """Adversarially robust autoencoder (METHODS.md §7), with its plain/denoising baselines.

    Variants: ``"linf"`` (ARAE: each batch is attacked by latent L∞ PGD with the current weights,
    loss :func:`arae_loss`), ``"union"`` (L2 PGD, L∞ PGD and the exhaustive spatial attack per batch,
    loss :func:`union_loss`), ``"plain"`` (MSE on clean inputs) and ``"denoising"`` (MSE of the
    reconstruction of ``clip(x + N(0, noise_std²))`` to ``x``). Score = ``Σ (x̂ − x)²`` over input
    dimensions on clean inputs; a clip's score is the mean over its frame vectors.

    Args:
        variant: ``linf``, ``union``, ``plain`` or ``denoising``.
        hidden: encoder hidden widths ((512, 256); the decoder mirrors them).
        latent: latent size (128).
        activation: ``sigmoid`` / ``relu``; default sigmoid, relu for ``union``.
        gamma: latent-distance weight; default 0.1 (``linf``), 0.2 (``union``).
        eps: L∞ radius in [0, 1] input units (0.2 MNIST, 0.05 Fashion-MNIST / COIL-100).
        steps: L∞ PGD iterations K (40; 20 for COIL-100).
        step_size: L∞ step; default ``2.5·eps/steps`` (union recipe: 0.01).
        l2_eps, l2_step, l2_steps: the union variant's L2 PGD (5, 0.1, 100).
        angles: rotations in degrees of the spatial attack (−30..30).
        shifts: translations in pixels, both axes (−4..4).
        image_shape: ``(H, W[, C])`` of the flattened inputs; needed by ``union`` only.
        noise_std: Gaussian noise of the ``denoising`` variant (0.2).
        scale: ``"none"`` (inputs already in [0, 1]: images), ``"minmax"`` (per dimension, from the
            training data: feature vectors) or ``"auto"`` (minmax for clips, none for arrays).
        epochs, batch_size, lr: Adam training (lr 1e-3).
        n_mels, n_frames, frame_hop, n_fft, hop_length, sr, channel: DCASE frame features
            (640-d = 128 mels × 5 frames, as ``ae``).
        decision_quantile: Gamma quantile of training scores for ``threshold_`` (0.9).
        seed, device, progress: as every detector.
    """

    name = "arae"
    score_modes = ("recon",)

    def __init__(
        self, variant: str = "linf", hidden: Sequence[int] = (512, 256), latent: int = 128,
        activation: str | None = None, gamma: float | None = None, eps: float = 0.2, steps: int = 40,
        step_size: float | None = None, l2_eps: float = 5.0, l2_step: float = 0.1, l2_steps: int = 100,
        angles: Sequence[float] = (-30, -20, -10, 0, 10, 20, 30), shifts: Sequence[float] = (-4, -2, 0, 2, 4),
        image_shape: Sequence[int] | None = None, noise_std: float = 0.2, scale: str = "auto",
        epochs: int = 20, batch_size: int = 128, lr: float = 1e-3,
        n_mels: int = 128, n_frames: int = 5, frame_hop: int = 1, n_fft: int = 1024, hop_length: int = 512,
        sr: int = 16000, decision_quantile: float = 0.9, seed: int = 13711, device: str = "auto",
        channel: int = 0, progress: bool = False,
    ) -> None:
        self.variant = variant
        self.hidden = hidden
        self.latent = latent
        self.activation = activation
        self.gamma = gamma
        self.eps = eps
        self.steps = steps
        self.step_size = step_size
        self.l2_eps = l2_eps
        self.l2_step = l2_step
        self.l2_steps = l2_steps
        self.angles = angles
        self.shifts = shifts
        self.image_shape = image_shape
        self.noise_std = noise_std
        self.scale = scale
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.n_mels = n_mels
        self.n_frames = n_frames
        self.frame_hop = frame_hop
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.sr = sr
        self.decision_quantile = decision_quantile
        self.seed = seed
        self.device = device
        self.channel = channel
        self.progress = progress

    # -- hyper-parameters ---------------------------------------------------------------------
    def check_params(self) -> None:
        super().check_params()
        if self.variant not in VARIANTS:
            raise ConfigError(f"arae: unknown variant '{self.variant}'; choose from {', '.join(VARIANTS)}")
        if self.scale not in ("auto", "none", "minmax"):
            raise ConfigError(f"arae: scale must be auto, none or minmax, not '{self.scale}'")
        if self.variant == "union" and not self.image_shape:
            raise ConfigError("arae: the union variant needs image_shape (its spatial attack rotates images)")
        for key in ("eps", "steps", "epochs", "batch_size", "latent"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"arae: {key} must be positive, got {getattr(self, key)}")

    @property
    def activation_(self) -> str:
        return self.activation or ("relu" if self.variant == "union" else "sigmoid")

    @property
    def gamma_(self) -> float:
        return float(self.gamma) if self.gamma is not None else (0.2 if self.variant == "union" else 0.1)

    # -- features (DCASE clips) -----------------------------------------------------------------
    @property
    def logmel_params(self) -> LogMelParams:
        return LogMelParams(sr=self.sr, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels)

    def extract(self, clips, resample=True, cache=None, progress=False, raise_on_error=True, desc="log-mel"):
        """Log-mels of ``clips`` (see :meth:`Detector.extract`)."""
        opts = AudioOptions(channel=self.channel, min_frames=self.n_frames, resample=resample)
        return extract_logmels(clips, self.logmel_params, opts, cache=cache, progress=progress,
                               raise_on_error=raise_on_error, desc=desc)

    # -- attacks with the fitted network ----------------------------------------------------------
    def attack(self, x: torch.Tensor, kind: str = "linf", eps: float | None = None, steps: int | None = None,
               step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Adversarial versions of scaled inputs ``x`` ``(n, dim)`` against this network's encoder
        (``kind``: ``linf`` or ``l2``; defaults from the constructor)."""
        net = self.net_
        if kind == "linf":
            return linf_pgd(net.encode, x, self.eps if eps is None else eps, steps or self.steps,
                            self.step_size if step_size is None else step_size, generator=generator)
        if kind == "l2":
            return l2_pgd(net.encode, x, self.l2_eps if eps is None else eps, steps or self.l2_steps,
                          self.l2_step if step_size is None else step_size, generator=generator)
        raise ValueError(f"unknown attack kind {kind!r}")

    def _loss(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        net = self.net_
        if self.variant == "plain":
            return F.mse_loss(net(x), x)
        if self.variant == "denoising":
            noisy = (x + self.noise_std * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)
            return F.mse_loss(net(noisy), x)
        if self.variant == "linf":
            x_adv = linf_pgd(net.encode, x, self.eps, self.steps, self.step_size, generator=gen)
            z, z_adv = net.encode(x), net.encode(x_adv)
            return arae_loss(net.decoder(z_adv), x, z, z_adv, self.gamma_)
        advs = [
            l2_pgd(net.encode, x, self.l2_eps, self.l2_steps, self.l2_step, generator=gen),
            linf_pgd(net.encode, x, self.eps, self.steps, self.step_size, generator=gen),
            spatial_attack(net.encode, x, tuple(self.image_shape), self._transforms)[0],
        ]
        z = net.encode(x)
        z_advs = [net.encode(a) for a in advs]
        return union_loss([net.decoder(za) for za in z_advs], x, z, z_advs, self.gamma_)

    # -- training -------------------------------------------------------------------------------
    def _train(self, dim: int, epoch_batches, validate=None) -> None:
        """Train a fresh network on batches of scaled vectors ``epoch_batches(epoch)``."""
        self.check_params()
        device = resolve_device(self.device)
        gen = seed_everything(self.seed)
        self._gen = gen
        self._transforms = spatial_grid(self.angles, self.shifts) if self.variant == "union" else []
        if self.image_shape and int(np.prod(self.image_shape)) != dim:
            raise ConfigError(f"arae: image_shape {tuple(self.image_shape)} does not match input size {dim}")
        self.net_ = ARAENet(dim, tuple(self.hidden), self.latent, self.activation_).to(device)
        opt = torch.optim.Adam(self.net_.parameters(), lr=self.lr)

        def step(x: torch.Tensor) -> float:
            x = self._scale(x.to(device))
            loss = self._loss(x, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return float(loss.detach())

        self.net_.train()
        self.history_ = run_epochs(step, validate, epoch_batches, self.epochs, progress=self.progress,
                                   desc=f"ARAE ({self.variant}) epochs")
        self.net_.eval()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_min_ is None:
            return x
        lo = self.scale_min_.to(x.device)
        return (x - lo) / self.scale_range_.to(x.device)

    def _set_scale(self, lo: torch.Tensor | None, hi: torch.Tensor | None) -> None:
        self.scale_min_ = lo
        self.scale_range_ = None if lo is None else (hi - lo).clamp_min(1e-6)

    def fit_arrays(self, x: np.ndarray) -> "ARAEDetector":
        """Train on normal vectors ``x`` ``(n, dim)`` (images flattened, in [0, 1] unless ``scale``
        is ``minmax``); ``threshold_`` is the Gamma quantile of their scores."""
        x = _as_matrix(x, "fit_arrays")
        data = torch.from_numpy(x)
        if self.scale == "minmax":
            self._set_scale(data.min(0).values, data.max(0).values)
        else:
            self._set_scale(None, None)
            if x.min() < 0 or x.max() > 1:
                raise ValueError(f"fit_arrays: inputs must lie in [0, 1] (got [{x.min():.3g}, {x.max():.3g}]); "
                                 "pass scale='minmax' for other feature vectors")
        gen_batches = torch.Generator().manual_seed(self.seed + 1)

        def batches(epoch: int) -> Iterable[torch.Tensor]:
            perm = torch.randperm(len(data), generator=gen_batches)
            for s in range(0, len(data), self.batch_size):
                yield data[perm[s:s + self.batch_size]]

        self._train(x.shape[1], batches)
        self.machines_ = []
        self.train_scores_ = {"recon": self.score_arrays(x)}
        self.thresholds_ = {"recon": gamma_threshold(self.train_scores_["recon"], self.decision_quantile)}
        return self

    def score_arrays(self, x: np.ndarray | torch.Tensor, scaled: bool = False, batch: int = 4096) -> np.ndarray:
        """Scores ``Σ (x̂ − x)²`` ``(n,)`` of vectors ``x`` ``(n, dim)`` (``scaled``: already in the
        network's input units, e.g. adversarial examples from :meth:`attack`)."""
        data = torch.as_tensor(x if isinstance(x, torch.Tensor) else _as_matrix(x, "score_arrays"))
        device = next(self.net_.parameters()).device
        out = []
        with torch.no_grad():
            for s in range(0, len(data), batch):
                xb = data[s:s + batch].to(device)
                xb = xb if scaled else self._scale(xb)
                out.append((self.net_(xb) - xb).square().sum(dim=1).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)

    def scale_arrays(self, x: np.ndarray) -> torch.Tensor:
        """``x`` ``(n, dim)`` in the network's input units (after the training min-max scaling)."""
        return self._scale(torch.from_numpy(_as_matrix(x, "scale_arrays")))

    # -- the Detector contract (DCASE clips) -----------------------------------------------------
    def fit(self, clips: Sequence[Clip], features: Sequence[np.ndarray] | None = None) -> "ARAEDetector":
        """Train on the 5-frame stacked log-mel vectors of normal clips of one machine type."""
        if not clips:
            raise ValueError("fit() needs at least one training clip")
        feats = self._features(clips, features)
        vectors = FrameVectors(feats, self.n_frames, self.frame_hop)
        if self.scale in ("auto", "minmax"):
            lo = vectors.frames.min(0).values.repeat(self.n_frames)
            hi = vectors.frames.max(0).values.repeat(self.n_frames)
            self._set_scale(lo, hi)
        else:
            self._set_scale(None, None)
        gen_batches = torch.Generator().manual_seed(self.seed + 1)
        idx = torch.arange(len(vectors))
        self._train(vectors.dim, lambda e: (x for x, _ in vectors.batches(idx, self.batch_size, shuffle=True,
                                                                          generator=gen_batches)))
        self.machines_ = sorted({c.machine for c in clips})
        self.train_scores_ = {"recon": self._clip_scores(vectors)}
        self.thresholds_ = {"recon": gamma_threshold(self.train_scores_["recon"], self.decision_quantile)}
        return self

    def _clip_scores(self, vectors: FrameVectors) -> np.ndarray:
        sums = torch.zeros(vectors.n_clips, dtype=torch.float64)
        counts = torch.zeros(vectors.n_clips, dtype=torch.float64)
        for x, owner in vectors.batches(torch.arange(len(vectors)), 8192):
            sums.index_add_(0, owner, torch.from_numpy(self.score_arrays(x)))
            counts.index_add_(0, owner, torch.ones(len(owner), dtype=torch.float64))
        return (sums / counts).numpy()

    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        feats = self._features(clips, features)
        if not feats:
            return {"recon": np.zeros(0)}
        return {"recon": self._clip_scores(FrameVectors(feats, self.n_frames, self.frame_hop))}

    # -- persistence ----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "net": {k: v.cpu() for k, v in self.net_.state_dict().items()},
            "input_dim": int(self.net_.encoder[0].in_features),
            "scale_min": self.scale_min_, "scale_max": None if self.scale_min_ is None
            else self.scale_min_ + self.scale_range_,
            "thresholds": dict(self.thresholds_),
            "train_scores": {m: torch.as_tensor(s) for m, s in self.train_scores_.items()},
            "history": {k: list(v) for k, v in self.history_.items()},
            "machines": list(self.machines_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        net = ARAENet(state["input_dim"], tuple(self.hidden), self.latent, self.activation_)
        net.load_state_dict(state["net"])
        self.net_ = net.to(resolve_device(self.device)).eval()
        self._set_scale(state["scale_min"], state["scale_max"])
        self.thresholds_ = dict(state["thresholds"])
        self.train_scores_ = {m: s.numpy() for m, s in state["train_scores"].items()}
        self.history_ = {k: list(v) for k, v in state["history"].items()}
        self.machines_ = list(state["machines"])


def _as_matrix(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"{where}: expected a non-empty (n, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: inputs contain NaN or infinite values")
    return x
