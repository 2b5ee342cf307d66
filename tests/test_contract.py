"""The detector contract: declared parameters, calibration splits, thresholds, model files.

Model-agnostic parts are checked on every registered model; training parts on the AE (the
fastest); each model's own tests check its migration, tests/test_calibration.py the false-alarm
rates of every model.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from stetho.backends import fpr_threshold, gamma_threshold
from stetho.datasets.clip import Clip
from stetho.errors import ConfigError, StethoError
from stetho.models import MODELS, AEDetector, Detector, get_model
from stetho.models.base import COMMON_PARAMS, FitContext
from stetho.models.params import Interval, Options, SequenceOf, validate_params


# -- thresholds -------------------------------------------------------------------------------
def test_fpr_threshold_of_few_scores_is_a_log_normal_quantile():
    # 5 positive scores: log-normal with the mean and sample std of log(1..5);
    # t = exp(mu + z_0.9 * sd), z_0.9 = 1.2815515655446004.
    x = np.log([1.0, 2.0, 3.0, 4.0, 5.0])
    hand = float(np.exp(x.mean() + 1.2815515655446004 * x.std(ddof=1)))
    assert fpr_threshold([3.0, 1.0, 5.0, 2.0, 4.0], fpr=0.1) == pytest.approx(hand, rel=1e-9)
    # scores with negative values: normal; 0.5 falls on the mean
    assert fpr_threshold([-1.0, 0.0, 1.0, 2.0], fpr=0.5) == pytest.approx(0.5, abs=1e-9)
    # one score: nothing tells the spread; the threshold sits at it
    assert fpr_threshold([7.0], fpr=0.1) == pytest.approx(7.0, rel=1e-2)


def test_fpr_threshold_is_the_gamma_quantile_of_a_well_sampled_domain():
    s = np.random.default_rng(0).gamma(3.0, 2.0, size=400)
    shape, loc, scale = scipy.stats.gamma.fit(s)
    assert fpr_threshold(s, fpr=0.1) == pytest.approx(scipy.stats.gamma.ppf(0.9, shape, loc, scale), rel=1e-6)
    assert fpr_threshold(s, fpr=0.1) == pytest.approx(gamma_threshold(s, 0.9), rel=1e-6)


def test_fpr_threshold_weights_domains_equally_and_rescales_a_small_one():
    source = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    t = fpr_threshold(np.r_[source, 9.0], ["source"] * 5 + ["target"], fpr=0.1)
    # Hand model: source log-normal (mean, sample std of the logs); the one target clip (median 9)
    # takes the source distribution scaled by 9 / median(source) = 3.
    x = np.log(source)
    sf = lambda v: scipy.stats.norm.sf((np.log(v) - x.mean()) / x.std(ddof=1))  # noqa: E731
    assert 0.5 * (sf(t) + sf(t / 3.0)) == pytest.approx(0.1, abs=1e-9)
    # The target clip moves the threshold up: a source-only fit would judge target clips lower.
    assert t > fpr_threshold(source, fpr=0.1)
    # Equal weights: 100 source clips do not drown 5 target clips.
    rng = np.random.default_rng(1)
    big = rng.gamma(3, 1, 100)
    small = rng.gamma(3, 1, 5) * 3
    t2 = fpr_threshold(np.r_[big, small], ["s"] * 100 + ["t"] * 5, fpr=0.1)
    assert t2 > fpr_threshold(big, fpr=0.1) * 1.5


def test_fpr_threshold_survives_a_degenerate_gamma_fit():
    # Held-out BiGAN scores of a toy valve: scipy's 3-parameter Gamma fit puts loc at the minimum
    # with shape 0.17, whose 0.9 quantile (196.7) lies below 39 of the 40 scores.
    s = np.array([196.3, 196.4, 201.2, 202.4, 206.5, 207.6, 213.8, 216.1, 217.5, 219.9, 225.7, 226.6, 227.2,
                  227.4, 230.8, 231.9, 232.1, 235.4, 237.3, 239.1, 240.0, 241.0, 241.5, 250.0, 250.2, 251.1,
                  257.5, 261.5, 265.3, 265.3, 273.6, 277.0, 277.2, 278.9, 280.5, 296.6, 302.1, 318.7, 396.9, 400.0])
    shape, _, _ = scipy.stats.gamma.fit(s)
    assert shape < 1  # the degenerate fit this guards against
    t = fpr_threshold(s, fpr=0.1)
    assert np.quantile(s, 0.8) < t < np.quantile(s, 0.98)


def test_fpr_threshold_refuses_bad_input():
    with pytest.raises(ValueError, match="finite"):
        fpr_threshold([1.0, np.nan])
    with pytest.raises(ValueError, match="fpr must be in"):
        fpr_threshold([1.0, 2.0], fpr=1.0)


# -- parameters -------------------------------------------------------------------------------
def test_every_registered_model_declares_every_parameter():
    for name in MODELS:
        cls = get_model(name)
        declared = cls.parameter_constraints()
        params = cls.param_defaults()
        assert set(params) == set(declared), (name, sorted(set(params) ^ set(declared)))
        # The defaults themselves are allowed.
        validate_params(name, params, declared)
        assert set(COMMON_PARAMS) <= set(params)
        assert cls.score_modes and all(isinstance(m, str) for m in cls.score_modes)


BAD_PARAMS = [
    ("validation_split", 1.5), ("decision_quantile", 2.0), ("epochs", 0), ("score_mode", "nope"),
    ("decision_fpr", 0.0), ("threshold", "median"), ("threads", 0), ("calibration_split", 0.9),
]


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("key,value", BAD_PARAMS)
def test_bad_parameters_are_one_line_config_errors(model, key, value):
    cls = get_model(model)
    if key not in cls.param_defaults():
        pytest.skip(f"{model} has no parameter {key}")
    det = cls(**{key: value})
    with pytest.raises(ConfigError) as info:
        det.check_params()
    msg = str(info.value)
    assert "\n" not in msg and f"params.{key}={value!r}" in msg and "expected" in msg
    # fit checks them too, before any audio is read (the clip's file does not exist)
    with pytest.raises(ConfigError):
        det.fit([Clip(Path("/nowhere/x.wav"), "fan", "00", "train", "source", 0)])


def test_constraint_kinds_describe_what_they_accept():
    assert Interval(float, 0, 1, closed="left").accepts(0.0) and not Interval(float, 0, 1, "left").accepts(1.0)
    assert not Interval(int, 1, None).accepts(True) and not Interval(float, 0, 1).accepts(float("nan"))
    assert Options("a", "b").accepts("a") and not Options(1, 2).accepts(True)
    assert SequenceOf(int, min_len=1).accepts([1, 2]) and not SequenceOf(int, min_len=1).accepts("12")
    with pytest.raises(ConfigError, match=r"m: params.x=5 is not allowed; expected an integer in \[0, 1\] or null"):
        validate_params("m", {"x": 5}, {"x": [Interval(int, 0, 1), None]})


# -- calibration ------------------------------------------------------------------------------
def _clips(n_source=20, n_target=4, machines=("fan", "pump"), sections=("00", "01")):
    out = []
    for m in machines:
        for s in sections:
            out += [Clip(Path(f"/x/{m}_{s}_source_{i}.wav"), m, s, "train", "source", 0) for i in range(n_source)]
            out += [Clip(Path(f"/x/{m}_{s}_target_{i}.wav"), m, s, "train", "target", 0) for i in range(n_target)]
    return out


def test_holdout_is_stratified_by_machine_section_and_domain_and_seeded():
    clips = _clips()
    det = AEDetector(seed=3)
    held = det._holdout(clips)
    for m in ("fan", "pump"):
        for s in ("00", "01"):
            src = [i for i in held if clips[i].machine == m and clips[i].section == s and clips[i].domain == "source"]
            tgt = [i for i in held if clips[i].machine == m and clips[i].section == s and clips[i].domain == "target"]
            assert len(src) == 4 and len(tgt) == 1  # 20 % of 20, and round(0.8) = 1 of 4
    assert det._holdout(clips) == held and AEDetector(seed=4)._holdout(clips) != held
    # a group of two keeps both for training; a machine with one clip cannot be calibrated
    tiny = _clips(n_source=2, n_target=0, machines=("fan",), sections=("00",))
    assert len(det._holdout(tiny)) == 1  # one clip of the machine, none of a group would be held out
    with pytest.raises(ConfigError, match="fan has 1 training clip.*threshold=official"):
        det._holdout(_clips(n_source=1, n_target=0, machines=("fan",), sections=("00",)))


def test_folds_cover_every_clip_once():
    clips = _clips(n_source=10, n_target=3)
    det = AEDetector(calibration="cv", calibration_folds=4)
    det.machines_ = ["fan", "pump"]
    folds = det._folds(clips)
    assert sorted(i for f in folds for i in f) == list(range(len(clips)))
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def _logmels(rng, n, shift=0.0, frames=40):
    base = np.linspace(-40, -10, 128)
    return [(base + shift + rng.normal(scale=1.0, size=(frames, 128))).astype(np.float32) for _ in range(n)]


def _fan(n, domain="source", split="train", label=0):
    return [Clip(Path(f"/x/{split}_{domain}_{label}_{i:03d}.wav"), "fan", "00", split, domain, label)
            for i in range(n)]


@pytest.fixture(scope="module")
def ae_fitted(one_torch_thread):
    rng = np.random.default_rng(0)
    clips = _fan(40) + _fan(5, "target")
    feats = _logmels(rng, 40) + _logmels(rng, 5, shift=2.0)
    seen = []

    class Spy(AEDetector):
        def _fit(self, clips, feats, context):
            seen.extend(str(c.path) for c in clips)
            super()._fit(clips, feats, context)

    det = Spy(epochs=3, batch_size=64, device="cpu", seed=1).fit(clips, feats)
    return det, clips, feats, seen


def test_calibration_scores_are_out_of_sample(ae_fitted):
    det, clips, feats, seen = ae_fitted
    cal = det.calibration_["file"]
    assert len(cal) == 8 + 1 and not set(cal) & set(seen)
    assert sorted(cal + seen) == sorted(str(c.path) for c in clips)
    assert det.calibration_["domain"].count("target") == 1
    by_path = {str(c.path): (c, f) for c, f in zip(clips, feats)}
    again = det.score_all([by_path[p][0] for p in cal], [by_path[p][1] for p in cal])
    for mode in det.score_modes:
        np.testing.assert_allclose(det.decision_scores_[mode], again[mode], rtol=1e-6)
        assert set(det.thresholds_[mode]) == {"fan"}
        cal_domains = np.array(det.calibration_["domain"])
        thr = fpr_threshold(det.decision_scores_[mode], cal_domains, 0.1)
        assert det.threshold_for(mode, "fan") == pytest.approx(thr)


def test_refit_thresholds_and_calibrate(ae_fitted):
    det, clips, feats, _ = ae_fitted
    base = copy.deepcopy(det)
    before = dict(base.thresholds_["mse"])
    base.refit_thresholds(decision_fpr=0.3)
    assert base.threshold_for("mse", "fan") < before["fan"]
    base.refit_thresholds(decision_fpr=None, decision_quantile=0.9)
    assert base.threshold_for("mse", "fan") == pytest.approx(gamma_threshold(base.decision_scores_["mse"], 0.9))
    with pytest.raises(ConfigError, match="decision_fpr=2"):
        base.refit_thresholds(decision_fpr=2)
    base.refit_thresholds(decision_fpr=0.1)
    assert base.threshold_for("mse", "fan") == pytest.approx(before["fan"])
    # calibrate() on other normal clips replaces the calibration set
    rng = np.random.default_rng(5)
    other = _fan(12, split="more")
    base.calibrate(other, _logmels(rng, 12))
    assert base.calibration_["file"] == [str(c.path) for c in other]
    assert base.thresholds_ != det.thresholds_ and len(base.decision_scores_["mse"]) == 12


def test_official_threshold_trains_on_every_clip_and_fits_in_sample(one_torch_thread):
    rng = np.random.default_rng(2)
    clips, feats = _fan(12), _logmels(rng, 12)
    det = AEDetector(epochs=2, device="cpu", threshold="official").fit(clips, feats)
    assert det.calibration_["file"] == [str(c.path) for c in clips]
    np.testing.assert_allclose(det.decision_scores_["mse"], det.score(clips, feats, "mse"), rtol=1e-6)
    assert det.threshold_for("mse") == pytest.approx(gamma_threshold(det.decision_scores_["mse"], 0.9))


def test_cross_fitting_scores_every_clip_with_a_model_that_did_not_see_it(one_torch_thread, tmp_path):
    rng = np.random.default_rng(3)
    clips, feats = _fan(10), _logmels(rng, 10)
    fits = []

    class Spy(AEDetector):
        def _fit(self, clips, feats, context):
            fits.append(({str(c.path) for c in clips}, context.work_dir))
            super()._fit(clips, feats, context)

    det = Spy(epochs=1, device="cpu", calibration="cv", calibration_folds=5).fit(
        clips, feats, FitContext(work_dir=tmp_path))
    assert len(fits) == 6 and len(fits[-1][0]) == 10  # 5 folds, then the final fit on all
    assert [w.name for _, w in fits] == [f"fold_{k}" for k in range(1, 6)] + ["final"]
    assert det.calibration_["file"] == [str(c.path) for c in clips]
    for seen, _ in fits[:5]:
        assert len(seen) == 8
    assert np.isfinite(det.decision_scores_["mse"]).all()


# -- model files ------------------------------------------------------------------------------
def test_model_files_of_format_1_ask_for_a_retraining(tmp_path):
    old = tmp_path / "fan.pt"
    torch.save({"format": "stetho-detector", "version": 1, "model": "ae", "params": {}, "state": {}}, old)
    with pytest.raises(StethoError, match=r"fan.pt: written by an older stetho .* re-train with stetho >= 0.2.0"):
        Detector.load(old)


def test_save_load_keeps_the_base_state(ae_fitted, tmp_path):
    det, clips, feats, _ = ae_fitted
    det.save(tmp_path / "m.pt")
    back = Detector.load(tmp_path / "m.pt")
    assert back.thresholds_ == det.thresholds_ and back.calibration_ == det.calibration_
    for mode in det.score_modes:
        np.testing.assert_array_equal(back.decision_scores_[mode], det.decision_scores_[mode])
    np.testing.assert_array_equal(back.predict(clips, feats, "mse"), det.predict(clips, feats, "mse"))


# -- the command line -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_audio_data(tmp_path_factory):
    """A DCASE-layout folder whose only training file is not audio: a parameter error must come
    before any audio is decoded."""
    root = tmp_path_factory.mktemp("badaudio")
    train = root / "fan" / "train"
    train.mkdir(parents=True)
    (train / "section_00_source_train_normal_0000_a.wav").write_bytes(b"not a wav")
    return root


CLI_CASES = [
    ("ae", ["--param", "validation_split=1.5"], "params.validation_split=1.5"),
    ("ae", ["--param", "decision_quantile=2.0"], "params.decision_quantile=2.0"),
    ("ae", ["--epochs", "0"], "params.epochs=0"),
    ("discriminative", ["--param", "score_mode=nope"], "params.score_mode='nope'"),
    ("bigan", ["--epochs", "0"], "params.epochs=0"),
    ("arae", ["--param", "eps=-1"], "params.eps=-1"),
    ("cande", ["--decision-fpr", "1.5"], "params.decision_fpr=1.5"),
    ("ae", ["--param", "no_such=1"], "unknown parameter(s) no_such"),
]


@pytest.mark.parametrize("model,args,expected", CLI_CASES)
def test_cli_bad_parameters_print_one_line_and_no_traceback(bad_audio_data, tmp_path, capsys, model, args, expected):
    from stetho.cli import main

    code = main(["train", "--data", str(bad_audio_data), "--out", str(tmp_path / "r"), "--model", model,
                 "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("stetho: error:")]
    assert len(errors) == 1 and expected in errors[0], err
    assert "not a wav" not in err and "audio file" not in err  # checked before any audio is decoded
    assert not (tmp_path / "r").exists()


def test_recipe_bad_parameter_is_a_one_line_error_of_the_real_command(bad_audio_data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {bad_audio_data}\nout: {tmp_path / 'run'}\nmodel: ae\nparams:\n  epochs: 0\n")
    proc = subprocess.run([sys.executable, "-m", "stetho.cli", "run", str(recipe), "progress=false"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "stetho: error: ae: params.epochs=0 is not allowed; expected an integer >= 1" in proc.stderr


def test_few_calibration_clips_are_warned_about(one_torch_thread, caplog):
    rng = np.random.default_rng(6)
    with caplog.at_level("WARNING", logger="stetho.models.base"):
        AEDetector(epochs=1, device="cpu").fit(_fan(10), _logmels(rng, 10))
    assert "thresholds of fan rest on 2 held-out normal clip(s)" in caplog.text
