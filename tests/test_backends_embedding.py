"""Tests of stetho.backends.embedding against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.covariance import LedoitWolf
from sklearn.mixture import GaussianMixture

from stetho.backends import (
    ALL_BACKENDS, BACKENDS, DensityBackend, DomainNormalized, GMMBackend, KMeansBackend, KNNBackend,
    MahalanobisBackend, cosine_distances, ensemble, l2_normalize, make_backend,
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


@pytest.mark.parametrize("name", ["kmeans", "knn", "mahalanobis", "density", "kmeans_norm", "knn_norm", "gmm"])
def test_backend_state_round_trip(data, name):
    train, test = data
    be = make_backend(name, seed=1, n_clusters=4).fit(train)
    again = make_backend(name).set_state(be.get_state())
    assert np.allclose(again.score(test), be.score(test))


def test_density_backend_equals_a_direct_computation(data):
    train, test = data
    for k in (1, 3):
        be = DensityBackend(k=k).fit(train)
        mem = _unit(np.concatenate([train["source"], train["target"]]))
        dd = 1 - mem @ mem.T
        np.fill_diagonal(dd, np.inf)
        radius = np.sort(dd, axis=1)[:, :k].mean(axis=1)
        d = 1 - _unit(test) @ mem.T
        nn = d.argmin(axis=1)
        assert np.allclose(be.score(test), d.min(axis=1) / radius[nn])


def test_density_backend_puts_a_sparse_and_a_dense_domain_on_one_scale():
    """Hand-made 2-D case: a dense source cluster (points 0.01 rad apart) and a sparse target
    cluster (0.2 rad apart). A point 0.1 rad beyond the dense cluster is ten spacings out; one
    0.1 rad beside a target point is half a spacing away. kNN scores both alike; the density
    backend scores the first far higher."""
    ang_s = np.arange(20) * 0.01
    ang_t = 2.0 + np.arange(5) * 0.2
    emb = lambda a: np.stack([np.cos(a), np.sin(a)], axis=1)  # noqa: E731
    train = {"source": emb(ang_s), "target": emb(ang_t)}
    out_dense = emb(np.array([ang_s[-1] + 0.1]))
    in_sparse = emb(np.array([ang_t[2] + 0.1]))
    knn = KNNBackend(k=1).fit(train)
    dens = DensityBackend(k=1).fit(train)
    assert np.isclose(knn.score(out_dense)[0], knn.score(in_sparse)[0])  # both 0.1 rad away
    # nearest point spacing: 0.01 rad (dense) vs 0.2 rad (sparse); 1 - cos(a) ~ a^2 / 2
    assert np.isclose(dens.score(out_dense)[0], (1 - np.cos(0.1)) / (1 - np.cos(0.01)), rtol=1e-6)
    assert np.isclose(dens.score(in_sparse)[0], (1 - np.cos(0.1)) / (1 - np.cos(0.2)), rtol=1e-6)
    assert dens.score(out_dense)[0] > 100 * dens.score(in_sparse)[0]


def test_density_backend_handles_duplicates_and_refuses_a_single_embedding():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    be = DensityBackend(k=1).fit({"source": x})
    s = be.score(np.array([[1.0, 0.1], [0.0, 1.0]]))
    assert np.isfinite(s).all() and s[1] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        DensityBackend().fit({"source": x[:1]})
    with pytest.raises(ValueError, match="positive integer"):
        DensityBackend(k=0)


def test_domain_normalized_kmeans_equals_a_direct_computation(data):
    train, test = data
    be = make_backend("kmeans_norm", seed=3, n_clusters=4).fit(train)
    src = KMeansBackend(4, 3)
    # scales: median of each domain's out-of-sample scores, that domain fitted alone
    s_scale = np.median(src.train_scores({"source": train["source"]})["source"])
    t = _unit(train["target"])
    rng = np.random.default_rng(0)  # train_scores' default fold draw
    fold_of = rng.permutation(len(t)) % 5
    loo = np.array([(1 - t[i] @ t[fold_of != fold_of[i]].T).min() for i in range(len(t))])
    t_scale = np.median(loo)
    assert np.isclose(be.scales_["source"], s_scale) and np.isclose(be.scales_["target"], t_scale)
    d_src = src.fit({"source": train["source"]}).score(test)
    d_tgt = (1 - _unit(test) @ t.T).min(axis=1)  # every target embedding a centre
    assert np.allclose(be.score(test), np.minimum(d_src / s_scale, d_tgt / t_scale))


def test_domain_normalization_removes_a_scale_mismatch_between_domains():
    """Many tightly packed source clips, 8 widely spread target clips (16-d): unnormalised, normal
    target test clips score above source anomalies (a little off the source cluster); divided by
    each domain's own spacing, they score below them."""
    rng = np.random.default_rng(1)
    e1, e2 = np.eye(16)[0], np.eye(16)[1]
    train = {"source": e1 + 0.02 * rng.standard_normal((300, 16)), "target": e2 + 0.15 * rng.standard_normal((8, 16))}
    normal_target = e2 + 0.15 * rng.standard_normal((200, 16))
    anomalies = e1 + 0.06 * rng.standard_normal((50, 16))

    def auc(backend):  # normal target clips vs source anomalies
        return np.mean(backend.score(anomalies)[:, None] > backend.score(normal_target)[None, :])

    assert auc(KNNBackend().fit(train)) < 0.2
    assert auc(make_backend("knn_norm").fit(train)) > 0.9
    assert auc(make_backend("kmeans_norm", n_clusters=4).fit(train)) > 0.9


def test_domain_normalized_with_one_target_embedding_borrows_the_source_scale(data):
    train, test = data
    be = DomainNormalized({"source": KNNBackend(), "target": KNNBackend()}, "knn_norm").fit(
        {"source": train["source"], "target": train["target"][:1]})
    assert be.scales_["target"] == be.scales_["source"] > 0
    assert np.isfinite(be.score(test)).all()


def test_ensemble_is_the_mean_and_errors():
    assert np.allclose(ensemble([np.array([1.0, 2.0]), np.array([3.0, 6.0]), np.array([2.0, 1.0])]), [2.0, 3.0])
    with pytest.raises(ValueError):
        ensemble([])
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("lof")
    with pytest.raises(ValueError, match="keyed by domain"):
        KNNBackend().fit({"src": np.ones((2, 2))})


def test_domain_normalized_with_two_target_embeddings_cannot_cross_fit_and_borrows(data):
    train, test = data
    be = make_backend("kmeans_norm", n_clusters=4).fit({"source": train["source"], "target": train["target"][:2]})
    assert be.scales_["target"] == be.scales_["source"] > 0  # 2 clips: no out-of-sample spacing


def test_domain_normalized_training_scores_hold_each_clip_out_with_the_fitted_scales(data):
    train, _ = data
    be = make_backend("knn_norm").fit(train)
    got = be.train_scores(train, folds=5, seed=2)
    rng = np.random.default_rng(2)
    for d, other in (("source", "target"), ("target", "source")):
        e = train[d]
        fold_of = rng.permutation(len(e)) % 5
        own = np.empty(len(e))
        for f in range(5):
            rest = _unit(e[fold_of != f])
            own[fold_of == f] = (1 - _unit(e[fold_of == f]) @ rest.T).min(axis=1) / be.scales_[d]
        far = (1 - _unit(e) @ _unit(train[other]).T).min(axis=1) / be.scales_[other]
        assert np.allclose(got[d], np.minimum(own, far))
    assert (got["target"] > 0).all()


def test_gmm_backend_is_the_negative_log_likelihood_of_a_mixture_on_the_pooled_embeddings(data):
    train, test = data
    pooled = np.concatenate([train["source"], train["target"]])  # 65 rows: up to 6 components
    for cov in ("diag", "full"):
        be = GMMBackend(n_components=3, covariance_type=cov, reg_covar=1e-4, seed=5).fit(train)
        gm = GaussianMixture(n_components=3, covariance_type=cov, reg_covar=1e-4, random_state=5).fit(pooled)
        np.testing.assert_allclose(be.score(test), -gm.score_samples(test), rtol=1e-10)
    # make_backend: cosine (embeddings) fits on the unit-length rows, euclidean on the rows as they are
    cos = make_backend("gmm", seed=2, gmm_components=2).fit(train)
    gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=2).fit(_unit(pooled))
    np.testing.assert_allclose(cos.score(test), -gm.score_samples(_unit(test)), rtol=1e-10)
    euc = make_backend("gmm", seed=2, gmm_components=2, metric="euclidean").fit(train)
    gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=2).fit(pooled)
    np.testing.assert_allclose(euc.score(test), -gm.score_samples(test), rtol=1e-10)
    # deterministic: the same seed gives the same mixture
    np.testing.assert_array_equal(make_backend("gmm", seed=2, gmm_components=2).fit(train).score(test), cos.score(test))


def test_gmm_components_are_capped_at_a_tenth_of_the_training_embeddings(data):
    train, test = data
    assert GMMBackend(n_components=16).fit(train).n_components_ == 6  # 65 // 10
    assert GMMBackend(n_components=2).fit(train).n_components_ == 2
    few = GMMBackend(n_components=4, seed=1).fit({"source": train["source"][:9]})  # 9 // 10 = 0 -> 1
    assert few.n_components_ == 1 and few.get_state()["means"].shape == (1, 8)
    # one diagonal Gaussian: its mean and (biased) variance per dimension plus reg_covar, by hand
    x = train["source"][:9]
    mu, var = x.mean(0), x.var(0) + 1e-6
    nll = 0.5 * (np.log(2 * np.pi * var).sum() + (((test - mu) ** 2) / var).sum(1))
    np.testing.assert_allclose(few.score(test), nll, rtol=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        GMMBackend().fit({"source": train["source"][:1]})


def test_gmm_state_is_plain_arrays_and_restores_identical_scores(data):
    train, test = data
    be = GMMBackend(n_components=3, seed=4).fit(train)
    state = be.get_state()
    assert set(state) == {"weights", "means", "covariances", "precisions_cholesky", "covariance_type"}
    assert all(isinstance(v, np.ndarray) for k, v in state.items() if k != "covariance_type")
    assert state["covariances"].shape == (3, 8) and np.isclose(state["weights"].sum(), 1.0)
    np.testing.assert_array_equal(GMMBackend().set_state(state).score(test), be.score(test))
    with pytest.raises(ValueError, match="covariance_type"):
        GMMBackend(covariance_type="full").set_state(state)


def test_gmm_training_scores_are_cross_fitted_on_the_pooled_rest(data):
    train, _ = data
    be = GMMBackend(n_components=2, seed=1)
    got = be.fit(train).train_scores(train, folds=5, seed=3)
    rng = np.random.default_rng(3)
    for d in ("source", "target"):  # the same fold draw: the fold left out, the other domain whole
        e = train[d]
        fold_of = rng.permutation(len(e)) % 5
        want = np.empty(len(e))
        for f in range(5):
            rest = {**train, d: e[fold_of != f]}
            pooled = np.concatenate([rest["source"], rest["target"]])
            k = min(2, len(pooled) // 10)
            gm = GaussianMixture(n_components=k, covariance_type="diag", random_state=1).fit(pooled)
            want[fold_of == f] = -gm.score_samples(e[fold_of == f])
        np.testing.assert_allclose(got[d], want, rtol=1e-10)


def test_gmm_is_built_by_name_but_is_not_an_embedding_detector_score_mode():
    assert "gmm" in ALL_BACKENDS and "gmm" not in BACKENDS
    assert isinstance(make_backend("gmm"), GMMBackend) and make_backend("gmm").normalize
    with pytest.raises(ValueError, match="n_components"):
        GMMBackend(n_components=0)
    with pytest.raises(ValueError, match="covariance_type"):
        GMMBackend(covariance_type="banana")
    with pytest.raises(ValueError, match="reg_covar"):
        GMMBackend(reg_covar=-1.0)
