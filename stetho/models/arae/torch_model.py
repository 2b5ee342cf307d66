"""The ARAE autoencoder network (pure ``nn.Module``, no training logic; METHODS.md §7)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
OUTPUTS = ("sigmoid", "linear")


class ARAENet(nn.Module):
    """Dense autoencoder ``input → hidden… → latent → …hidden → input`` (784→512→256→128→256→512→784).

    As in the original code (rohban-lab/Salehi_submitted_2020): the L∞ ARAE (Keras ``train.py``)
    has sigmoid activations after every layer, the latent and the output layer included; the
    union model (PyTorch ``MNIST-union/code.py``) has ReLU in the hidden and latent layers and a
    *linear* output layer. Weights are Glorot-normal, biases zero, in both.

    Args:
        input_dim: input size (784 for 28×28 images, 64 for 8×8 digits, 640 for DCASE frames).
        hidden: widths of the encoder's hidden layers (the decoder mirrors them).
        latent: latent size.
        activation: ``"sigmoid"`` or ``"relu"`` (hidden and latent layers).
        output: ``"sigmoid"`` or ``"linear"`` (the output layer).
    """

    def __init__(self, input_dim: int = 784, hidden: Sequence[int] = (512, 256), latent: int = 128,
                 activation: str = "sigmoid", output: str = "sigmoid") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
        act = ACTIVATIONS[activation]
        dims = [input_dim, *hidden, latent]
        enc: list[nn.Module] = []
        for i, o in zip(dims[:-1], dims[1:]):
            enc += [nn.Linear(i, o), act()]
        rdims = dims[::-1]
        dec: list[nn.Module] = []
        for i, o in zip(rdims[:-2], rdims[1:-1]):
            dec += [nn.Linear(i, o), act()]
        dec.append(nn.Linear(rdims[-2], rdims[-1]))
        if output == "sigmoid":
            dec.append(nn.Sigmoid())
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes ``(batch, latent)`` of ``x`` ``(batch, input_dim)``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` ``(batch, input_dim)``."""
        return self.decoder(self.encoder(x))
