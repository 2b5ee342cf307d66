"""Training-time augmentations of the discriminative models (seed 002 settings).

- :func:`mixup`: per sample, with probability ``prob``, ``x ← λx + (1−λ)x[perm]`` and the
  one-hot labels mixed with the same ``λ ~ U(0, 1)`` and partner (``perm`` a random permutation
  of the batch, which may map a sample to itself). On waveforms, before the network.
- :func:`feature_exchange` (FeatEx, Wilkinghoff 2024): per sample, with probability ``prob``,
  every branch embedding is taken from an independent random partner; such a sample's label
  lives in the extra blocks of a ``(1 + n_branches)·C`` label space: ``[0; y_p1/n; ...; y_pn/n]``,
  an untouched one keeps ``[y; 0; ...; 0]``. The model must tell real from exchanged
  combinations, which sharpens the joint embedding.
"""

from __future__ import annotations

import torch


def mixup(
    x: torch.Tensor, y: torch.Tensor, prob: float = 0.5, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed inputs ``(B, ...)`` and soft labels ``(B, C)``; see the module docstring.

    The random draws (which samples, λ, partners) come from ``generator`` on the CPU, so a seed
    fixes them on every device.
    """
    b = x.shape[0]
    if b == 0 or prob <= 0:
        return x, y
    apply = (torch.rand(b, generator=generator) < prob).float()
    lam = torch.rand(b, generator=generator) * apply + (1.0 - apply)  # λ = 1 where not mixed
    perm = torch.randperm(b, generator=generator)
    lam, perm = lam.to(x.device), perm.to(x.device)
    lx = lam.view(b, *([1] * (x.dim() - 1)))
    ly = lam.view(b, 1)
    return lx * x + (1 - lx) * x[perm], ly * y + (1 - ly) * y[perm]


def feature_exchange(
    parts: list[torch.Tensor], y: torch.Tensor, prob: float = 0.5, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint embeddings ``(B, n·d)`` with exchanged branches and labels ``(B, (1 + n)·C)``."""
    b, n = y.shape[0], len(parts)
    exchange = (torch.rand(b, generator=generator) < prob).to(y.device)
    perms = [torch.randperm(b, generator=generator).to(y.device) for _ in parts]
    mixed = [torch.where(exchange.unsqueeze(1), p[perm], p) for p, perm in zip(parts, perms)]
    keep = torch.where(exchange.unsqueeze(1), torch.zeros_like(y), y)
    blocks = [keep] + [torch.where(exchange.unsqueeze(1), y[perm] / n, torch.zeros_like(y)) for perm in perms]
    return torch.cat(mixed, dim=1), torch.cat(blocks, dim=1)
