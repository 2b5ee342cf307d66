"""BiGAN / EGBAD networks for log-mel patches (pure ``nn.Module``s, no training logic).

METHODS.md §5 (seed 001, after Zenati et al. 2018): encoder ``E: x → z``, generator
``G: z → x`` and discriminator ``D(z, x) → (logit, feature f)``. Patches are ``(batch, 1, T, M)``
with ``T`` frames (time, 64) and ``M`` mel bands (128); both must be divisible by 4 (two stride-2
stages). TensorFlow's ``padding="same"`` for the stride-2 layers is ``padding=1`` here (the
output sizes are the same; TF pads one row/column at the end only, torch one at each side).
Widths are arguments with the paper's values as defaults so that tests can use tiny networks.
"""

from __future__ import annotations

import torch
from torch import nn

LEAK = 0.1


def init_normal(module: nn.Module, std: float = 0.02) -> None:
    """Every conv/dense weight ~ N(0, std), biases 0; BatchNorm scale 1, shift 0 (the original's
    ``random_normal_initializer(stddev=0.02)`` for kernels)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_patch(frames: int, mels: int) -> None:
    if frames % 4 or mels % 4:
        raise ValueError(f"patch {frames}×{mels}: both sides must be divisible by 4")


class Encoder(nn.Module):
    """``E``: conv ``c0`` 3×3 s1 (leaky) → conv ``c1`` 3×3 s2 + BN (leaky) → conv ``c2`` 3×3 s2 +
    BN (leaky) → dense ``latent``. Leaky ReLU slope 0.1.

    Args:
        frames, mels: patch size (64 × 128).
        latent: size of z (200).
        channels: the three conv widths (32, 64, 128).
    """

    def __init__(self, frames: int = 64, mels: int = 128, latent: int = 200,
                 channels: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        _check_patch(frames, mels)
        c0, c1, c2 = channels
        self.convs = nn.Sequential(
            nn.Conv2d(1, c0, 3, 1, 1), nn.LeakyReLU(LEAK),
            nn.Conv2d(c0, c1, 3, 2, 1), nn.BatchNorm2d(c1), nn.LeakyReLU(LEAK),
            nn.Conv2d(c1, c2, 3, 2, 1), nn.BatchNorm2d(c2), nn.LeakyReLU(LEAK),
        )
        self.dense = nn.Linear(c2 * (frames // 4) * (mels // 4), latent)
        init_normal(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``z`` ``(batch, latent)`` of patches ``x`` ``(batch, 1, frames, mels)``."""
        return self.dense(self.convs(x).flatten(1))


class Generator(nn.Module):
    """``G``: dense ``hidden`` + BN + ReLU → dense ``c0·(T/4)·(M/4)`` + BN + ReLU → convT ``c1``
    4×4 s2 + BN + ReLU → convT 1 4×4 s2, tanh (output in [-1, 1]).

    Args:
        frames, mels: patch size (64 × 128).
        latent: size of z (200).
        hidden: first dense width (1024).
        channels: channels after the reshape and after the first transposed conv (128, 64).
    """

    def __init__(self, frames: int = 64, mels: int = 128, latent: int = 200, hidden: int = 1024,
                 channels: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        _check_patch(frames, mels)
        c0, c1 = channels
        self.shape = (c0, frames // 4, mels // 4)
        n = c0 * (frames // 4) * (mels // 4)
        self.dense = nn.Sequential(
            nn.Linear(latent, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, n), nn.BatchNorm1d(n), nn.ReLU(),
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(c0, c1, 4, 2, 1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, 2, 1), nn.Tanh(),
        )
        init_normal(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Patches ``(batch, 1, frames, mels)`` in [-1, 1] from ``z`` ``(batch, latent)``."""
        return self.deconvs(self.dense(z).view(len(z), *self.shape))


class Discriminator(nn.Module):
    """``D(z, x)``: x-path conv ``c`` 4×4 s2 (leaky, dropout) → conv ``c`` 4×4 s2 + BN (leaky,
    dropout) → flatten; z-path dense ``z_hidden`` (leaky, dropout); concatenation → dense
    ``feature`` (leaky, dropout) = the feature layer ``f`` → dense 1 (logit).

    Args:
        frames, mels: patch size (64 × 128).
        latent: size of z (200).
        channels: x-path conv width (64).
        z_hidden: z-path width (512).
        feature: width of the feature layer f (1024).
        dropout: dropout rate (0.5), active in training mode only.
    """

    def __init__(self, frames: int = 64, mels: int = 128, latent: int = 200, channels: int = 64,
                 z_hidden: int = 512, feature: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        _check_patch(frames, mels)
        self.x_path = nn.Sequential(
            nn.Conv2d(1, channels, 4, 2, 1), nn.LeakyReLU(LEAK), nn.Dropout(dropout),
            nn.Conv2d(channels, channels, 4, 2, 1), nn.BatchNorm2d(channels), nn.LeakyReLU(LEAK),
            nn.Dropout(dropout), nn.Flatten(),
        )
        self.z_path = nn.Sequential(nn.Linear(latent, z_hidden), nn.LeakyReLU(LEAK), nn.Dropout(dropout))
        self.joint = nn.Sequential(
            nn.Linear(channels * (frames // 4) * (mels // 4) + z_hidden, feature), nn.LeakyReLU(LEAK),
            nn.Dropout(dropout),
        )
        self.logit = nn.Linear(feature, 1)
        init_normal(self)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logit (batch,), f (batch, feature))`` for pairs ``(z, x)``."""
        f = self.joint(torch.cat([self.x_path(x), self.z_path(z)], dim=1))
        return self.logit(f).squeeze(1), f


class BiGAN(nn.Module):
    """The three networks together (one state dict, one EMA copy)."""

    def __init__(self, frames: int = 64, mels: int = 128, latent: int = 200,
                 enc_channels: tuple[int, int, int] = (32, 64, 128), gen_hidden: int = 1024,
                 gen_channels: tuple[int, int] = (128, 64), dis_channels: int = 64, dis_z_hidden: int = 512,
                 dis_feature: int = 1024, dropout: float = 0.5) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = Encoder(frames, mels, latent, tuple(enc_channels))
        self.generator = Generator(frames, mels, latent, gen_hidden, tuple(gen_channels))
        self.discriminator = Discriminator(frames, mels, latent, dis_channels, dis_z_hidden, dis_feature, dropout)


@torch.no_grad()
def ema_update(ema: nn.Module, live: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·live`` for every parameter; buffers (BatchNorm running
    statistics, which are themselves averages) are copied from ``live``."""
    for e, p in zip(ema.parameters(), live.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for e, b in zip(ema.buffers(), live.buffers()):
        e.copy_(b)


def anomaly_scores(net: BiGAN, x: torch.Tensor, weight: float = 0.1, degree: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-patch EGBAD scores of ``x`` ``(batch, 1, T, M)`` with ``net`` as it is (eval mode for
    scoring): ``residual = ‖x − G(E(x))‖_p`` and

    * ``"fm"``: ``(1 − w)·residual + w·‖f(E(x), x) − f(E(x), G(E(x)))‖_p``
    * ``"cross-e"``: ``(1 − w)·residual + w·BCE(D(E(x), x), 1)`` (= softplus(−logit))

    with ``w = weight`` and ``p = degree`` (the original's ``tf.norm(ord=degree)`` on flattened
    vectors). Returns ``{"fm": (batch,), "cross-e": (batch,)}``.
    """
    z = net.encoder(x)
    rec = net.generator(z)
    logit_real, f_real = net.discriminator(z, x)
    _, f_rec = net.discriminator(z, rec)
    residual = torch.linalg.vector_norm((x - rec).flatten(1), ord=degree, dim=1)
    fm = torch.linalg.vector_norm(f_real - f_rec, ord=degree, dim=1)
    ce = nn.functional.softplus(-logit_real)  # BCE-with-logits against label 1
    return {"fm": (1 - weight) * residual + weight * fm, "cross-e": (1 - weight) * residual + weight * ce}
