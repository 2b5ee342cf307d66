"""Latent-space attacks on an encoder (METHODS.md §7): L∞ PGD, L2 PGD and a spatial search.

Every attack maximises the latent distance ``‖E(x') − E(x)‖²`` (sum over latent units, per
sample) and keeps ``x'`` inside its threat set and inside the box [``lo``, ``hi``] (the data range,
[0, 1] for images). Inputs are ``(batch, dim)`` tensors; results are detached. Gradients are taken
with respect to the input only, so the network's parameter gradients are never touched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

Encoder = Callable[[torch.Tensor], torch.Tensor]


def latent_distance(z_adv: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distance per sample ``(batch,)`` between latent codes ``(batch, latent)``."""
    return (z_adv - z).square().sum(dim=1)


def _rand(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


def linf_random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None,
                      lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """``x`` plus uniform noise in [−eps, eps], clipped to [lo, hi]."""
    return (x + (2 * _rand(x.shape, generator, x.device) - 1) * eps).clamp(lo, hi)


def linf_pgd(
    encode: Encoder, x: torch.Tensor, eps: float, steps: int, step_size: float | None = None,
    random_start: bool = True, generator: torch.Generator | None = None, lo: float = 0.0, hi: float = 1.0,
) -> torch.Tensor:
    """L∞ PGD in latent space: ``x'`` with ``‖x' − x‖∞ ≤ eps`` maximising ``‖E(x') − E(x)‖²``.

    Args:
        encode: the encoder ``(batch, dim) → (batch, latent)``.
        x: clean inputs ``(batch, dim)`` in [lo, hi].
        eps: radius of the L∞ ball (input units).
        steps: number of signed-gradient steps K.
        step_size: step per iteration; default ``2.5 · eps / steps`` (the seed's rule).
        random_start: start from a uniform point of the ball (else from ``x``).
        generator: seeds the random start.
        lo, hi: the data box.
    """
    step = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    with torch.no_grad():
        z = encode(x)
    x_adv = linf_random_start(x, eps, generator, lo, hi) if random_start else x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        dist = latent_distance(encode(x_adv), z).sum()
        (grad,) = torch.autograd.grad(dist, x_adv)
        with torch.no_grad():
            x_adv = x_adv + step * grad.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(lo, hi)
    return x_adv.detach()


def _l2_project(delta: torch.Tensor, eps: float) -> torch.Tensor:
    norm = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return delta * (eps / norm).clamp(max=1.0)


def l2_pgd(
    encode: Encoder, x: torch.Tensor, eps: float, steps: int, step_size: float,
    random_start: bool = True, generator: torch.Generator | None = None, lo: float = 0.0, hi: float = 1.0,
) -> torch.Tensor:
    """L2 PGD in latent space: ``‖x' − x‖₂ ≤ eps`` per sample, normalised-gradient steps.

    Clipping ``x + δ`` to the box moves every coordinate towards ``x`` (``x`` is inside the box),
    so the projection onto the ball followed by the clip stays in both sets.
    """
    x = x.detach()
    with torch.no_grad():
        z = encode(x)
    if random_start:
        direction = torch.randn(x.shape, generator=generator).to(x.device)
        radius = eps * _rand((len(x), 1), generator, x.device)
        x_adv = (x + _l2_project(direction, 1.0) * radius).clamp(lo, hi)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        dist = latent_distance(encode(x_adv), z).sum()
        (grad,) = torch.autograd.grad(dist, x_adv)
        with torch.no_grad():
            g = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
            x_adv = (x + _l2_project(x_adv + step_size * g - x, eps)).clamp(lo, hi)
    return x_adv.detach()


def transform_images(images: np.ndarray, angle: float, shift: tuple[float, float]) -> np.ndarray:
    """Rotate ``images`` ``(batch, H, W[, C])`` by ``angle`` degrees about their centres, then
    translate by ``shift = (dy, dx)`` pixels; uncovered pixels are 0 (the background)."""
    out = images
    if angle:
        out = ndimage.rotate(out, angle, axes=(2, 1), reshape=False, order=1, mode="constant", cval=0.0)
    if shift[0] or shift[1]:
        offset = (0, shift[0], shift[1]) + (0,) * (images.ndim - 3)
        out = ndimage.shift(out, offset, order=0, mode="constant", cval=0.0)
    return out


def spatial_grid(angles: Sequence[float], shifts: Sequence[float]) -> list[tuple[float, tuple[float, float]]]:
    """Every (angle, (dy, dx)) of the grid, in a fixed order (angle-major)."""
    return [(float(a), (float(dy), float(dx))) for a, dy, dx in itertools.product(angles, shifts, shifts)]


def spatial_attack(
    encode: Encoder, x: torch.Tensor, image_shape: Sequence[int], transforms: Sequence[tuple[float, tuple[float, float]]],
    lo: float = 0.0, hi: float = 1.0,
) -> tuple[torch.Tensor, np.ndarray]:
    """Exhaustive spatial attack: per sample, the transform of ``transforms`` (from
    :func:`spatial_grid`) whose result is farthest from ``E(x)`` in latent space.

    Returns:
        ``(x', index)``: the worst transformed inputs ``(batch, dim)`` and the index of the
        transform chosen for each sample ``(batch,)``.
    """
    if not transforms:
        raise ValueError("spatial_attack needs at least one transform")
    x = x.detach()
    images = x.cpu().numpy().reshape(len(x), *image_shape)
    best = x.clone()
    best_d = torch.full((len(x),), -1.0, device=x.device)
    chosen = np.zeros(len(x), dtype=np.int64)
    with torch.no_grad():
        z = encode(x)
        for k, (angle, shift) in enumerate(transforms):
            cand = np.clip(transform_images(images, angle, shift), lo, hi).reshape(len(x), -1)
            cand_t = torch.from_numpy(cand.astype(np.float32)).to(x.device)
            d = latent_distance(encode(cand_t), z)
            better = d > best_d
            best[better] = cand_t[better]
            best_d = torch.where(better, d, best_d)
            chosen[better.cpu().numpy()] = k
    return best, chosen
