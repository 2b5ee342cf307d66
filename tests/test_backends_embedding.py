"""Tests of stetho.backends.embedding against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf

from stetho.backends import (
    KMeansBackend, KNNBackend, MahalanobisBackend, cosine_distances, ensemble, l2_normalize, make_backend,
)


@pytest.fixture()
def data():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(60, 8)) + np.array([3, 0, 0, 0, 0, 0, 0, 0])
    target = rng.normal(size=(5, 8)) + np.array([0, 3, 0, 0, 0, 0, 0, 0])
    test = rng.normal(size=(7, 8))
    return {"source": source, "target": target}, test


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cosine_distance_is_one_minus_cosine():
    a, b = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [3.0, 0.0]])
    assert np.allclose(cosine_distances(a, b), [[1.0, 0.0], [1 - np.sqrt(0.5), 1 - np.sqrt(0.5)]])
    assert np.allclose(np.linalg.norm(l2_normalize(b), axis=1), 1.0)


def test_kmeans_plus_target_backend_equals_a_direct_computation(data):
    train, test = data
    be = KMeansBackend(n_clusters=4, seed=3).fit(train)
    km = KMeans(n_clusters=4, n_init=10, random_state=3).fit(_unit(train["source"]))
    centres = np.concatenate([_unit(km.cluster_centers_), _unit(train["target"])])
    expected = (1 - _unit(test) @ centres.T).min(axis=1)
    assert be.centres_.shape == (4 + 5, 8)
    assert np.allclose(be.score(test), expected)
    # every target clip is a centre: its own score is 0, so training scores are cross-fitted
    assert np.allclose(be.score(train["target"]), 0.0, atol=1e-12)


def test_training_scores_are_cross_fitted_per_domain(data):
    train, _ = data
    be = KMeansBackend(n_clusters=4, seed=3).fit(train)
    got = be.train_scores(train, folds=5, seed=7)
    rng = np.random.default_rng(7)
    for d in ("source", "target"):  # the same fold draw, fitted and scored by hand
        e = train[d]
        fold_of = rng.permutation(len(e)) % 5
        expected = np.empty(len(e))
        for f in range(5):
            rest = {**train, d: e[fold_of != f]}
            expected[fold_of == f] = KMeansBackend(4, 3).fit(rest).score(e[fold_of == f])
        assert np.allclose(got[d], expected)
    assert (got["target"] > 0.01).all()  # no clip is scored against itself
    knn = KNNBackend(k=1).fit(train).train_scores(train)
    assert (knn["source"] > 0).all() and (knn["target"] > 0).all()


def test_kmeans_with_fewer_source_clips_than_clusters(data):
    train, test = data
    be = KMeansBackend(n_clusters=16).fit({"source": train["source"][:5]})
    assert be.centres_.shape == (5, 8) and be.score(test).shape == (7,)


def test_knn_is_the_min_over_domains_of_the_mean_distance_to_k_neighbours(data):
    train, test = data
    be = KNNBackend(k=3).fit(train)
    per = [np.sort(1 - _unit(test) @ _unit(train[d]).T, axis=1)[:, :3].mean(axis=1) for d in ("source", "target")]
    assert np.allclose(be.score(test), np.minimum(*per))
    one = KNNBackend(k=1).fit(train)
    assert np.allclose(one.score(test), (1 - _unit(test) @ _unit(np.concatenate(list(train.values()))).T).min(axis=1))


def test_mahalanobis_backend_is_min_over_domains(data):
    train, test = data
    be = MahalanobisBackend().fit(train)
    x = _unit(test)
    scores = []
    for d in ("source", "target"):
        u = _unit(train[d])
        p = np.linalg.inv(LedoitWolf().fit(u).covariance_)
        e = x - u.mean(axis=0)
        scores.append(np.einsum("ij,jk,ik->i", e, p, e))
    assert np.allclose(be.score(test), np.minimum(*scores), rtol=1e-6)


@pytest.mark.parametrize("name", ["kmeans", "knn", "mahalanobis"])
def test_backend_state_round_trip(data, name):
    train, test = data
    be = make_backend(name, seed=1, n_clusters=4).fit(train)
    again = make_backend(name).set_state(be.get_state())
    assert np.allclose(again.score(test), be.score(test))


def test_ensemble_is_the_mean_and_errors():
    assert np.allclose(ensemble([np.array([1.0, 2.0]), np.array([3.0, 6.0]), np.array([2.0, 1.0])]), [2.0, 3.0])
    with pytest.raises(ValueError):
        ensemble([])
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("lof")
    with pytest.raises(ValueError, match="keyed by domain"):
        KNNBackend().fit({"src": np.ones((2, 2))})
