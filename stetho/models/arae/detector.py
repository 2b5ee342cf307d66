"""ARAE detector: adversarially robust autoencoder training and reconstruction scoring (seed 004).

One class serves images (flattened to ``(n, dim)`` arrays in [0, 1]: :meth:`ARAEDetector.fit_arrays`,
:meth:`ARAEDetector.score_arrays`) and DCASE clips through the pipeline (5-frame stacked log-mel
vectors, min-max scaled to [0, 1] with training statistics; clip score = mean frame score).

Both paths follow the detector contract (:mod:`stetho.models.base`): the base class holds clips
(or images) out for calibration, trains through :meth:`ARAEDetector._fit` and owns the decision
scores and thresholds. An image is a "clip" of machine type :data:`ARRAY_MACHINE` whose feature
is its one flattened vector ``(dim,)`` (a DCASE clip's feature is its log-mel ``(frames, mels)``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stetho.datasets.clip import SOURCE, Clip
from stetho.errors import ConfigError, StethoError
from stetho.models.arae.attacks import DEFAULT_ANGLES, DEFAULT_SHIFTS, l2_pgd, linf_pgd, spatial_attack, spatial_grid
from stetho.models.arae.torch_model import ARAENet
from stetho.models.base import FitContext
from stetho.models.logmel import LogMelDetector
from stetho.models.params import Interval, Options, SequenceOf
from stetho.models.persistence import cpu_weights, plain_history
from stetho.models.training import ClipMeans, FrameVectors, Trainer, make_generator, optimizer_step

log = logging.getLogger(__name__)

VARIANTS = ("linf", "union", "plain", "denoising")
OUTPUTS = ("sigmoid", "linear")
#: When adversarial examples are crafted: with the current weights for every batch, or with the
#: weights of the epoch's start (the original L∞ ARAE crafts the whole training set once per epoch).
CRAFTS = ("batch", "epoch")
SCALES = ("auto", "none", "minmax")
#: Machine type of the rows given to :meth:`ARAEDetector.fit_arrays` (``thresholds_["recon"]["images"]``).
ARRAY_MACHINE = "images"


def arae_loss(recon_adv: torch.Tensor, x: torch.Tensor, z: torch.Tensor, z_adv: torch.Tensor,
              gamma: float) -> torch.Tensor:
    """``mean((D(E(x')) − x)²) + γ · mean((E(x) − E(x'))²)`` (METHODS.md §7)."""
    return F.mse_loss(recon_adv, x) + gamma * F.mse_loss(z_adv, z)


def union_loss(recons: Sequence[torch.Tensor], x: torch.Tensor, z: torch.Tensor, z_advs: Sequence[torch.Tensor],
               gamma: float) -> torch.Tensor:
    """Union variant: ``mean_k mean((D(E(x'_k)) − x)²) + γ · mean_k mean((E(x) − E(x'_k))²)`` over the
    attacks k (L2, L∞, spatial): the original's MSE over the three adversarial batches stacked, so
    both terms are averages over the attacks."""
    rec = sum(F.mse_loss(r, x) for r in recons) / len(recons)
    lat = sum(F.mse_loss(za, z) for za in z_advs) / len(z_advs)
    return rec + gamma * lat


def array_clips(n: int, machine: str = ARRAY_MACHINE) -> list[Clip]:
    """``n`` stand-in clips for the rows of an array (``row_000000`` ...), one machine type, section
    and domain, so the base class calibrates on held-out rows as it does on held-out clips."""
    return [Clip(Path(f"row_{i:06d}"), machine, "00", "train", SOURCE) for i in range(n)]


_POSITIVE = Interval(float, 0, None, closed="neither")
_COUNT = Interval(int, 1, None)


class ARAEDetector(LogMelDetector):
    """Adversarially robust autoencoder (METHODS.md §7), with its plain/denoising baselines.

    Variants: ``"linf"`` (ARAE: latent L∞ PGD examples crafted with the weights of the epoch's start,
    as the original, loss :func:`arae_loss`), ``"union"`` (L2 PGD, L∞ PGD and the exhaustive spatial
    attack crafted per batch with the current weights, loss :func:`union_loss`), ``"plain"`` (MSE
    on clean inputs) and ``"denoising"`` (MSE of the reconstruction of ``clip(x + N(0, noise_std²))``
    to ``x``). Score = ``Σ (x̂ − x)²`` over input dimensions on clean inputs; a clip's score is the
    mean over its frame vectors. Thresholds are the base class's (calibrated on held-out clips or
    images by default; ``threshold="official"``: train on all, Gamma quantile of the in-sample
    scores, as before the detector contract).

    Args:
        variant: ``linf``, ``union``, ``plain`` or ``denoising``.
        hidden: encoder hidden widths ((512, 256); the decoder mirrors them).
        latent: latent size (128).
        activation: ``sigmoid`` / ``relu``; default sigmoid, relu for ``union``.
        output: output layer, ``sigmoid`` / ``linear``; default sigmoid, linear for ``union`` (as
            each original).
        craft: ``epoch`` (adversarial examples crafted against the weights at the start of each
            epoch: the original L∞ ARAE) or ``batch`` (against the current weights: the original
            union model); default by variant.
        gamma: latent-distance weight; default 0.1 (``linf``), 0.2 (``union``).
        eps: L∞ radius in [0, 1] input units (0.2 MNIST, 0.05 Fashion-MNIST / COIL-100).
        steps: L∞ PGD iterations K (40; 20 for COIL-100).
        step_size: L∞ step; default ``2.5·eps/steps`` (``linf``), 0.01 (``union``).
        l2_eps, l2_step, l2_steps: the union variant's L2 PGD (5, 0.1, 100).
        angles: rotations in degrees of the spatial attack (−30..30 in 2° steps: 31).
        shifts: translations in pixels, both axes (−4, 0, 4): 31 × 3 × 3 = 279 transforms.
        image_shape: ``(H, W[, C])`` of the flattened inputs; needed by ``union`` only.
        noise_std: Gaussian noise of the ``denoising`` variant (0.2).
        scale: ``"none"`` (inputs already in [0, 1]: images), ``"minmax"`` (per dimension, from the
            training data: feature vectors) or ``"auto"`` (minmax for clips, none for arrays).
        epochs, batch_size, lr: Adam training (lr 1e-3).
        n_mels, n_frames, frame_hop, n_fft, hop_length, sr: DCASE frame features
            (640-d = 128 mels × 5 frames, as ``ae``).
        **common: the parameters every detector takes (seed, device, channel, progress, threshold,
            calibration, decision_fpr ...; :data:`stetho.models.base.COMMON_PARAMS`).
    """

    name = "arae"
    score_modes = ("recon",)
    _parameter_constraints = {
        "variant": [Options(*VARIANTS)],
        "hidden": [SequenceOf(_COUNT)], "latent": [_COUNT],
        "activation": [Options("sigmoid", "relu"), None],
        "output": [Options(*OUTPUTS), None], "craft": [Options(*CRAFTS), None],
        "gamma": [Interval(float, 0, None), None],
        "eps": [_POSITIVE], "steps": [_COUNT], "step_size": [_POSITIVE, None],
        "l2_eps": [_POSITIVE], "l2_step": [_POSITIVE], "l2_steps": [_COUNT],
        "angles": [SequenceOf(Interval(float, None, None), min_len=1)],
        "shifts": [SequenceOf(Interval(float, None, None), min_len=1)],
        "image_shape": [SequenceOf(_COUNT, min_len=2, max_len=3), None],
        "noise_std": [Interval(float, 0, None)], "scale": [Options(*SCALES)],
        "epochs": [_COUNT], "batch_size": [_COUNT], "lr": [_POSITIVE],
        "n_mels": [_COUNT], "n_frames": [_COUNT], "frame_hop": [_COUNT],
        "n_fft": [Interval(int, 16, None)], "hop_length": [_COUNT], "sr": [Interval(int, 1000, None)],
    }

    def __init__(
        self, variant: str = "linf", hidden: Sequence[int] = (512, 256), latent: int = 128,
        activation: str | None = None, output: str | None = None, craft: str | None = None,
        gamma: float | None = None, eps: float = 0.2, steps: int = 40,
        step_size: float | None = None, l2_eps: float = 5.0, l2_step: float = 0.1, l2_steps: int = 100,
        angles: Sequence[float] = DEFAULT_ANGLES, shifts: Sequence[float] = DEFAULT_SHIFTS,
        image_shape: Sequence[int] | None = None, noise_std: float = 0.2, scale: str = "auto",
        epochs: int = 20, batch_size: int = 128, lr: float = 1e-3,
        n_mels: int = 128, n_frames: int = 5, frame_hop: int = 1, n_fft: int = 1024, hop_length: int = 512,
        sr: int = 16000, **common: Any,
    ) -> None:
        super().__init__(n_mels=n_mels, n_fft=n_fft, hop_length=hop_length, sr=sr, **common)
        self.variant = variant
        self.hidden = hidden
        self.latent = latent
        self.activation = activation
        self.output = output
        self.craft = craft
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
        self.n_frames = n_frames
        self.frame_hop = frame_hop

    # -- hyper-parameters ---------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.variant == "union" and not self.image_shape:
            raise ConfigError("arae: the union variant needs params.image_shape (its spatial attack rotates images)")

    @property
    def activation_(self) -> str:
        return self.activation or ("relu" if self.variant == "union" else "sigmoid")

    @property
    def output_(self) -> str:
        return self.output or ("linear" if self.variant == "union" else "sigmoid")

    @property
    def craft_(self) -> str:
        return self.craft or ("batch" if self.variant == "union" else "epoch")

    @property
    def step_size_(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return 0.01 if self.variant == "union" else 2.5 * self.eps / self.steps

    @property
    def gamma_(self) -> float:
        return float(self.gamma) if self.gamma is not None else (0.2 if self.variant == "union" else 0.1)

    # -- attacks with the fitted network ----------------------------------------------------------
    def attack(self, x: torch.Tensor, kind: str = "linf", eps: float | None = None, steps: int | None = None,
               step_size: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Adversarial versions of scaled inputs ``x`` ``(n, dim)`` against this network's encoder
        (``kind``: ``linf`` or ``l2``; defaults from the constructor)."""
        net = self.net_
        if kind == "linf":
            if step_size is None and eps is None and steps is None:
                step_size = self.step_size_
            return linf_pgd(net.encode, x, self.eps if eps is None else eps, steps or self.steps,
                            step_size, generator=generator)
        if kind == "l2":
            return l2_pgd(net.encode, x, self.l2_eps if eps is None else eps, steps or self.l2_steps,
                          self.l2_step if step_size is None else step_size, generator=generator)
        raise ValueError(f"unknown attack kind {kind!r}")

    def _loss(self, net: ARAENet, x: torch.Tensor, gen: torch.Generator,
              transforms: Sequence[tuple[float, tuple[float, float]]], crafter: ARAENet | None = None) -> torch.Tensor:
        """The training loss of a batch ``x``; adversarial examples are crafted against
        ``crafter``'s encoder (the weights of the epoch's start) or, when ``None``, ``net``'s."""
        encode = (crafter or net).encode
        if self.variant == "plain":
            return F.mse_loss(net(x), x)
        if self.variant == "denoising":
            noisy = (x + self.noise_std * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)
            return F.mse_loss(net(noisy), x)
        if self.variant == "linf":
            x_adv = linf_pgd(encode, x, self.eps, self.steps, self.step_size_, generator=gen)
            z, z_adv = net.encode(x), net.encode(x_adv)
            return arae_loss(net.decoder(z_adv), x, z, z_adv, self.gamma_)
        advs = [
            l2_pgd(encode, x, self.l2_eps, self.l2_steps, self.l2_step, generator=gen),
            linf_pgd(encode, x, self.eps, self.steps, self.step_size_, generator=gen),
            spatial_attack(encode, x, tuple(self.image_shape), transforms)[0],
        ]
        z = net.encode(x)
        z_advs = [net.encode(a) for a in advs]
        return union_loss([net.decoder(za) for za in z_advs], x, z, z_advs, self.gamma_)

    # -- training -------------------------------------------------------------------------------
    def _fit(self, clips: list[Clip], feats: list[np.ndarray], context: FitContext) -> None:
        """Train a fresh network on the frame vectors of the clips' log-mels, or on the rows given
        to :meth:`fit_arrays` (1-D features)."""
        shuffle = make_generator(self.seed + 1)
        if _is_rows(feats):
            data = torch.from_numpy(_as_matrix(np.stack(feats), "fit"))
            if self.scale == "minmax":
                self._set_scale(data.min(0).values, data.max(0).values)
            else:
                self._set_scale(None, None)
                _check_unit_range(data.numpy(), "fit_arrays")

            def batches(epoch: int) -> Iterable[torch.Tensor]:
                perm = torch.randperm(len(data), generator=shuffle)
                for s in range(0, len(data), self.batch_size):
                    yield data[perm[s:s + self.batch_size]]

            self._train(data.shape[1], batches, shuffle, context, data)  # rows: their values identify them
            return
        vectors = FrameVectors(feats, self.n_frames, self.frame_hop)
        if self.scale in ("auto", "minmax"):
            lo = vectors.frames.min(0).values.repeat(self.n_frames)
            hi = vectors.frames.max(0).values.repeat(self.n_frames)
            self._set_scale(lo, hi)
        else:
            self._set_scale(None, None)
        idx = torch.arange(len(vectors))

        def frame_batches(epoch: int) -> Iterable[torch.Tensor]:
            return (x for x, _ in vectors.batches(idx, self.batch_size, shuffle=True, generator=shuffle))

        self._train(vectors.dim, frame_batches, shuffle, context,
                    [(c.machine, c.section, c.domain or SOURCE, c.name) for c in clips])

    def _train(self, dim: int, epoch_batches, shuffle: torch.Generator, context: FitContext,
               data_id: Any) -> None:
        """Train a fresh network on batches of unscaled vectors ``epoch_batches(epoch)`` (shuffled
        with ``shuffle``), checkpointed in ``context.work_dir`` when there is one; ``data_id`` (the
        training clips' names, or the rows themselves) goes into the checkpoint's fingerprint."""
        if self.image_shape and int(np.prod(self.image_shape)) != dim:
            raise ConfigError(f"arae: image_shape {tuple(self.image_shape)} does not match input size {dim}")
        transforms = spatial_grid(self.angles, self.shifts) if self.variant == "union" else []
        checkpoint = None if context.work_dir is None else \
            Path(context.work_dir) / f"{self.name}_{'+'.join(self.machines_)}.ckpt"
        adversarial = self.variant in ("linf", "union")
        with Trainer(self.seed, device=self.device, threads=self.threads, progress=self.progress) as tr:
            net = ARAENet(dim, tuple(self.hidden), self.latent, self.activation_, self.output_).to(tr.device)
            opt = torch.optim.Adam(net.parameters(), lr=self.lr)
            gen = tr.generator
            crafter: list[ARAENet | None] = [None]  # the epoch's frozen copy (craft="epoch")

            def batches(epoch: int) -> Iterable[torch.Tensor]:
                if adversarial and self.craft_ == "epoch":
                    crafter[0] = copy.deepcopy(net).eval().requires_grad_(False)
                return epoch_batches(epoch)

            def step(x: torch.Tensor) -> float:
                x = self._scale(x.to(tr.device))
                return optimizer_step(opt, self._loss(net, x, gen, transforms, crafter[0]))

            def on_epoch(epoch: int, history: dict) -> None:
                self.net_ = net.eval()
                try:
                    extra = context.on_epoch(epoch, self) or {}
                finally:
                    net.train()
                for key, value in extra.items():
                    history.setdefault(key, [float("nan")] * (len(history["epoch"]) - 1)).append(float(value))

            net.train()
            self.history_ = tr.run(step, batches, self.epochs, desc=f"ARAE ({self.variant}) epochs",
                                   checkpoint=checkpoint, state={"net": net, "opt": opt, "shuffle": shuffle},
                                   fingerprint=(self._fingerprint_params(), dim, data_id),
                                   on_epoch=on_epoch if context.on_epoch is not None else None,
                                   stop=context.stop)
            self.net_ = net.eval()

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale_min_ is None:
            return x
        lo = self.scale_min_.to(x.device)
        return (x - lo) / self.scale_range_.to(x.device)

    def _set_scale(self, lo: torch.Tensor | None, hi: torch.Tensor | None) -> None:
        self.scale_min_ = lo
        self.scale_range_ = None if lo is None else (hi - lo).clamp_min(1e-6)

    # -- arrays (images) ------------------------------------------------------------------------
    def fit_arrays(self, x: np.ndarray, context: FitContext | None = None) -> "ARAEDetector":
        """Train on normal vectors ``x`` ``(n, dim)`` (images flattened, in [0, 1] unless ``scale``
        is ``minmax``), one row per :func:`array_clips` stand-in clip of machine type
        :data:`ARRAY_MACHINE`: the thresholds ``thresholds_["recon"]["images"]`` are calibrated
        on held-out rows, or the Gamma quantile of all rows' in-sample scores with
        ``threshold="official"`` (trains on every row, as before the detector contract)."""
        self.check_params()
        x = _as_matrix(x, "fit_arrays")
        if self.scale != "minmax":
            _check_unit_range(x, "fit_arrays")
        return self.fit(array_clips(len(x)), list(x), context)

    def score_arrays(self, x: np.ndarray | torch.Tensor, scaled: bool = False, batch: int = 4096) -> np.ndarray:
        """Scores ``Σ (x̂ − x)²`` ``(n,)`` of vectors ``x`` ``(n, dim)`` (``scaled``: already in the
        network's input units, e.g. adversarial examples from :meth:`attack`)."""
        return self._map_arrays(lambda xb: (self.net_(xb) - xb).square().sum(dim=1).double(), x, scaled, batch,
                                where="score_arrays")

    def _map_arrays(self, fn, x: np.ndarray | torch.Tensor, scaled: bool, batch: int,
                    where: str = "arrays") -> np.ndarray:
        """``fn`` of the network-unit rows of ``x`` ``(n, dim)``, in batches of ``batch`` rows,
        without gradients (``scaled``: ``x`` is in network units already)."""
        data = x if isinstance(x, torch.Tensor) else torch.from_numpy(_as_matrix(x, where))
        device = next(self.net_.parameters()).device
        with torch.no_grad():
            if not len(data):
                return fn(data.to(device)).cpu().numpy()
            out = []
            for s in range(0, len(data), batch):
                xb = data[s:s + batch].to(device)
                out.append(fn(xb if scaled else self._scale(xb)).cpu())
        return torch.cat(out).numpy()

    def encode_arrays(self, x: np.ndarray | torch.Tensor, scaled: bool = False, batch: int = 4096) -> np.ndarray:
        """Latent codes ``(n, latent)`` of vectors ``x`` ``(n, dim)`` (``scaled``: in network units)."""
        return self._map_arrays(self.net_.encode, x, scaled, batch)

    def reconstruct_arrays(self, x: np.ndarray | torch.Tensor, scaled: bool = False, batch: int = 4096) -> np.ndarray:
        """Reconstructions ``(n, dim)`` of vectors ``x`` ``(n, dim)``, in network units."""
        return self._map_arrays(self.net_, x, scaled, batch)

    def scale_arrays(self, x: np.ndarray) -> torch.Tensor:
        """``x`` ``(n, dim)`` in the network's input units (after the training min-max scaling)."""
        return self._scale(torch.from_numpy(_as_matrix(x, "scale_arrays")))

    # -- scoring (DCASE clips, or array rows) -----------------------------------------------------
    def _clip_scores(self, vectors: FrameVectors) -> np.ndarray:
        means = ClipMeans(vectors.n_clips)
        for x, owner in vectors.batches(torch.arange(len(vectors)), 8192):
            means.add(torch.from_numpy(self.score_arrays(x)), owner)
        return means.means()

    def _score_all(self, clips, features) -> dict[str, np.ndarray]:
        feats = self._features(clips, features)
        if not feats:
            return {"recon": np.zeros(0)}
        if _is_rows(feats):
            return {"recon": self.score_arrays(np.stack(feats))}
        return {"recon": self._clip_scores(FrameVectors(feats, self.n_frames, self.frame_hop))}

    # -- persistence ----------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return {
            "net": cpu_weights(self.net_),
            "input_dim": int(self.net_.encoder[0].in_features),
            "output": "sigmoid" if isinstance(self.net_.decoder[-1], torch.nn.Sigmoid) else "linear",
            "scale_min": self.scale_min_, "scale_max": None if self.scale_min_ is None
            else self.scale_min_ + self.scale_range_,
            "history": plain_history(self.history_),
        }

    def _set_state(self, state: dict[str, Any]) -> None:
        # models saved before the output layer followed each original had a sigmoid output
        net = ARAENet(state["input_dim"], tuple(self.hidden), self.latent, self.activation_,
                      state.get("output", "sigmoid"))
        self.net_ = self._restore_net(net, state["net"])
        self._set_scale(state["scale_min"], state["scale_max"])
        self.history_ = plain_history(state["history"])


def _is_rows(feats: Sequence[np.ndarray]) -> bool:
    """True for one vector per clip (``fit_arrays`` rows), False for log-mels; never a mixture."""
    dims = {np.ndim(f) for f in feats}
    if len(dims) > 1 or not dims <= {1, 2}:
        raise ValueError(f"arae: features must all be vectors (dim,) or all log-mels (frames, mels), "
                         f"got arrays of {sorted(dims)} dimensions")
    return dims == {1}


def _check_unit_range(x: np.ndarray, where: str) -> None:
    if x.min() < 0 or x.max() > 1:
        raise ConfigError(f"{where}: inputs must lie in [0, 1] (got [{x.min():.3g}, {x.max():.3g}]); "
                          "pass scale='minmax' for other feature vectors")


def _as_matrix(x: np.ndarray, where: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or not len(x):
        raise ValueError(f"{where}: expected a non-empty (n, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise StethoError(f"{where}: inputs contain NaN or infinite values")
    return x
