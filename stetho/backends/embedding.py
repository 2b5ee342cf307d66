"""Anomaly scores from embeddings: k-means + target centres, kNN, per-domain Mahalanobis.

Each backend is fitted on the training embeddings of one machine type, split by domain, and
scores test embeddings (higher = more anomalous). They hold no network, so any method that
produces embeddings can use them (the discriminative models, later ones, or features).

- :class:`KMeansBackend` (DCASE 2023/2024 winners' default, METHODS.md §6): k-means with
  ``n_clusters`` centres on the L2-normalised *source* embeddings, plus every *target* embedding
  as a centre of its own (the target domain has ~10 clips); score = the smallest cosine distance
  to a centre.
- :class:`KNNBackend`: per domain, the mean cosine distance to the ``k`` nearest training
  embeddings of that domain; score = the minimum over domains.
- :class:`MahalanobisBackend`: per domain, mean and Ledoit-Wolf covariance of the embeddings;
  score = the minimum over domains of the squared Mahalanobis distance (Selective Mahalanobis).
- :class:`DensityBackend`: the cosine distance to the nearest training embedding (of either
  domain) divided by the local density around that neighbour (its mean distance to its own ``k``
  nearest training embeddings), after the local-density score normalisation of Wilkinghoff et
  al. (2025). A sparse domain (~10 target clips) has large nearest-neighbour distances even for
  normal clips; the division puts both domains on one scale without using domain labels.
- :class:`DomainNormalized` (``kmeans_norm``, ``knn_norm``): a backend fitted on each domain
  alone; a domain's distances are divided by its typical distance (the median out-of-sample
  score of its own training embeddings); score = the minimum over domains. The test clip's
  domain is not needed.
- :class:`GMMBackend` (``gmm``): a Gaussian mixture (diagonal covariances) fitted on the training
  embeddings of both domains pooled; score = the negative log-likelihood. The classical density
  baseline for clip-level statistics; not one of the embedding detectors' score modes
  (:data:`BACKENDS`), see :data:`ALL_BACKENDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from stetho.backends.mahalanobis import precision_from_covariance

if TYPE_CHECKING:  # scikit-learn (~1-2 s to import) is imported where a backend is fitted or a GMM scores
    from sklearn.mixture import GaussianMixture

DOMAIN_NAMES = ("source", "target")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` ``(n, d)`` scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``1 - cos`` between every row of ``x`` ``(n, d)`` and of ``centres`` ``(m, d)``: ``(n, m)``."""
    return 1.0 - l2_normalize(x) @ l2_normalize(centres).T


METRICS = ("cosine", "euclidean")


def distances(x: np.ndarray, memory: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """``(n, m)`` distances between the rows of ``x`` and of ``memory``: ``1 - cos`` or Euclidean."""
    if metric == "cosine":
        return cosine_distances(x, memory)
    if metric == "euclidean":
        x, memory = np.asarray(x, dtype=np.float64), np.asarray(memory, dtype=np.float64)
        sq = (x * x).sum(1)[:, None] + (memory * memory).sum(1)[None, :] - 2.0 * x @ memory.T
        return np.sqrt(np.maximum(sq, 0.0))
    raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")


def _memory(x: np.ndarray, metric: str) -> np.ndarray:
    """Training rows as kept for ``metric``: unit length for cosine, as they are for Euclidean."""
    return l2_normalize(x) if metric == "cosine" else np.asarray(x, dtype=np.float64)


def _split(embeddings: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {d: np.asarray(e, dtype=np.float64) for d, e in embeddings.items() if d in DOMAIN_NAMES and len(e)}
    unknown = sorted(set(embeddings) - set(DOMAIN_NAMES))
    if unknown:
        raise ValueError(f"embeddings must be keyed by domain (source/target), got {', '.join(unknown)}")
    if not out:
        raise ValueError("no training embeddings to fit a backend on")
    return out


def domain_parts(x: np.ndarray, domains: np.ndarray | list[str]) -> dict[str, np.ndarray]:
    """The rows of ``x`` by their ``domains``, ``{"source": ..., "target": ...}`` in that order
    (a domain without rows is left out): what :meth:`EmbeddingBackend.fit` takes."""
    domains = np.asarray(domains)
    return {d: x[domains == d] for d in DOMAIN_NAMES if (domains == d).any()}


def cross_fitted_scores(backend: "EmbeddingBackend", x: np.ndarray, domains: np.ndarray | list[str],
                        folds: int = 5, seed: int = 0) -> np.ndarray:
    """The out-of-sample score of every training row of ``x`` (:meth:`EmbeddingBackend.train_scores`
    over :func:`domain_parts`), in the rows' order; rows of another domain are NaN."""
    domains = np.asarray(domains)
    out = np.full(len(x), np.nan)
    for d, s in backend.train_scores(domain_parts(x, domains), folds=folds, seed=seed).items():
        out[domains == d] = s
    return out


class EmbeddingBackend:
    """Base: ``fit({"source": (n_s, d), "target": (n_t, d)})`` → ``score((n, d))``."""

    name = ""

    def fit(self, embeddings: Mapping[str, np.ndarray]) -> "EmbeddingBackend":
        raise NotImplementedError

    def score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def train_scores(self, embeddings: Mapping[str, np.ndarray], folds: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
        """Out-of-sample scores of the training embeddings, per domain: each domain's embeddings
        are split into ``folds`` parts and every part is scored by a backend fitted on the rest
        (the other domain whole). In-sample scores would be biased low (a target clip is its own
        k-means centre, a kNN memory holds itself, k-means centres sit on their own clips), and
        a decision threshold fitted to them would call most normal test clips anomalous."""
        parts = _split(embeddings)
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for d, e in parts.items():
            k = min(folds, len(e))
            if k < 2 or (len(parts) == 1 and len(e) - len(e) // k < 2):
                out[d] = self.score(e)  # too few to hold any out
                continue
            fold_of = rng.permutation(len(e)) % k
            s = np.empty(len(e))
            for f in range(k):
                rest = {**parts, d: e[fold_of != f]}
                s[fold_of == f] = self.clone().fit(rest).score(e[fold_of == f])
            out[d] = s
        return out

    def clone(self) -> "EmbeddingBackend":
        """An unfitted backend with the same settings."""
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, state: Mapping[str, Any]) -> "EmbeddingBackend":
        raise NotImplementedError


class KMeansBackend(EmbeddingBackend):
    """k-means centres of the source embeddings + every target embedding; min cosine distance.

    Args:
        n_clusters: source centres (16); fewer when there are fewer source embeddings.
        seed: k-means seed.
    """

    name = "kmeans"

    def __init__(self, n_clusters: int = 16, seed: int = 0) -> None:
        self.n_clusters = n_clusters
        self.seed = seed

    def clone(self):
        return KMeansBackend(self.n_clusters, self.seed)

    def fit(self, embeddings):
        parts = _split(embeddings)
        centres = []
        if "source" in parts:
            src = l2_normalize(parts["source"])
            k = min(self.n_clusters, len(src))
            from sklearn.cluster import KMeans

            km = KMeans(n_clusters=k, n_init=10, random_state=self.seed).fit(src)
            centres.append(km.cluster_centers_)
        if "target" in parts:
            centres.append(l2_normalize(parts["target"]))
        self.centres_ = l2_normalize(np.concatenate(centres))
        return self

    def score(self, x):
        return cosine_distances(x, self.centres_).min(axis=1)

    def get_state(self):
        return {"centres": self.centres_}

    def set_state(self, state):
        self.centres_ = np.asarray(state["centres"], dtype=np.float64)
        return self


class KNNBackend(EmbeddingBackend):
    """Mean distance (cosine, or Euclidean with ``metric="euclidean"``) to the ``k`` nearest
    training embeddings of each domain; min over domains."""

    name = "knn"

    def __init__(self, k: int = 1, metric: str = "cosine") -> None:
        self.k = k
        self.metric = metric

    def clone(self):
        return KNNBackend(self.k, self.metric)

    def fit(self, embeddings):
        self.memory_ = {d: _memory(e, self.metric) for d, e in _split(embeddings).items()}
        return self

    def score(self, x):
        per_domain = []
        for mem in self.memory_.values():
            d = distances(x, mem, self.metric)
            k = min(self.k, mem.shape[0])
            per_domain.append(np.sort(d, axis=1)[:, :k].mean(axis=1))
        return np.min(per_domain, axis=0)

    def get_state(self):
        return {f"memory_{d}": m for d, m in self.memory_.items()}

    def set_state(self, state):
        self.memory_ = {k.removeprefix("memory_"): np.asarray(v, dtype=np.float64)
                        for k, v in state.items() if k.startswith("memory_")}
        return self


class MahalanobisBackend(EmbeddingBackend):
    """Per domain, squared Mahalanobis distance to the domain mean (Ledoit-Wolf covariance of the
    L2-normalised embeddings, or of the embeddings as they are with ``normalize=False``); min
    over domains. A domain with fewer than 2 embeddings borrows the other domain's covariance
    (with its own mean)."""

    name = "mahalanobis"

    def __init__(self, normalize: bool = True) -> None:
        self.normalize = normalize

    def clone(self):
        return MahalanobisBackend(self.normalize)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(x) if self.normalize else np.asarray(x, dtype=np.float64)

    def fit(self, embeddings):
        from sklearn.covariance import LedoitWolf

        parts = {d: self._prepare(e) for d, e in _split(embeddings).items()}
        covs = {d: LedoitWolf().fit(e).covariance_ for d, e in parts.items() if len(e) >= 2}
        if not covs:
            raise ValueError("Mahalanobis backend needs at least 2 training embeddings in one domain")
        fallback = covs.get("source", next(iter(covs.values())))
        self.means_ = {d: e.mean(axis=0) for d, e in parts.items()}
        self.precisions_ = {d: precision_from_covariance(covs.get(d, fallback)) for d in parts}
        return self

    def score(self, x):
        x = self._prepare(x)
        out = []
        for d, mean in self.means_.items():
            e = x - mean
            out.append(np.einsum("ij,jk,ik->i", e, self.precisions_[d], e))
        return np.min(out, axis=0)

    def get_state(self):
        state = {f"mean_{d}": m for d, m in self.means_.items()}
        state.update({f"precision_{d}": p for d, p in self.precisions_.items()})
        return state

    def set_state(self, state):
        self.means_ = {k.removeprefix("mean_"): np.asarray(v) for k, v in state.items() if k.startswith("mean_")}
        self.precisions_ = {k.removeprefix("precision_"): np.asarray(v)
                            for k, v in state.items() if k.startswith("precision_")}
        return self


class DensityBackend(EmbeddingBackend):
    """Nearest-neighbour cosine distance scaled by the local density of the training embeddings.

    ``score(x) = d(x, y) / mean(d(y, y_1), ..., d(y, y_k))``, where ``y`` is the training
    embedding nearest to ``x`` (all domains pooled) and ``y_1 .. y_k`` are the ``k`` training
    embeddings nearest to ``y`` (itself excluded). A normal clip of a sparsely sampled region
    (the target domain) lies about as far from its neighbour as that neighbour's own neighbours
    do, so its score is about 1, as in a dense region. Local-density score normalisation for
    domain generalisation, Wilkinghoff et al. (2025); the LOF family of outlier scores.

    Args:
        k: neighbours defining the local density of a training embedding (1).
        metric: ``cosine`` (embeddings) or ``euclidean`` (standardised feature vectors).
    """

    name = "density"

    def __init__(self, k: int = 1, metric: str = "cosine") -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"density backend: k must be a positive integer, got {k!r}")
        self.k = int(k)
        self.metric = metric

    def clone(self):
        return DensityBackend(self.k, self.metric)

    def fit(self, embeddings):
        memory = _memory(np.concatenate(list(_split(embeddings).values())), self.metric)
        if len(memory) < 2:
            raise ValueError("density backend needs at least 2 training embeddings (a density needs a neighbour)")
        d = distances(memory, memory, self.metric)
        np.fill_diagonal(d, np.inf)
        k = min(self.k, len(memory) - 1)
        radius = np.sort(d, axis=1)[:, :k].mean(axis=1)
        # Duplicate training clips have radius 0; floor it so their neighbours' scores stay finite.
        positive = radius[radius > 0]
        floor = 1e-3 * float(np.median(positive)) if positive.size else 1e-12
        self.memory_ = memory
        self.radius_ = np.maximum(radius, floor)
        return self

    def score(self, x):
        d = distances(x, self.memory_, self.metric)
        nearest = d.argmin(axis=1)
        return d[np.arange(len(d)), nearest] / self.radius_[nearest]

    def get_state(self):
        return {"memory": self.memory_, "radius": self.radius_}

    def set_state(self, state):
        self.memory_ = np.asarray(state["memory"], dtype=np.float64)
        self.radius_ = np.asarray(state["radius"], dtype=np.float64)
        return self


class DomainNormalized(EmbeddingBackend):
    """Per-domain backends whose scores are divided by their domain's typical score.

    ``score(x) = min over domains d of score_d(x) / scale_d``, where ``score_d`` is ``inner``
    fitted on domain ``d``'s embeddings alone and ``scale_d`` is the median of the out-of-sample
    scores of those embeddings (:meth:`EmbeddingBackend.train_scores`, each left out of its own
    fit). With ~10 target clips against ~1,000 source clips, a target clip's nearest training
    embedding is much farther than a source clip's even when both are normal; dividing by each
    domain's own spacing puts the domains on one scale (domain-wise score normalisation). The
    domain of a test clip is not used. A domain with fewer than 2 training embeddings has no
    spacing and borrows the other domain's scale.

    Args:
        inner: the backend fitted on each domain, by domain name (``kmeans_norm``: k-means on
            the source, every target embedding a centre, i.e. 1-NN, as :class:`KMeansBackend`;
            ``knn_norm``: :class:`KNNBackend` for both).
        name: the score mode's name.
    """

    def __init__(self, inner: Mapping[str, EmbeddingBackend], name: str) -> None:
        self.inner = dict(inner)
        self.name = name

    def clone(self):
        return DomainNormalized({d: be.clone() for d, be in self.inner.items()}, self.name)

    def fit(self, embeddings):
        parts = _split(embeddings)
        self.backends_ = {d: self.inner[d].clone().fit({d: e}) for d, e in parts.items()}
        scales = {}
        for d, e in parts.items():
            if len(e) >= 2:
                s = float(np.median(self.backends_[d].train_scores({d: e})[d]))
                scales[d] = s if s > 0 else None
        known = [v for v in scales.values() if v is not None]
        fallback = float(np.median(known)) if known else 1.0
        self.scales_ = {d: scales.get(d) or fallback for d in parts}
        return self

    def score(self, x):
        return np.min([be.score(x) / self.scales_[d] for d, be in self.backends_.items()], axis=0)

    def train_scores(self, embeddings, folds: int = 5, seed: int = 0):
        """As :meth:`EmbeddingBackend.train_scores`, with the domain scales of this (full) fit:
        a held-out part of domain ``d`` is scored by ``d``'s backend refitted on the rest of
        ``d`` (over ``d``'s scale) and by the other domains' fitted backends. Refitting the
        scales per fold would cost 5 more fits per fold and change them by a few percent."""
        parts = _split(embeddings)
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for d, e in parts.items():
            others = [be.score(e) / self.scales_[o] for o, be in self.backends_.items() if o != d]
            k = min(folds, len(e))
            if k < 2:
                own = self.backends_[d].score(e) / self.scales_[d]  # too few to hold any out
            else:
                fold_of = rng.permutation(len(e)) % k
                own = np.empty(len(e))
                for f in range(k):
                    be = self.inner[d].clone().fit({d: e[fold_of != f]})
                    own[fold_of == f] = be.score(e[fold_of == f]) / self.scales_[d]
            out[d] = np.min([own, *others], axis=0)
        return out

    def get_state(self):
        state = {f"scale_{d}": np.float64(v) for d, v in self.scales_.items()}
        for d, be in self.backends_.items():
            state.update({f"{d}/{k}": v for k, v in be.get_state().items()})
        return state

    def set_state(self, state):
        self.scales_ = {k.removeprefix("scale_"): float(v) for k, v in state.items() if k.startswith("scale_")}
        self.backends_ = {}
        for d in self.scales_:
            prefix = f"{d}/"
            sub = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            self.backends_[d] = self.inner[d].clone().set_state(sub)
        return self


class GMMBackend(EmbeddingBackend):
    """Negative log-likelihood under a Gaussian mixture fitted on the pooled training embeddings.

    scikit-learn's :class:`~sklearn.mixture.GaussianMixture` (k-means initialisation, EM) on the
    embeddings of all domains together, as the DCASE 2020-2021 clip-statistics baselines fit one
    GMM per machine type; ``score(x) = -log p(x)``. A domain with ~10 clips has no component of
    its own unless it lies apart from the rest (see :data:`ALL_BACKENDS`).

    Args:
        n_components: mixture components (2); at most a tenth of the training embeddings, and at
            least 1 (:attr:`n_components_` is the number fitted).
        covariance_type: ``diag`` (default), ``full``, ``tied`` or ``spherical``. A full
            covariance has d(d+1)/2 parameters per component: with 128-256 dimensional clip
            statistics and a few hundred clips it is singular and only ``reg_covar`` keeps it
            invertible; a diagonal one needs d variances per component.
        reg_covar: added to every variance (scikit-learn's default 1e-6), so that a dimension
            constant over the training embeddings keeps a finite likelihood.
        normalize: fit and score the L2-normalised embeddings (as :class:`MahalanobisBackend`;
            ``make_backend`` sets it for ``metric="cosine"``).
        seed: the k-means initialisation's ``random_state`` (same seed, same mixture).
    """

    name = "gmm"
    COVARIANCE_TYPES = ("diag", "full", "tied", "spherical")

    def __init__(self, n_components: int = 2, covariance_type: str = "diag", reg_covar: float = 1e-6,
                 normalize: bool = False, seed: int = 0) -> None:
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ValueError(f"gmm backend: n_components must be a positive integer, got {n_components!r}")
        if covariance_type not in self.COVARIANCE_TYPES:
            raise ValueError(f"gmm backend: covariance_type must be one of {', '.join(self.COVARIANCE_TYPES)}, "
                             f"not {covariance_type!r}")
        if not isinstance(reg_covar, (int, float)) or not reg_covar >= 0:
            raise ValueError(f"gmm backend: reg_covar must be a number >= 0, got {reg_covar!r}")
        self.n_components = int(n_components)
        self.covariance_type = covariance_type
        self.reg_covar = float(reg_covar)
        self.normalize = normalize
        self.seed = seed

    def clone(self):
        return GMMBackend(self.n_components, self.covariance_type, self.reg_covar, self.normalize, self.seed)

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return l2_normalize(x) if self.normalize else np.asarray(x, dtype=np.float64)

    def _mixture(self, n_components: int) -> GaussianMixture:
        from sklearn.mixture import GaussianMixture

        return GaussianMixture(n_components=n_components, covariance_type=self.covariance_type,
                               reg_covar=self.reg_covar, random_state=self.seed)

    def fit(self, embeddings):
        x = self._prepare(np.concatenate(list(_split(embeddings).values())))
        if len(x) < 2:
            raise ValueError("gmm backend needs at least 2 training embeddings (a variance needs two)")
        # A component's mean and variances are estimated from its share of the clips: with fewer
        # than ~10 each, EM shrinks components onto a handful of clips whose variances collapse
        # to reg_covar, and normal clips between them score as anomalies. Hence at most n // 10
        # components (the cross-fitted folds of ~20 target clips still get 1-2), and at least 1.
        self.n_components_ = max(1, min(self.n_components, len(x) // 10))
        self.gmm_ = self._mixture(self.n_components_).fit(x)
        return self

    def score(self, x):
        return -self.gmm_.score_samples(self._prepare(x))

    def get_state(self):
        g = self.gmm_
        return {"weights": g.weights_, "means": g.means_, "covariances": g.covariances_,
                "precisions_cholesky": g.precisions_cholesky_, "covariance_type": self.covariance_type}

    def set_state(self, state):
        if state["covariance_type"] != self.covariance_type:
            raise ValueError(f"gmm backend: the state holds {state['covariance_type']!r} covariances, "
                             f"this backend's covariance_type is {self.covariance_type!r}")
        weights = np.asarray(state["weights"], dtype=np.float64)
        g = self._mixture(len(weights))
        # the fitted attributes score_samples reads (scikit-learn's documented fitted state)
        g.weights_ = weights
        g.means_ = np.asarray(state["means"], dtype=np.float64)
        g.covariances_ = np.asarray(state["covariances"], dtype=np.float64)
        g.precisions_cholesky_ = np.asarray(state["precisions_cholesky"], dtype=np.float64)
        self.n_components_, self.gmm_ = len(weights), g
        return self


#: Backends by name (the score modes of embedding detectors).
BACKENDS: dict[str, type[EmbeddingBackend]] = {
    KMeansBackend.name: KMeansBackend, KNNBackend.name: KNNBackend, MahalanobisBackend.name: MahalanobisBackend,
    DensityBackend.name: DensityBackend, "kmeans_norm": DomainNormalized, "knn_norm": DomainNormalized,
}

#: Every backend :func:`make_backend` builds: :data:`BACKENDS` plus ``gmm``, used by the ``stats``
#: model. ``gmm`` is not a score mode of the embedding detectors: pooled over domains, its
#: components follow the ~1,000 source clips and the ~10 target clips get none (a component
#: needs ~10 clips), where ``kmeans``/``knn``/``density`` keep every target clip; and each mode
#: costs every discriminative run and test cross-fitted fits per machine type and epoch.
ALL_BACKENDS: dict[str, type[EmbeddingBackend]] = {**BACKENDS, GMMBackend.name: GMMBackend}


def make_backend(name: str, seed: int = 0, n_clusters: int = 16, k: int = 1, density_k: int = 1,
                 metric: str = "cosine", gmm_components: int = 2) -> EmbeddingBackend:
    """A fresh backend by name (``k``: neighbours of kNN; ``density_k``: of the density backend;
    ``gmm_components``: mixture components of ``gmm``; ``metric``: ``cosine`` for embeddings,
    ``euclidean`` for feature vectors, which also leaves them un-normalised before the
    Mahalanobis and GMM backends)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    if name == "kmeans":
        return KMeansBackend(n_clusters=n_clusters, seed=seed)
    if name == "knn":
        return KNNBackend(k=k, metric=metric)
    if name == "mahalanobis":
        return MahalanobisBackend(normalize=metric == "cosine")
    if name == "density":
        return DensityBackend(k=density_k, metric=metric)
    if name == "kmeans_norm":
        return DomainNormalized({"source": KMeansBackend(n_clusters=n_clusters, seed=seed),
                                 "target": KNNBackend(k=1)}, name)
    if name == "knn_norm":
        return DomainNormalized({"source": KNNBackend(k=k), "target": KNNBackend(k=k)}, name)
    if name == "gmm":
        return GMMBackend(n_components=gmm_components, normalize=metric == "cosine", seed=seed)
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(ALL_BACKENDS)}")


def ensemble(scores: list[np.ndarray]) -> np.ndarray:
    """The mean of the score arrays of several models (e.g. epochs 12, 14 and 16)."""
    if not scores:
        raise ValueError("no scores to average")
    return np.mean(np.stack([np.asarray(s, dtype=np.float64) for s in scores]), axis=0)
