"""Backends: estimators on arrays (error vectors, embeddings) that turn them into scores.

They hold no neural networks, so every model can use them (import order: backends < models).
"""

from stetho.backends.covariance import StreamingLedoitWolf
from stetho.backends.embedding import (
    ALL_BACKENDS, BACKENDS, DensityBackend, DomainNormalized, EmbeddingBackend, GMMBackend, KMeansBackend, KNNBackend,
    MahalanobisBackend, cosine_distances, cross_fitted_scores, domain_parts, ensemble, l2_normalize, make_backend,
)
from stetho.backends.mahalanobis import mahalanobis_sq, precision_from_covariance, selective_mahalanobis
from stetho.backends.threshold import fpr_threshold, gamma_threshold

__all__ = [
    "ALL_BACKENDS", "BACKENDS", "DensityBackend", "DomainNormalized", "EmbeddingBackend", "GMMBackend",
    "KMeansBackend", "KNNBackend", "MahalanobisBackend", "cosine_distances", "cross_fitted_scores", "domain_parts", "ensemble", "l2_normalize",
    "make_backend", "StreamingLedoitWolf",
    "fpr_threshold", "gamma_threshold", "mahalanobis_sq", "precision_from_covariance", "selective_mahalanobis",
]
