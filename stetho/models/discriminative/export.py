"""The discriminative detector of one machine type as one pure-torch scoring module (issue 21).

:class:`DiscriminativeScorer` takes a clip's raw mono waveform (float32 ``(n_samples,)`` at the
detector's sample rate, any length ≥ 1) and returns its anomaly score in every score mode
(float32 ``(n_modes,)``, ``DiscriminativeDetector.score_modes`` order), equal to what
:meth:`DiscriminativeDetector.score_all` gives for that clip. Everything the detector does is
inside, as tensor operations that ``torch.export`` / ONNX (opset 18: ``STFT`` and ``DFT`` for the
spectra, ``TopK`` for kNN) and TorchScript can record with a free clip length:

1. the waveform on the 16-bit grid the detector's :class:`WaveBank` keeps (clip, round, scale);
2. the test crops (:meth:`DiscriminativeDetector._crop_starts`: tiles a short clip, cuts a long
   one into crops ``test_hop`` of a tile apart, starts rounded in float64 as numpy does);
3. per ensemble epoch, the network (its own multi-resolution front end: ``|rfft|`` of the tile
   and magnitude STFTs), the L2-normalised crop embeddings averaged and normalised again (in
   float64). In the ONNX graph, the FFT branch's ``|rfft|`` of a tile whose length is not a
   power of two goes through power-of-two FFTs (:class:`BluesteinMagnitude`): onnxruntime
   transforms other lengths by a slow, inexact direct sum;
4. that epoch's backends of the machine type, fitted statistics as buffers (float64): k-means
   centres, kNN memories, Mahalanobis means and precision matrices, density memory and radii,
   the domain-normalised variants with their scales;
5. the mean over the ensemble epochs.

:meth:`DiscriminativeScorer.spectrum_input` gives the same scoring after the front end
(:class:`SpectraScorer`: steps 3-5 from every crop's branch spectra, which the edge scorer
computes in numpy, ``stetho.edge.crop_spectra``): onnxruntime's ``STFT`` and the Bluestein
``|rfft|`` are far slower than numpy's FFTs.

The torch backends mirror :mod:`stetho.backends.embedding` (pure numpy, unchanged) one to one;
:func:`torch_backend` builds one from a fitted numpy backend.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from stetho.backends import (
    DensityBackend, DomainNormalized, EmbeddingBackend, KMeansBackend, KNNBackend, MahalanobisBackend, l2_normalize,
)
from stetho.errors import StethoError
from stetho.models.discriminative.torch_model import FFTBranch, MultiResolutionNet, STFTBranch


def _l2n(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` ``(n, d)`` scaled to unit length, norms floored at 1e-12
    (:func:`stetho.backends.l2_normalize`)."""
    return x / torch.clamp(torch.linalg.vector_norm(x, dim=-1, keepdim=True), min=1e-12)


def _distances(x: torch.Tensor, memory: torch.Tensor, cosine: bool) -> torch.Tensor:
    """``(n, m)`` distances of the rows of ``x`` to the rows of ``memory`` (kept unit length for
    cosine): ``1 - cos`` or Euclidean (:func:`stetho.backends.embedding.distances`)."""
    if cosine:
        return 1.0 - _l2n(x) @ memory.T
    sq = (x * x).sum(1).unsqueeze(1) + (memory * memory).sum(1).unsqueeze(0) - 2.0 * x @ memory.T
    return torch.sqrt(torch.clamp(sq, min=0.0))


def _buffer(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _cosine(metric: str, what: str) -> bool:
    if metric not in ("cosine", "euclidean"):
        raise StethoError(f"{what}: metric {metric!r} cannot be exported (cosine or euclidean)")
    return metric == "cosine"


class KMeansScore(nn.Module):
    """:class:`KMeansBackend`: smallest cosine distance to a centre; ``centres`` ``(m, d)``."""

    def __init__(self, centres: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("centres", _buffer(l2_normalize(centres)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1.0 - _l2n(x) @ self.centres.T).min(dim=1).values


class KNNDomainScore(nn.Module):
    """One domain of :class:`KNNBackend`: mean distance to the ``k`` nearest rows of ``memory``."""

    def __init__(self, memory: np.ndarray, k: int, cosine: bool) -> None:
        super().__init__()
        self.register_buffer("memory", _buffer(l2_normalize(memory) if cosine else memory))
        self.k = int(min(k, len(memory)))
        self.cosine = cosine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = _distances(x, self.memory, self.cosine)
        return torch.topk(d, self.k, dim=1, largest=False, sorted=True).values.mean(dim=1)


class KNNScore(nn.Module):
    """:class:`KNNBackend`: the minimum over domains of :class:`KNNDomainScore`."""

    def __init__(self, backend: KNNBackend) -> None:
        super().__init__()
        cosine = _cosine(backend.metric, "knn backend")
        self.domains = nn.ModuleList(KNNDomainScore(m, backend.k, cosine) for m in backend.memory_.values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for dom in self.domains:
            out.append(dom(x))
        return torch.stack(out).min(dim=0).values


class MahalanobisScore(nn.Module):
    """:class:`MahalanobisBackend`: min over domains of ``(x - mean_d)ᵀ P_d (x - mean_d)``;
    ``means`` ``(D, d)``, ``precisions`` ``(D, d, d)``."""

    def __init__(self, backend: MahalanobisBackend) -> None:
        super().__init__()
        domains = list(backend.means_)
        self.register_buffer("means", _buffer(np.stack([backend.means_[d] for d in domains])))
        self.register_buffer("precisions", _buffer(np.stack([backend.precisions_[d] for d in domains])))
        self.normalize = bool(backend.normalize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = _l2n(x)
        e = x.unsqueeze(0) - self.means.unsqueeze(1)                # (D, n, d)
        return (torch.matmul(e, self.precisions) * e).sum(dim=2).min(dim=0).values


class DensityScore(nn.Module):
    """:class:`DensityBackend`: distance to the nearest training row over that row's radius."""

    def __init__(self, backend: DensityBackend) -> None:
        super().__init__()
        self.cosine = _cosine(backend.metric, "density backend")
        self.register_buffer("memory", _buffer(l2_normalize(backend.memory_) if self.cosine else backend.memory_))
        self.register_buffer("radius", _buffer(backend.radius_))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nearest = _distances(x, self.memory, self.cosine).min(dim=1)
        return nearest.values / self.radius[nearest.indices]


class DomainNormalizedScore(nn.Module):
    """:class:`DomainNormalized` (``kmeans_norm``, ``knn_norm``): min over domains of the domain's
    backend score over its scale."""

    def __init__(self, backend: DomainNormalized) -> None:
        super().__init__()
        domains = list(backend.backends_)
        self.inner = nn.ModuleList(torch_backend(backend.backends_[d]) for d in domains)
        self.register_buffer("scales", _buffer(np.array([backend.scales_[d] for d in domains])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i, be in enumerate(self.inner):
            out.append(be(x) / self.scales[i])
        return torch.stack(out).min(dim=0).values


def torch_backend(backend: EmbeddingBackend) -> nn.Module:
    """The torch module scoring float64 embeddings ``(n, d)`` → ``(n,)`` as the fitted numpy
    ``backend`` does, its statistics as buffers.

    Raises:
        StethoError: a backend without a torch form (``gmm``: not a score mode of the
            embedding detectors) or an unfitted one.
    """
    fitted = {KMeansBackend: "centres_", KNNBackend: "memory_", MahalanobisBackend: "precisions_",
              DensityBackend: "radius_", DomainNormalized: "scales_"}
    kind = type(backend)
    if kind not in fitted:
        raise StethoError(f"backend {backend.name or kind.__name__!r} has no exportable torch form "
                          f"(exportable: kmeans, knn, mahalanobis, density, kmeans_norm, knn_norm)")
    if not hasattr(backend, fitted[kind]):
        raise StethoError(f"backend {backend.name!r} is not fitted: nothing to export")
    if kind is KMeansBackend:
        return KMeansScore(backend.centres_)
    if kind is KNNBackend:
        return KNNScore(backend)
    if kind is MahalanobisBackend:
        return MahalanobisScore(backend)
    if kind is DensityBackend:
        return DensityScore(backend)
    return DomainNormalizedScore(backend)


class BluesteinMagnitude(nn.Module):
    """``|rfft(x)|`` of rows of a fixed length ``n`` ``(batch, n)`` → ``(batch, n // 2 + 1)``,
    computed with FFTs of a power-of-two length ``m >= 2n - 1`` (Bluestein's chirp-z algorithm).

    onnxruntime's ``DFT`` of a length that is not a power of two is a direct O(n²) sum in float32
    (72,000 points: 0.7 s and 5e-3 relative error, against 2e-7 of a power-of-two length); the
    FFT branch's input (the tile, 288,000 samples in the paper) is such a length. With
    ``nk = (n² + k² - (k - n)²) / 2``, ``X_k = c_k Σ_n (x_n c_n) conj(c_{k-n})`` for the chirp
    ``c_n = exp(-iπ n² / N)``: a circular convolution of length ``m``, and ``|X_k|`` is the
    convolution's magnitude (``|c_k| = 1``). The chirp and the transform of the convolution
    kernel are float64-computed constants (buffers)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = int(n)
        self.m = 1 << (2 * self.n - 2).bit_length()
        k = np.arange(self.n, dtype=np.int64)
        chirp = np.exp(-1j * np.pi * ((k * k) % (2 * self.n)) / self.n)  # n² mod 2N: exact angles
        kernel = np.zeros(self.m, dtype=np.complex128)
        kernel[:self.n] = np.conj(chirp)
        kernel[self.m - self.n + 1:] = np.conj(chirp[1:][::-1])
        spectrum = np.fft.fft(kernel)
        self.register_buffer("chirp", torch.from_numpy(np.stack([chirp.real, chirp.imag], -1).astype(np.float32)))
        self.register_buffer("kernel", torch.from_numpy(np.stack([spectrum.real, spectrum.imag], -1)
                                                        .astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.unsqueeze(-1) * self.chirp                                       # (B, n, 2)
        a = nn.functional.pad(a, (0, 0, 0, self.m - self.n))
        spec = torch.view_as_real(torch.fft.fft(torch.view_as_complex(a), dim=-1))
        re, im = spec[..., 0], spec[..., 1]
        k_re, k_im = self.kernel[:, 0], self.kernel[:, 1]
        prod = torch.stack([re * k_re - im * k_im, re * k_im + im * k_re], dim=-1)
        conv = torch.view_as_real(torch.fft.ifft(torch.view_as_complex(prod), dim=-1))[:, :self.n // 2 + 1]
        return torch.sqrt(conv[..., 0] * conv[..., 0] + conv[..., 1] * conv[..., 1])


@torch.jit.unused
def _exporting() -> bool:
    return torch.compiler.is_exporting()


class ExportFFTBranch(nn.Module):
    """An :class:`FFTBranch` (its own layers) whose ``|rfft|`` of the tile is ``spectrum`` (a
    :class:`BluesteinMagnitude`, see there why) while ``torch.export`` records it for ONNX;
    run eagerly or as TorchScript it is ``torch.fft.rfft``, exactly as in training."""

    def __init__(self, branch: FFTBranch, spectrum: nn.Module) -> None:
        super().__init__()
        self.conv = branch.conv
        self.dense = branch.dense
        self.spectrum = spectrum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            spec = torch.fft.rfft(x, dim=-1).abs()
        elif _exporting():
            spec = self.spectrum(x)
        else:
            spec = torch.fft.rfft(x, dim=-1).abs()
        return self.dense(self.conv(spec.unsqueeze(1)).flatten(1))


def _exportable(net: MultiResolutionNet, spectrum: nn.Module | None) -> MultiResolutionNet:
    """A copy of ``net`` (CPU, float32, eval) whose FFT branches take their spectrum from
    ``spectrum`` (``None``: ``torch.fft.rfft`` as in training, for a power-of-two tile)."""
    net = copy.deepcopy(net).cpu().float().eval()
    if spectrum is not None:
        for i, branch in enumerate(net.branches):
            if isinstance(branch, FFTBranch):
                net.branches[i] = ExportFFTBranch(branch, spectrum).eval()
    return net


class EpochScorer(nn.Module):
    """One ensemble epoch: the network, the clip embedding from its crops, every mode's backend."""

    def __init__(self, net: MultiResolutionNet, backends: Sequence[nn.Module]) -> None:
        super().__init__()
        self.net = net
        self.backends = nn.ModuleList(backends)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Scores ``(n_modes,)`` float64 of the clip whose crops are ``crops`` ``(n_crops, tile)``."""
        emb = _l2n(self.net(crops)[0].to(torch.float64))
        emb = _l2n(emb.sum(dim=0, keepdim=True))
        out = []
        for be in self.backends:
            out.append(be(emb))
        return torch.cat(out)


def _int_max(a: int, b: int) -> int:
    """``max`` of two (possibly symbolic) sizes without a guard on the clip length."""
    if torch.jit.is_scripting():
        return max(a, b)
    return _sym_max(a, b)


@torch.jit.unused
def _sym_max(a: int, b: int) -> int:
    return torch.sym_max(a, b)


def crop_starts(length: int, tile: int, hop: int) -> torch.Tensor:
    """Start samples ``(n_crops,)`` int64 of the test crops of a clip of ``length`` samples:
    ``[0]`` up to one ``tile``, else ``ceil((length - tile) / hop) + 1`` starts from 0 to
    ``length - tile`` (``np.linspace`` in float64, rounded half to even), as
    :meth:`DiscriminativeDetector._crop_starts`. Sizes may be symbolic (dynamic length)."""
    # ceil((length - tile) / hop), at least 0, with non-negative operands only: ONNX's integer
    # Div truncates toward zero, so a floor division of a negative number would come out wrong
    extra = (_int_max(length, tile) - tile + hop - 1) // hop
    div = _int_max(extra, 1)
    # np.linspace: step = delta / div, then i * step (float64, the same two roundings)
    step = torch.ones((), dtype=torch.float64) * (length - tile) / div
    return torch.round(torch.arange(extra + 1, dtype=torch.float64) * step).to(torch.int64)


class DiscriminativeScorer(nn.Module):
    """A trained discriminative detector's scoring of one machine type, as one module.

    ``forward(waveform, section)``: ``waveform`` float32 ``(n_samples,)`` mono at ``sr`` Hz (any
    length ≥ 1); ``section`` int64 scalar, the index into the machine type's sections. Returns
    float32 ``(n_modes,)``: the clip's anomaly score per score mode (``modes`` order). The
    section does not change the scores: the detector's backends are fitted per machine type
    on both domains and take the minimum over domains (it is an input so that every exported
    detector has one signature).

    Args:
        nets: the networks of the ensemble epochs (copied, eval mode).
        backends: per epoch (same order), the fitted numpy backends of the machine type by mode.
        modes: score modes, in output order.
        tile: network input length, samples.
        hop: test crop hop, samples.
        sr: sample rate, Hz.
    """

    def __init__(self, nets: Sequence[MultiResolutionNet], backends: Sequence[dict[str, EmbeddingBackend]],
                 modes: Sequence[str], tile: int, hop: int, sr: int) -> None:
        super().__init__()
        if len(nets) != len(backends) or not nets:
            raise StethoError(f"{len(nets)} network(s) for {len(backends)} epoch(s) of backends")
        self.modes = list(modes)
        # one Bluestein transform (its constants) shared by every epoch's FFT branch
        has_fft = any(isinstance(b, FFTBranch) for b in nets[0].branches)
        spectrum = BluesteinMagnitude(tile) if has_fft and tile & (tile - 1) else None
        self.epochs = nn.ModuleList(
            EpochScorer(_exportable(net, spectrum), [torch_backend(b[m]) for m in self.modes])
            for net, b in zip(nets, backends))
        self.n_epochs = len(nets)
        self.tile, self.hop, self.sr = int(tile), int(hop), int(sr)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def crops(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(n_crops, tile)`` float32 test crops of ``waveform`` on the 16-bit grid the detector's
        :class:`WaveBank` keeps (a clip shorter than a tile repeated from its beginning)."""
        w = torch.round(torch.clamp(waveform.to(torch.float32), -1.0, 32767.0 / 32768.0) * 32768.0) / 32768.0
        length = w.shape[0]
        starts = crop_starts(length, self.tile, self.hop)
        # the length as a tensor: ONNX has no remainder by a symbolic scalar
        n = torch.ones((), dtype=torch.int64) * length
        idx = torch.remainder(starts.unsqueeze(1) + torch.arange(self.tile, dtype=torch.int64).unsqueeze(0), n)
        return w[idx]

    def forward(self, waveform: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        crops = self.crops(waveform)
        total = torch.zeros(len(self.modes), dtype=torch.float64)
        for ep in self.epochs:
            total = total + ep(crops)
        return (total / self.n_epochs).to(torch.float32)

    def spectrum_input(self) -> tuple[nn.Module, dict[str, object]]:
        """The module after the spectra (:class:`SpectraScorer`) and the definition of its
        ``spectrum`` input, for a front end outside the graph (``stetho.edge.spectrum``)."""
        branches: list[dict[str, object]] = []
        for branch in self.epochs[0].net.branches:
            if isinstance(branch, STFTBranch):
                branches.append({"kind": "stft_magnitude", "n_fft": branch.n_fft, "hop_length": branch.hop,
                                 "window": "hann_periodic", "center": True, "pad_mode": "reflect",
                                 "normalized": True, "bins": [branch.lo, branch.hi]})
            else:
                branches.append({"kind": "rfft_magnitude"})
        spec = {"kind": "crops", "tile": self.tile, "hop": self.hop, "grid": "int16", "branches": branches,
                "dtype": "float32"}
        return SpectraScorer(self, [_spectrum_shape(b, self.tile) for b in branches]), spec


def _spectrum_shape(branch: dict[str, object], tile: int) -> tuple[int, ...]:
    """Shape of one crop's spectrum of a branch (see :meth:`DiscriminativeScorer.spectrum_input`)."""
    if branch["kind"] == "rfft_magnitude":
        return (tile // 2 + 1,)
    lo, hi = branch["bins"]  # type: ignore[misc]
    return (int(hi) - int(lo), tile // int(branch["hop_length"]) + 1)  # type: ignore[arg-type]


class FFTTail(nn.Module):
    """An FFT branch after its ``|rfft|``: ``(B, tile // 2 + 1) -> (B, emb_dim)``."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.conv = branch.conv
        self.dense = branch.dense

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(spec.unsqueeze(1)).flatten(1))


class STFTTail(nn.Module):
    """An :class:`STFTBranch` after its magnitude spectrogram: ``(B, n_freq, n_time) -> (B, emb_dim)``."""

    def __init__(self, branch: STFTBranch) -> None:
        super().__init__()
        self.bn_freq, self.first, self.blocks, self.head = branch.bn_freq, branch.first, branch.blocks, branch.head

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.first(self.bn_freq(spec).unsqueeze(1)))
        return self.head(h.max(dim=3).values.flatten(1))


class SpectraEpoch(nn.Module):
    """One ensemble epoch of :class:`SpectraScorer`: branch tails, clip embedding, backends."""

    def __init__(self, epoch: EpochScorer) -> None:
        super().__init__()
        self.tails = nn.ModuleList(STFTTail(b) if isinstance(b, STFTBranch) else FFTTail(b)
                                   for b in epoch.net.branches)
        self.backends = epoch.backends

    def forward(self, spectra: list[torch.Tensor]) -> torch.Tensor:
        parts = []
        for i, tail in enumerate(self.tails):
            parts.append(tail(spectra[i]))
        emb = _l2n(torch.cat(parts, dim=1).to(torch.float64))
        emb = _l2n(emb.sum(dim=0, keepdim=True))
        out = []
        for be in self.backends:
            out.append(be(emb))
        return torch.cat(out)


class SpectraScorer(nn.Module):
    """:class:`DiscriminativeScorer` after its front end: ``forward(spectrum, section)`` takes
    float32 ``(n_crops, F)``, each crop's branch spectra flattened and concatenated in branch
    order (``F`` = the sum of ``shapes``' sizes; see ``stetho.edge.spectrum``), and returns the
    same float32 ``(n_modes,)`` scores."""

    def __init__(self, scorer: DiscriminativeScorer, shapes: Sequence[tuple[int, ...]]) -> None:
        super().__init__()
        self.modes = list(scorer.modes)
        self.epochs = nn.ModuleList(SpectraEpoch(ep) for ep in scorer.epochs)
        self.n_epochs = len(self.epochs)
        self.shapes = [list(s) for s in shapes]
        self.sizes = [int(np.prod(s)) for s in shapes]
        self.eval()

    def forward(self, spectrum: torch.Tensor, section: torch.Tensor) -> torch.Tensor:
        spectra = []
        start = 0
        for i, size in enumerate(self.sizes):
            spectra.append(spectrum[:, start:start + size].reshape([-1] + self.shapes[i]))
            start += size
        total = torch.zeros(len(self.modes), dtype=torch.float64)
        for ep in self.epochs:
            total = total + ep(spectra)
        return (total / self.n_epochs).to(torch.float32)


__all__ = [
    "BluesteinMagnitude", "DensityScore", "DiscriminativeScorer", "DomainNormalizedScore", "EpochScorer",
    "ExportFFTBranch", "FFTTail", "KMeansScore", "KNNDomainScore", "KNNScore", "MahalanobisScore", "STFTTail",
    "SpectraEpoch", "SpectraScorer", "crop_starts", "torch_backend",
]
