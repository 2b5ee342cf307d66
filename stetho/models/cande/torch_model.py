"""CANDE-CP networks (METHODS.md §4; pure ``nn.Module``s, no training logic).

- :class:`PlainAE`: the per-context and unconditioned autoencoder ``320→64→64→8→64→64→320``.
- :class:`FiLMBlock` / :class:`FiLMAE`: the autoencoder conditioned on a context code ``c``
  (one-hot or a context embedding) by feature-wise linear modulation.
- :class:`ContextPredictor`: the frame classifier ``320→512→512→256→128→128→64→K`` whose 64-unit
  layer gives the context embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PlainAE(nn.Module):
    """Dense autoencoder ``input→hidden→hidden→bottleneck→hidden→hidden→input``.

    ReLU after every layer but the last (the bottleneck too); the output layer is linear; no
    normalisation layers.

    Args:
        input_dim: input size (n_mels × n_frames: 64 × 5 = 320).
        hidden: width of the hidden layers (64).
        bottleneck: latent size (8).
    """

    def __init__(self, input_dim: int = 320, hidden: int = 64, bottleneck: int = 8) -> None:
        super().__init__()
        dims = [input_dim, hidden, hidden, bottleneck, hidden, hidden]
        layers: list[nn.Module] = []
        for i, o in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(i, o), nn.ReLU()]
        layers.append(nn.Linear(hidden, input_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` ``(batch, input_dim)``."""
        return self.layers(x)


class FiLMBlock(nn.Module):
    """A dense layer modulated by a context code: ``h = ReLU(W x + b)``,
    ``γ = A_γ c + a_γ``, ``β = A_β c + a_β``, output ``ReLU(γ ⊙ h + β)``.

    The modulation acts on the layer's activations (after its ReLU), followed by a second ReLU.

    Args:
        in_dim: input size.
        out_dim: output size (and size of γ, β).
        context_dim: size of the context code ``c``.
    """

    def __init__(self, in_dim: int, out_dim: int, context_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.gamma = nn.Linear(context_dim, out_dim)
        self.beta = nn.Linear(context_dim, out_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, in_dim)``, ``c`` ``(batch, context_dim)`` → ``(batch, out_dim)``."""
        h = torch.relu(self.linear(x))
        return torch.relu(self.gamma(c) * h + self.beta(c))


class FiLMAE(nn.Module):
    """The FiLM-conditioned autoencoder: first layer ``input→hidden`` plain (Linear + ReLU); the
    next four (``hidden→hidden``, ``hidden→bottleneck``, ``bottleneck→hidden``, ``hidden→hidden``)
    are :class:`FiLMBlock` s conditioned on ``c``; the last ``hidden→input`` is plain linear.

    Args:
        input_dim: input size (320).
        context_dim: size of the context code (the number of contexts for one-hot codes, the
            embedding size (64) for embedding codes).
        hidden: hidden width (64).
        bottleneck: latent size (8).
    """

    def __init__(self, input_dim: int = 320, context_dim: int = 16, hidden: int = 64, bottleneck: int = 8) -> None:
        super().__init__()
        self.first = nn.Linear(input_dim, hidden)
        dims = [hidden, hidden, bottleneck, hidden, hidden]
        self.blocks = nn.ModuleList(FiLMBlock(i, o, context_dim) for i, o in zip(dims[:-1], dims[1:]))
        self.last = nn.Linear(hidden, input_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` ``(batch, input_dim)`` given codes ``c`` ``(batch, context_dim)``."""
        h = torch.relu(self.first(x))
        for block in self.blocks:
            h = block(h, c)
        return self.last(h)


class ContextPredictor(nn.Module):
    """MLP frame classifier ``input→hidden[0]→…→hidden[-1]→n_contexts``, ReLU between layers.

    The paper's widths are ``(512, 512, 256, 128, 128, 64)``; the last hidden layer's
    pre-activation output (:meth:`embed`) is what the context embedding table averages.

    Args:
        input_dim: input size (320).
        n_contexts: number of classes.
        hidden: hidden widths; the last one is the embedding size.
    """

    def __init__(self, input_dim: int = 320, n_contexts: int = 16,
                 hidden: Sequence[int] = (512, 512, 256, 128, 128, 64)) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("the context predictor needs at least one hidden layer")
        dims = [input_dim, *hidden]
        body: list[nn.Module] = []
        for i, o in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(i, o), nn.ReLU()]
        # Everything up to the embedding layer's Linear (its ReLU excluded): embed() stops there.
        self.body = nn.Sequential(*body[:-1])
        self.head = nn.Linear(hidden[-1], n_contexts)

    @property
    def embedding_dim(self) -> int:
        return self.head.in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output of the last hidden layer ``(batch, hidden[-1])``."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Context logits ``(batch, n_contexts)``."""
        return self.head(torch.relu(self.embed(x)))
