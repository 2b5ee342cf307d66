"""The ``stats`` detector's scoring of one machine type as one pure-torch module, for export
(:meth:`StatsDetector.export_module`).

Waveform -> log-mel (:class:`~stetho.models.export_modules.LogMelModule`) -> the clip's
statistics (:func:`~stetho.models.stats.detector.clip_statistics`, float64) -> standardised with
the machine type's training mean and std -> every score mode's backend, Euclidean as the detector
fits them (:mod:`stetho.backends.embedding`), the fitted statistics as float64 buffers: ``density``
(distance to the nearest training clip over its radius), ``knn`` (mean distance to the ``k``
nearest clips of a domain, minimum over domains), ``mahalanobis`` (minimum over domains) and
``gmm`` (negative log-likelihood under the diagonal Gaussian mixture).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from stetho.backends import DensityBackend, GMMBackend, KNNBackend, MahalanobisBackend
from stetho.errors import ExportError
from stetho.features.logmel import LogMelParams
from stetho.models.export_modules import LogMelModule


def _buffer(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def euclidean(x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """``(n, m)`` Euclidean distances, computed as :func:`stetho.backends.embedding.distances` does."""
    sq = (x * x).sum(1).unsqueeze(1) + (memory * memory).sum(1).unsqueeze(0) - 2.0 * x @ memory.T
    return torch.sqrt(torch.clamp(sq, min=0.0))


class KNNDomain(nn.Module):
    """One domain of :class:`~stetho.backends.KNNBackend`: mean distance to the ``k`` nearest rows."""

    def __init__(self, memory: np.ndarray, k: int) -> None:
        super().__init__()
        self.register_buffer("memory", _buffer(memory))
        self.k = int(min(k, len(memory)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.topk(euclidean(x, self.memory), self.k, dim=1, largest=False).values.mean(dim=1)


class KNNScore(nn.Module):
    """:class:`~stetho.backends.KNNBackend` (Euclidean): minimum over domains."""

    def __init__(self, backend: KNNBackend) -> None:
        super().__init__()
        self.domains = nn.ModuleList(KNNDomain(m, backend.k) for m in backend.memory_.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for dom in self.domains:
            out.append(dom(x))
        return torch.stack(out).min(dim=0).values


class MahalanobisScore(nn.Module):
    """:class:`~stetho.backends.MahalanobisBackend` (not normalised): min over domains of
    ``(x - mean_d)ᵀ P_d (x - mean_d)``."""

    def __init__(self, backend: MahalanobisBackend) -> None:
        super().__init__()
        if backend.normalize:
            raise ExportError("stats: a mahalanobis backend of normalised vectors has no export (Euclidean only)")
        domains = list(backend.means_)
        self.register_buffer("means", _buffer(np.stack([backend.means_[d] for d in domains])))
        self.register_buffer("precisions", _buffer(np.stack([backend.precisions_[d] for d in domains])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = x.unsqueeze(0) - self.means.unsqueeze(1)  # (domains, n, d)
        return (torch.matmul(e, self.precisions) * e).sum(dim=2).min(dim=0).values


class DensityScore(nn.Module):
    """:class:`~stetho.backends.DensityBackend` (Euclidean): nearest distance over that row's radius."""

    def __init__(self, backend: DensityBackend) -> None:
        super().__init__()
        self.register_buffer("memory", _buffer(backend.memory_))
        self.register_buffer("radius", _buffer(backend.radius_))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nearest = euclidean(x, self.memory).min(dim=1)
        return nearest.values / self.radius[nearest.indices]


class GMMScore(nn.Module):
    """:class:`~stetho.backends.GMMBackend` with diagonal covariances: ``-log p(x)``, computed as
    scikit-learn's ``GaussianMixture.score_samples`` computes it."""

    def __init__(self, backend: GMMBackend) -> None:
        super().__init__()
        g = backend.gmm_
        if backend.covariance_type != "diag" or backend.normalize:
            raise ExportError(f"stats: a gmm backend with {backend.covariance_type} covariances"
                              f"{' of normalised vectors' if backend.normalize else ''} has no export "
                              "(diagonal covariances of the vectors as they are only)")
        prec_chol = np.asarray(g.precisions_cholesky_, dtype=np.float64)  # (components, d)
        precisions = prec_chol ** 2
        means = np.asarray(g.means_, dtype=np.float64)
        self.register_buffer("precisions", _buffer(precisions))
        self.register_buffer("scaled_means", _buffer(means * precisions))
        self.register_buffer("means_term", _buffer((means ** 2 * precisions).sum(1)))
        self.register_buffer("log_det", _buffer(np.log(prec_chol).sum(1)))
        self.register_buffer("log_weights", _buffer(np.log(g.weights_)))
        self.log_2pi_d = float(means.shape[1] * math.log(2 * math.pi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_prob = self.means_term.unsqueeze(0) - 2.0 * x @ self.scaled_means.T + (x * x) @ self.precisions.T
        weighted = -0.5 * (self.log_2pi_d + log_prob) + self.log_det.unsqueeze(0) + self.log_weights.unsqueeze(0)
        return -torch.logsumexp(weighted, dim=1)


BACKEND_MODULES = {"density": DensityScore, "knn": KNNScore, "mahalanobis": MahalanobisScore, "gmm": GMMScore}


class StatsScoreModule(nn.Module):
    """Waveform -> the ``stats`` scores of one machine type (see the module docstring).

    ``forward(waveform (n_samples,) float32, section () int64) -> (n_modes,) float32`` in
    ``modes`` order; ``section`` is unused (one set of backends per machine type).

    Args:
        params: the log-mel settings.
        statistics: ``mean_std`` or ``mean_std_delta``.
        mean, std: the machine type's standardisation of the clip statistics.
        backends: the fitted backend of every score mode, in output order.
    """

    def __init__(self, params: LogMelParams, statistics: str, mean: np.ndarray, std: np.ndarray,
                 backends: dict[str, object]) -> None:
        super().__init__()
        self.logmel = LogMelModule(params)
        self.delta = statistics == "mean_std_delta"
        self.register_buffer("mean", _buffer(mean))
        self.register_buffer("std", _buffer(std))
        self.backends = nn.ModuleList(BACKEND_MODULES[mode](b) for mode, b in backends.items())

    def forward(self, waveform: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        x = self.logmel(waveform).double()  # (frames, mels)
        parts = [x.mean(dim=0), x.std(dim=0, correction=0)]
        if self.delta:  # np.gradient along time: one-sided at the ends, central inside
            d = torch.cat([x[1:2] - x[0:1], (x[2:] - x[:-2]) / 2.0, x[-1:] - x[-2:-1]], dim=0)
            parts += [d.mean(dim=0), d.std(dim=0, correction=0)]
        z = ((torch.cat(parts) - self.mean) / self.std).unsqueeze(0)
        out = []
        for backend in self.backends:
            out.append(backend(z)[0])
        return torch.stack(out).float()


__all__ = ["StatsScoreModule"]
