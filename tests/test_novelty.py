"""Image sets (stetho.datasets.images) and novelty protocols / metrics (stetho.novelty), with the
ARAE-vs-plain-AE evidence on the bundled digits."""

from __future__ import annotations

import csv
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

from stetho.cli import main
from stetho.datasets.images import ImageSet, load_coil100, load_digits_set, load_image_set, load_mnist, read_idx
from stetho.errors import ConfigError, DatasetError
from stetho.novelty import (
    apply_overrides, load_novelty_recipe, make_split, novelty_metrics, resolve_novelty, run_novelty, summarize,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "digits_arae.yaml"


def _write_idx(path: Path, array: np.ndarray, type_byte: int = 0x08) -> None:
    header = bytes([0, 0, type_byte, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    data = header + array.astype(">u1" if type_byte == 0x08 else ">i4").tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(folder: Path, n_train: int = 30, n_test: int = 20, gz: bool = True) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 256, (n_test, 28, 28))
    ytr, yte = np.arange(n_train) % 10, np.arange(n_test) % 10
    sfx = ".gz" if gz else ""
    for name, arr in (("train-images-idx3-ubyte", xtr), ("train-labels-idx1-ubyte", ytr),
                      ("t10k-images-idx3-ubyte", xte), ("t10k-labels-idx1-ubyte", yte)):
        _write_idx(folder / (name + sfx), arr)
    return xtr, ytr, xte, yte


# -- IDX / MNIST ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_folder_reads_the_standard_idx_files(tmp_path, gz):
    xtr, ytr, xte, yte = _fake_mnist(tmp_path, gz=gz)
    d = load_mnist(tmp_path)
    assert d.image_shape == (28, 28) and d.x.shape == (50, 784) and d.x.dtype == np.float32
    assert np.allclose(d.x[:30], xtr.reshape(30, -1) / 255.0) and np.allclose(d.x[30:], xte.reshape(20, -1) / 255.0)
    assert d.y.tolist() == ytr.tolist() + yte.tolist()
    assert d.split.tolist() == ["train"] * 30 + ["test"] * 20
    assert load_image_set("fashion_mnist", tmp_path).name == "fashion_mnist"


def test_mnist_train_and_test_images_of_different_sizes_are_refused(tmp_path):
    _fake_mnist(tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"train and test images differ in size \(\(28, 28\) vs \(32, 32\)\)"):
        load_mnist(tmp_path)


def test_read_idx_other_types_and_shapes(tmp_path):
    a = np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 5
    _write_idx(tmp_path / "a.idx", a, 0x0C)
    assert read_idx(tmp_path / "a.idx").tolist() == a.tolist()


def test_bad_idx_files_are_errors_naming_the_file(tmp_path):
    _fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte\[\.gz\]: IDX file does not exist"):
        load_mnist(tmp_path)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DatasetError, match=r"bad\.idx: not an IDX file \(magic number 0x12340801"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 1]) + np.array([10], dtype=">i4").tobytes() + b"\x00" * 3)
    with pytest.raises(DatasetError, match=r"short\.idx: IDX data holds 3 bytes, expected 10"):
        read_idx(short)
    with pytest.raises(DatasetError, match="nothing is downloaded"):
        load_image_set("coil100", None)


# -- COIL-100 -------------------------------------------------------------------------------------
def test_coil100_reads_pngs_in_object_angle_order(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    written = {}
    for k in (2, 10, 1):
        for angle in (5, 0):
            img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / f"obj{k}__{angle}.png")
            written[(k, angle)] = img
    d = load_coil100(tmp_path, size=None)
    assert d.y.tolist() == [1, 1, 2, 2, 10, 10] and d.image_shape == (16, 16)
    assert [Path(f).name for f in d.files][:2] == ["obj1__0.png", "obj1__5.png"]
    gray = np.asarray(Image.fromarray(written[(2, 5)]).convert("L"), dtype=np.float32) / 255.0
    assert np.allclose(d.x[3], gray.ravel())
    assert load_coil100(tmp_path, size=8).x.shape == (6, 64)
    assert load_coil100(tmp_path, size=None, grayscale=False).image_shape == (16, 16, 3)


def test_bad_coil_names_and_files_are_errors_naming_the_file(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "obj1__0.png")
    (tmp_path / "obj1__5.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"obj1__5\.png: cannot read PNG"):
        load_coil100(tmp_path)
    (tmp_path / "obj1__5.png").unlink()
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / "cup_3.png")
    with pytest.raises(DatasetError, match=r"cup_3\.png: not a COIL-100 file name \(expected obj<k>__<angle>\.png"):
        load_coil100(tmp_path)
    with pytest.raises(DatasetError, match="COIL-100 folder does not exist"):
        load_coil100(tmp_path / "nope")


# -- digits and protocols -------------------------------------------------------------------------
def test_bundled_digits_and_their_seeded_stratified_split():
    d = load_digits_set()
    assert d.x.shape == (1797, 64) and d.x.min() == 0.0 and d.x.max() == 1.0 and d.image_shape == (8, 8)
    n_test = (d.split == "test").sum()
    assert n_test == 599
    for c in range(10):  # stratified: each class ~1/3 in test
        frac = ((d.y == c) & (d.split == "test")).sum() / (d.y == c).sum()
        assert abs(frac - 1 / 3) < 0.02
    assert (load_digits_set().split == d.split).all() and not (load_digits_set(seed=1).split == d.split).all()


def _toy_set() -> ImageSet:
    y = np.repeat(np.arange(4), 50)
    split = np.tile(np.array(["train"] * 35 + ["test"] * 15), 4)
    return ImageSet("toy", np.random.default_rng(0).random((200, 4)).astype(np.float32), y, split, (2, 2))


def test_p1_split_sizes_anomaly_fraction_and_seeds():
    d = _toy_set()
    sp = make_split(d, [1], "p1", seed=3, anomaly_fraction=0.2)
    assert (len(sp.train), len(sp.val)) == (30, 10)
    n_norm = (sp.test_labels == 0).sum()
    assert n_norm == 10 and sp.test_labels.sum() == round(0.2 / 0.8 * 10)
    assert set(d.y[sp.train]) == {1} and set(d.y[sp.val]) == {1} and 1 not in set(d.y[sp.test[sp.test_labels == 1]])
    assert not (set(sp.train) & set(sp.val)) and not (set(sp.train) | set(sp.val)) & set(sp.test)
    again = make_split(d, [1], "p1", seed=3, anomaly_fraction=0.2)
    assert (again.test == sp.test).all() and (again.train == sp.train).all()
    other = make_split(d, [1], "p1", seed=4, anomaly_fraction=0.2)
    assert set(other.train) != set(sp.train)
    multi = make_split(d, [0, 2], "p1", seed=0, anomaly_fraction=0.5)
    assert set(d.y[multi.train]) == {0, 2} and multi.test_labels.mean() == 0.5


def test_p2_split_uses_the_official_train_and_the_whole_test_split():
    d = _toy_set()
    sp = make_split(d, [2], "p2", seed=0, val_fraction=0.2)
    official = np.flatnonzero((d.y == 2) & (d.split == "train"))
    assert sorted(np.concatenate([sp.train, sp.val]).tolist()) == official.tolist() and len(sp.val) == 7
    assert sp.test.tolist() == np.flatnonzero(d.split == "test").tolist()
    assert sp.test_labels.tolist() == (d.y[sp.test] != 2).astype(int).tolist()
    with pytest.raises(ConfigError, match="no class"):
        make_split(d, [7], "p2")
    with pytest.raises(ConfigError, match="unknown protocol"):
        make_split(d, [1], "p3")


def test_metrics_against_a_hand_example():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    m = novelty_metrics(labels, scores, threshold=0.3)
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (anomaly, normal) pairs ordered correctly
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))  # predicted {0.4, 0.35, 0.8}: P 2/3, R 1


def test_summary_means_over_normal_sets_then_over_seeds():
    rows = [{"model": "a", "normal": n, "seed": s, "auc": v}
            for (n, s, v) in (("0", 0, 0.9), ("1", 0, 0.7), ("0", 1, 1.0), ("1", 1, 0.8))]
    (row,) = summarize(rows)
    assert row["auc_mean"] == pytest.approx(0.85) and row["auc_std"] == pytest.approx(0.05)
    assert (row["seeds"], row["normal_sets"]) == (2, 2)


TINY = {"arae": {"variant": "linf", "hidden": [16], "latent": 4, "steps": 2, "epochs": 2},
        "plain": {"variant": "plain", "hidden": [16], "latent": 4, "epochs": 2}}


def test_threshold_comes_from_validation_normals_only(tmp_path):
    # p1 draws train/val before the anomalies: another anomaly fraction changes the test set only,
    # so the F1 threshold must not move.
    base = {"protocol": "p1", "normal_classes": [[4]], "models": {"plain": TINY["plain"]}, "out": str(tmp_path)}
    a = run_novelty({**base, "anomaly_fraction": 0.1}, write=False)["rows"][0]
    b = run_novelty({**base, "anomaly_fraction": 0.5}, write=False)["rows"][0]
    assert a["threshold"] == b["threshold"] and a["auc"] != b["auc"]


def test_models_train_on_every_training_image_and_take_the_common_parameters(monkeypatch):
    # the protocol's train split is the training set (threshold=official): no rows are held out
    # for the detector's own thresholds, the F1 threshold comes from the validation normals
    from stetho.models.arae import ARAEDetector

    seen = []
    original = ARAEDetector._fit

    def spy(self, clips, feats, context):
        seen.append((len(clips), self.threshold))
        return original(self, clips, feats, context)

    monkeypatch.setattr(ARAEDetector, "_fit", spy)
    out = run_novelty({"normal_classes": [[4]], "models": {"plain": TINY["plain"]}}, write=False)
    assert seen == [(out["splits"][0]["train"], "official")]
    cfg = resolve_novelty({"models": {"plain": {**TINY["plain"], "threshold": "calibrated", "decision_fpr": 0.05}}})
    assert cfg["models"]["plain"]["threshold"] == "calibrated"
    with pytest.raises(ConfigError, match="unknown parameter.*decision_quantilee"):
        resolve_novelty({"models": {"plain": {**TINY["plain"], "decision_quantilee": 0.9}}})


def test_run_writes_tables_and_records_splits(tmp_path):
    out = run_novelty({"normal_classes": [[0], [5]], "seeds": [0, 1], "models": TINY,
                       "attack": {"eps": 0.1, "steps": 2}, "out": str(tmp_path)})
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 2 and {r["normal"] for r in rows} == {"0", "5"}
    assert all(0 <= float(r["auc_attacked"]) <= 1 for r in rows)
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert [(s["normal"], s["seed"]) for s in splits] == [("0", 0), ("0", 1), ("5", 0), ("5", 1)]
    assert all(s["test"] == 599 for s in splits)
    with np.load(tmp_path / "splits.npz") as idx:
        d = load_digits_set()
        assert idx["5_seed1_test"].tolist() == np.flatnonzero(d.split == "test").tolist()
        assert set(d.y[idx["5_seed1_train"]]) == {5} and len(idx["5_seed1_val"]) == splits[3]["val"]
        assert set(idx["0_seed0_val"]) != set(idx["0_seed1_val"])
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1]
    assert {r["model"] for r in out["summary"]} == {"arae", "plain"}


def test_recipe_overrides_and_bad_config():
    cfg = apply_overrides(load_novelty_recipe(RECIPE), {"models": {"arae": {"epochs": 3}}, "seeds": [2]})
    assert set(cfg["models"]) == {"arae", "plain_ae", "union", "dae"}
    assert cfg["models"]["arae"]["epochs"] == 3 and cfg["models"]["arae"]["eps"] == 0.2 and cfg["seeds"] == [2]
    with pytest.raises(ConfigError, match="unknown key 'sedes'"):
        resolve_novelty({"sedes": [1]})
    with pytest.raises(ConfigError, match="unknown parameter"):
        run_novelty({"normal_classes": [[0]], "models": {"x": {"epoch": 1}}}, write=False)


def test_cli_novelty_command(tmp_path, capsys):
    code = main(["-q", "novelty", str(RECIPE), "normal_classes=[[7]]", f"out={tmp_path}", "models.union=null",
                 "models.dae=null", "models.arae.epochs=2",
                 "models.arae.steps=2", "models.plain_ae.epochs=2", "attack.steps=2"])
    assert code == 0
    text = capsys.readouterr().out
    assert "AUC (anomaly = positive)" in text and "arae" in text and (tmp_path / "summary.csv").is_file()
    assert main(["-q", "novelty", str(RECIPE), "protocol=p9"]) == 2
    assert "protocol must be one of p1, p2" in capsys.readouterr().err


# -- evidence -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_digits_arae_is_more_robust_than_a_plain_ae(tmp_path):
    """The recipe as shipped: one-class digits, p2-style, 10 classes, ARAE vs plain AE, both
    attacked on the test normals by L∞ latent PGD (ε 0.2). ARAE's mean AUC must drop less."""
    cfg = apply_overrides(load_novelty_recipe(RECIPE), {"out": str(tmp_path), "models": {"union": None, "dae": None}})
    assert set(m for m, p in cfg["models"].items() if p) == {"arae", "plain_ae"}
    summary = {r["model"]: r for r in run_novelty(cfg)["summary"]}
    arae, plain = summary["arae"], summary["plain_ae"]
    assert arae["normal_sets"] == plain["normal_sets"] == 10
    drop_arae = arae["auc_mean"] - arae["auc_attacked_mean"]
    drop_plain = plain["auc_mean"] - plain["auc_attacked_mean"]
    assert drop_plain > 0.005  # the attack does hurt an undefended AE
    assert drop_arae < drop_plain - 0.005
    assert arae["auc_mean"] > 0.9 and plain["auc_mean"] > 0.9


@pytest.mark.slow
def test_mnist_p2_one_class_from_idx_files(tmp_path):
    root = os.environ.get("STETHO_MNIST_DIR")
    if not root:
        pytest.skip("STETHO_MNIST_DIR not set (folder of MNIST's train-images-idx3-ubyte[.gz] etc.)")
    cfg = {"dataset": "mnist", "root": root, "protocol": "p2", "normal_classes": [[1]], "out": str(tmp_path),
           "models": {"arae": {"variant": "linf", "hidden": [128, 64], "latent": 32, "eps": 0.2, "steps": 5,
                               "epochs": 2, "batch_size": 128}}}
    (row,) = run_novelty(cfg)["rows"]
    assert row["auc"] > 0.8


def test_coil100_runs_protocol_p1_end_to_end_and_refuses_p2(tmp_path):
    from PIL import Image

    folder = tmp_path / "coil"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for k in (1, 2, 3):
        base = rng.integers(0, 256, (12, 12), dtype=np.uint8)
        for angle in range(0, 100, 5):
            noisy = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"obj{k}__{angle}.png")
    cfg = {"dataset": "coil100", "root": str(folder), "coil_size": 8, "protocol": "p1", "anomaly_fraction": 0.25,
           "normal_classes": [[1], [2, 3]], "models": {"plain": TINY["plain"]}, "out": str(tmp_path / "out")}
    out = run_novelty(cfg)
    assert [(s["normal"], s["train"], s["val"], s["test"], s["test_anomalies"]) for s in out["splits"]] == [
        ("1", 12, 4, 5, 1), ("2+3", 24, 8, 11, 3)]  # anomalies round(p/(1-p) · normals): 4/3, 8/3
    with pytest.raises(ConfigError, match="no official test split: use protocol p1"):
        run_novelty({**cfg, "protocol": "p2"}, write=False)


def test_novelty_models_come_from_the_registry():
    cfg = resolve_novelty({"models": {"a": {"model": "arae", "variant": "plain"}, "b": {"variant": "linf"}}})
    assert cfg["models"]["a"]["model"] == "arae"
    with pytest.raises(ConfigError, match="models.x: model 'ae' does not score image arrays; models that do: arae"):
        resolve_novelty({"models": {"x": {"model": "ae"}}})
    with pytest.raises(ConfigError, match="unknown model 'vae'"):
        resolve_novelty({"models": {"x": {"model": "vae"}}})
    with pytest.raises(ConfigError, match="models.x: unknown parameter"):
        resolve_novelty({"models": {"x": {"epoch": 1}}})
