"""The Python API (issue 23 item 4, :mod:`stetho.models.inputs`): detectors fitted and scored on
audio file / folder paths and on float sample arrays give the same scores as on the equivalent
:class:`Clip` records; the scikit-learn / PyOD names (``decision_function``, ``score_samples``,
``predict``, ``get_params`` / ``set_params``) work with ``sklearn.base.clone`` and a ``Pipeline``;
bad input is one error naming the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from stetho.datasets.clip import NORMAL, Clip
from stetho.errors import AudioError, ConfigError, NotFittedError
from stetho.models import MODELS, AEDetector, StatsDetector, get_model
from stetho.models.inputs import DEFAULT_MACHINE_TYPE
from stetho.synth import make_toy_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    """A tiny toy fan set (10 training clips, 8 test clips of 1 s at 16 kHz) as folders, file
    lists, the equivalent clips and the samples as float32 arrays."""
    root = tmp_path_factory.mktemp("api")
    make_toy_dataset(root, machines=["fan"], train_clips=8, target_train_clips=2, test_clips=2, duration=1.0, seed=0)
    train_dir, test_dir = root / "fan" / "train", root / "fan" / "test"
    train, test = sorted(train_dir.glob("*.wav")), sorted(test_dir.glob("*.wav"))
    rate = sf.info(str(train[0])).samplerate
    return {
        "train_dir": train_dir, "train": train, "test": test, "sr": rate,
        # what a folder of one's own recordings gives: section 00, no domain, normal training clips
        "train_clips": [Clip(p, "fan", "00", "train", None, NORMAL) for p in train],
        "test_clips": [Clip(p, "fan", "00", "test") for p in test],
        "train_array": np.stack([sf.read(str(p), dtype="float32")[0] for p in train]),
        "test_array": np.stack([sf.read(str(p), dtype="float32")[0] for p in test]),
    }


def _stats() -> StatsDetector:
    return StatsDetector(device="cpu", threads=1)


def _ae() -> AEDetector:
    return AEDetector(epochs=1, batch_size=64, device="cpu", seed=3, threads=1)


@pytest.mark.parametrize("make", [_stats, _ae], ids=["stats", "ae"])
def test_paths_and_arrays_score_as_clips(toy, make):
    on_clips = make().fit(toy["train_clips"])
    on_folder = make().fit(toy["train_dir"], machine_type="fan")
    on_files = make().fit([str(p) for p in toy["train"]], machine_type="fan")
    on_array = make().fit(toy["train_array"], sample_rate=toy["sr"], machine_type="fan")
    expected = on_clips.score_all(toy["test_clips"])
    assert set(expected) == set(on_clips.score_modes)
    for det in (on_folder, on_files, on_array):
        assert det.thresholds_ == on_clips.thresholds_
        for mode, scores in expected.items():
            np.testing.assert_array_equal(det.score(toy["test"], mode=mode), scores)
            np.testing.assert_array_equal(det.score(toy["test_array"], mode=mode, sample_rate=toy["sr"]), scores)
            np.testing.assert_array_equal(det.score(toy["test_clips"], mode=mode), scores)
    # one file, one 1-D array: one score each, the same as in the batch
    first = expected[on_clips.score_modes[0]][0]
    assert on_array.score(str(toy["test"][0]))[0] == first
    assert on_array.score(toy["test_array"][0], sample_rate=toy["sr"])[0] == first
    # a list of 1-D arrays of different lengths is one clip each
    ragged = [toy["test_array"][0], toy["test_array"][1][: toy["sr"] // 2]]
    scores = on_array.score(ragged, sample_rate=toy["sr"])
    assert scores.shape == (2,) and scores[0] == first


def test_sklearn_and_pyod_names(toy):
    det = _stats().fit(toy["train_dir"])
    assert det.machines_ == [DEFAULT_MACHINE_TYPE]
    scores = det.decision_function(toy["test"])
    np.testing.assert_array_equal(scores, det.score(toy["test"]))
    np.testing.assert_array_equal(det.score_samples(toy["test"]), -scores)  # sklearn: higher = more normal
    threshold = det.threshold_[DEFAULT_MACHINE_TYPE]
    predicted = det.predict(toy["test"])
    assert predicted.dtype == np.int64 and set(predicted) <= {0, 1}  # PyOD: 1 = anomalous
    np.testing.assert_array_equal(predicted, (scores > threshold).astype(np.int64))
    for mode in det.score_modes:
        np.testing.assert_array_equal(det.predict(toy["test"], mode=mode),
                                      (det.score(toy["test"], mode=mode) > det.threshold_for(mode)).astype(np.int64))
    # set_params / get_params round trip; an unknown name is refused, naming it
    assert det.set_params(k=3, decision_fpr=0.05) is det
    assert det.get_params()["k"] == 3 and det.get_params(deep=False)["decision_fpr"] == 0.05
    with pytest.raises(ConfigError, match="unknown parameter.*n_neighbours"):
        det.set_params(n_neighbours=3)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_clone_gives_an_unfitted_copy_with_the_same_parameters(name):
    det = get_model(name)(seed=7, device="cpu")
    copy = clone(det)
    assert type(copy) is type(det) and copy is not det
    assert copy.get_params() == det.get_params()


def test_clone_of_a_fitted_detector_and_a_pipeline(toy):
    det = _stats().set_params(gmm_components=1).fit(toy["train_dir"], machine_type="fan")
    copy = clone(det)
    assert copy.get_params() == det.get_params()
    with pytest.raises(NotFittedError):
        copy.decision_function(toy["test"])
    pipe = Pipeline([("detector", clone(det))]).fit(toy["train_dir"], detector__machine_type="fan")
    np.testing.assert_array_equal(pipe.decision_function(toy["test"]), det.decision_function(toy["test"]))
    np.testing.assert_array_equal(pipe.predict(toy["test"]), det.predict(toy["test"]))
    np.testing.assert_array_equal(pipe.score_samples(toy["test"]), det.score_samples(toy["test"]))
    # arrays through a Pipeline: the rate as a fit parameter of the step
    pipe = Pipeline([("detector", clone(det))]).fit(toy["train_array"], detector__sample_rate=toy["sr"],
                                                    detector__machine_type="fan")
    np.testing.assert_array_equal(pipe[-1].decision_function(toy["test_array"], sample_rate=toy["sr"]),
                                  det.decision_function(toy["test"]))


def test_bad_input_errors_name_the_problem(toy, tmp_path):
    det = _stats().fit(toy["train_dir"], machine_type="fan")
    sr = toy["sr"]
    pcm = (toy["test_array"] * 32767).astype(np.int16)
    with pytest.raises(ConfigError, match=r"must be float.*got dtype int16.*divide int16 samples by 32768"):
        det.score(pcm, sample_rate=sr)
    with pytest.raises(ConfigError, match=r"array of shape \(8, 16000\) needs its sample rate: pass sample_rate="):
        det.score(toy["test_array"])
    with pytest.raises(ConfigError, match=r"needs its sample rate"):
        _stats().fit(toy["train_array"])
    with pytest.raises(ConfigError, match=r"\(n_samples,\) or \(n_clips, n_samples\), got shape \(2, 4, 16000\)"):
        det.score(toy["test_array"][:8].reshape(2, 4, -1), sample_rate=sr)
    missing = tmp_path / "no_such_recording.wav"
    with pytest.raises(ConfigError, match=f"{missing}: no such file or folder"):
        det.score([toy["test"][0], missing])
    with pytest.raises(ConfigError, match=f"{tmp_path}: no such file or folder|folder {tmp_path} holds no audio"):
        _stats().fit(tmp_path)
    with pytest.raises(ConfigError, match=r"expected Clip objects, audio file or folder paths.*got dict"):
        det.score({"a": 1})
    with pytest.raises(ConfigError, match=r"unknown machine type 'fna' \(did you mean 'fan'\?\)"):
        det.score(toy["test"], machine_type="fna")
    with pytest.raises(ConfigError, match="sample_rate= is for arrays"):
        det.score(toy["test"], sample_rate=sr)
    with pytest.raises(ConfigError, match="features= goes with Clip objects only"):
        det.score(toy["test"], [np.zeros((32, 128), np.float32)] * len(toy["test"]))
    with pytest.raises(AudioError, match=r"<array row 1>: contains 1 NaN/inf sample"):
        bad = toy["test_array"][:2].copy()
        bad[1, 100] = np.nan
        det.score(bad, sample_rate=sr)
    with pytest.raises(AudioError, match=r"<array>: too short"):
        det.score(np.zeros(100, np.float32), sample_rate=sr)


def test_several_machine_types_need_machine_type(toy):
    clips = toy["train_clips"] + [Clip(p, "pump", "00", "train", None, NORMAL) for p in toy["train"]]
    det = _stats().fit(clips)
    with pytest.raises(ConfigError, match=r"scores several machine types \(fan, pump\).*machine_type="):
        det.score(toy["test"])
    np.testing.assert_array_equal(det.score(toy["test"], machine_type="pump"),
                                  det.score([Clip(p, "pump", "00", "test") for p in toy["test"]]))
