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
import torch.nn.functional as F

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

    The random start is the original's: uniform noise in [−0.5, 0.5] per input, scaled down to
    norm ``eps`` where it is longer (on 784-d MNIST it almost always is: the start lies on the sphere).

    Clipping ``x + δ`` to the box moves every coordinate towards ``x`` (``x`` is inside the box),
    so the projection onto the ball followed by the clip stays in both sets.
    """
    x = x.detach()
    with torch.no_grad():
        z = encode(x)
    if random_start:  # as the original: uniform noise in [-0.5, 0.5]^dim, its norm capped at eps
        noise = _rand(x.shape, generator, x.device) - 0.5
        x_adv = (x + _l2_project(noise, eps)).clamp(lo, hi)
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


def _as_nchw(images: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Flattened rows ``(n, H·W[·C])`` as ``(n, C, H, W)``."""
    if len(image_shape) == 2:
        return images.reshape(len(images), 1, *image_shape)
    h, w, c = image_shape
    return images.reshape(len(images), h, w, c).permute(0, 3, 1, 2)


def _as_rows(images: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    if len(image_shape) == 2:
        return images.reshape(len(images), -1)
    return images.permute(0, 2, 3, 1).reshape(len(images), -1)


def affine_images(images: torch.Tensor, angles: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Rotate each image of ``images`` ``(n, C, H, W)`` by ``angles[i]`` degrees about its centre, then
    translate it by ``shifts[i] = (dy, dx)`` pixels (down, right); bilinear, uncovered pixels 0.

    The original code's spatial attack does the same with ``F.grid_sample`` (bilinear, zero
    padding, ``align_corners=True``); here the geometry is in pixel units, so non-square images
    rotate without shearing.
    """
    n, _, h, w = images.shape
    a = torch.deg2rad(angles.to(images.dtype))
    cos, sin = torch.cos(a), torch.sin(a)
    sx, sy = max(w - 1, 1) / 2.0, max(h - 1, 1) / 2.0
    # output pixel u (from the centre) samples input R⁻¹(u − t); in grid units u = S·g
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = sin * sy / sx
    theta[:, 1, 0] = -sin * sx / sy
    theta[:, 1, 1] = cos
    ty, tx = shifts[:, 0].to(images.dtype), shifts[:, 1].to(images.dtype)
    theta[:, 0, 2] = -(cos * tx + sin * ty) / sx
    theta[:, 1, 2] = -(-sin * tx + cos * ty) / sy
    grid = F.affine_grid(theta, list(images.shape), align_corners=True)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def transform_images(images: np.ndarray, angle: float, shift: tuple[float, float]) -> np.ndarray:
    """Rotate ``images`` ``(batch, H, W[, C])`` by ``angle`` degrees about their centres, then
    translate by ``shift = (dy, dx)`` pixels; uncovered pixels are 0 (the background)."""
    arr = np.asarray(images, dtype=np.float32)
    shape = arr.shape[1:]
    t = _as_nchw(torch.from_numpy(arr.reshape(len(arr), -1)), shape)
    n = len(arr)
    out = affine_images(t, torch.full((n,), float(angle)), torch.tensor([shift] * n, dtype=torch.float32))
    return _as_rows(out, shape).numpy().reshape(arr.shape)


#: The original's grid (MNIST-union/code.py): 31 rotations −30..30° in 2° steps × 3 × 3 translations
#: (−4, 0, 4 px on each axis) = 279 transforms.
DEFAULT_ANGLES = tuple(float(a) for a in np.linspace(-30, 30, 31))
DEFAULT_SHIFTS = (-4.0, 0.0, 4.0)


def spatial_grid(angles: Sequence[float] = DEFAULT_ANGLES,
                 shifts: Sequence[float] = DEFAULT_SHIFTS) -> list[tuple[float, tuple[float, float]]]:
    """Every (angle, (dy, dx)) of the grid, in a fixed order (angle-major)."""
    return [(float(a), (float(dy), float(dx))) for a, dy, dx in itertools.product(angles, shifts, shifts)]


def spatial_attack(
    encode: Encoder, x: torch.Tensor, image_shape: Sequence[int], transforms: Sequence[tuple[float, tuple[float, float]]],
    lo: float = 0.0, hi: float = 1.0, chunk: int = 4096,
) -> tuple[torch.Tensor, np.ndarray]:
    """Exhaustive spatial attack: per sample, the transform of ``transforms`` (from
    :func:`spatial_grid`) whose result is farthest from ``E(x)`` in latent space (the first such
    transform on ties).

    Transformed copies are made and encoded in chunks of about ``chunk`` images.

    Returns:
        ``(x', index)``: the worst transformed inputs ``(batch, dim)`` and the index of the
        transform chosen for each sample ``(batch,)``.
    """
    if not transforms:
        raise ValueError("spatial_attack needs at least one transform")
    x = x.detach()
    n = len(x)
    images = _as_nchw(x, image_shape)
    angles = torch.tensor([a for a, _ in transforms], dtype=x.dtype, device=x.device)
    shifts = torch.tensor([s for _, s in transforms], dtype=x.dtype, device=x.device)
    per = max(1, chunk // max(n, 1))
    best = x.clone()
    best_d = torch.full((n,), -1.0, device=x.device)
    chosen = torch.zeros(n, dtype=torch.int64, device=x.device)
    with torch.no_grad():
        z = encode(x)
        for s in range(0, len(transforms), per):
            k = min(per, len(transforms) - s)
            reps = images.repeat(k, 1, 1, 1)  # transform-major: rows j·n .. j·n + n − 1 are transform s + j
            cand = affine_images(reps, angles[s:s + k].repeat_interleave(n),
                                 shifts[s:s + k].repeat_interleave(n, dim=0))
            cand = _as_rows(cand, image_shape).clamp(lo, hi)
            d = latent_distance(encode(cand), z.repeat(k, 1)).reshape(k, n)
            top, arg = d.max(dim=0)  # the first maximum within the chunk
            better = top > best_d
            rows = (arg * n + torch.arange(n, device=x.device))[better]
            best[better] = cand[rows]
            best_d = torch.where(better, top, best_d)
            chosen[better] = arg[better] + s
    return best, chosen.cpu().numpy()
