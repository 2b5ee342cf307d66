"""The DCASE2023 Task 2 baseline autoencoder network (pure ``nn.Module``, no training logic)."""

from __future__ import annotations

import torch
from torch import nn


class AENet(nn.Module):
    """Dense autoencoder ``640→128→128→128→128→8→128→128→128→128→640``.

    Every Linear but the last is followed by BatchNorm1d(momentum 0.01, eps 1e-3) and ReLU (the
    bottleneck too); the output layer is linear. Keras' BatchNormalization(momentum=0.99) is
    torch's momentum 0.01.

    Args:
        input_dim: input size (n_mels × n_frames, 640 for the baseline).
        hidden: width of the hidden layers.
        bottleneck: latent size.
        n_hidden: hidden layers on each side of the bottleneck.
    """

    def __init__(self, input_dim: int = 640, hidden: int = 128, bottleneck: int = 8, n_hidden: int = 4) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Linear(i, o), nn.BatchNorm1d(o, momentum=0.01, eps=1e-3), nn.ReLU()]

        enc: list[nn.Module] = []
        dims = [input_dim] + [hidden] * n_hidden
        for i, o in zip(dims[:-1], dims[1:]):
            enc += block(i, o)
        enc += block(hidden, bottleneck)
        dec: list[nn.Module] = []
        dims = [bottleneck] + [hidden] * n_hidden
        for i, o in zip(dims[:-1], dims[1:]):
            dec += block(i, o)
        dec.append(nn.Linear(hidden, input_dim))
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` ``(batch, input_dim)``."""
        return self.decoder(self.encoder(x))
