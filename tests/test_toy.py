"""Tests of the synthetic toy dataset (stetho.synth).

The dataset is the demo's data and the end-to-end tests' data, so besides the layout we check
that it is deterministic, that machine types and attributes really sound different, and that
anomalies are detectable by a simple detector without being trivial.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import itertools
import re
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from stetho.datasets.clip import ANOMALY, NORMAL, SOURCE, TARGET, Clip
from stetho.synth import (
    factory_events,
    FAULT_LEVEL_DB,
    MACHINES,
    make_toy_dataset,
    plan_toy_dataset,
    rms,
    synthesize_clip,
)
from stetho.errors import ConfigError

SR = 16000
# Written independently of the module's own pattern: DCASE2023 development file names.
DCASE_NAME = re.compile(
    r"^section_00_(source|target)_(train|test)_(normal|anomaly)_(\d{4})"
    r"((?:_[A-Za-z0-9.\-]+_[A-Za-z0-9.\-]+)+)\.wav$"
)
SMALL = dict(machines=["fan", "valve"], train_clips=3, target_train_clips=2, test_clips=2, duration=1.0)


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _parse(name: str) -> tuple[str, str, str, int, tuple[tuple[str, str], ...]]:
    m = DCASE_NAME.match(name)
    assert m, f"not a DCASE2023 file name: {name}"
    domain, split, state, index, attrs = m.groups()
    parts = attrs[1:].split("_")
    return domain, split, state, int(index), tuple(zip(parts[::2], parts[1::2]))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, list[Clip]]:
    out = tmp_path_factory.mktemp("toy")
    return out, make_toy_dataset(out, **SMALL, seed=0)


# ---- layout -----------------------------------------------------------------------------------


def test_layout_counts_and_file_names(small):
    out, _ = small
    assert sorted(p.name for p in out.iterdir()) == ["fan", "valve"]
    for machine in ("fan", "valve"):
        train = sorted((out / machine / "train").iterdir())
        test = sorted((out / machine / "test").iterdir())
        assert len(train) == 3 + 2 and len(test) == 4 * 2
        groups: dict[tuple[str, str, str], list[int]] = {}
        for f in train + test:
            domain, split, state, index, attrs = _parse(f.name)
            assert split == f.parent.name
            assert [k for k, _ in attrs] == list(MACHINES[machine].attribute_names)
            groups.setdefault((domain, split, state), []).append(index)
        # NNNN counts from 0000 within each (domain, split, label), as in DCASE.
        assert {k: sorted(v) for k, v in groups.items()} == {
            ("source", "train", "normal"): [0, 1, 2],
            ("target", "train", "normal"): [0, 1],
            ("source", "test", "normal"): [0, 1],
            ("source", "test", "anomaly"): [0, 1],
            ("target", "test", "normal"): [0, 1],
            ("target", "test", "anomaly"): [0, 1],
        }
        assert not any(f.name.startswith(".") for f in (out / machine).rglob("*"))  # no temp files left


def test_attributes_csv_matches_files(small):
    out, _ = small
    for machine in ("fan", "valve"):
        with open(out / machine / "attributes_00.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["file_name", "d1p", "d1v", "d2p", "d2v"]
        files = {f"{machine}/{p.parent.name}/{p.name}" for p in (out / machine).rglob("*.wav")}
        assert {r[0] for r in rows[1:]} == files and len(rows) - 1 == len(files)
        for name, *cells in rows[1:]:
            assert tuple(zip(cells[::2], cells[1::2])) == _parse(Path(name).name)[4]


def test_wav_format(small):
    out, clips = small
    for clip in clips:
        info = sf.info(clip.path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV")
        assert info.frames == int(SMALL["duration"] * SR)
    y, _ = sf.read(clips[0].path, dtype="float32")
    assert 0.001 < rms(y) < 0.5  # audible, not clipped


def test_returned_clips_agree_with_file_names(small):
    out, clips = small
    assert clips == sorted(clips, key=lambda c: c.path)
    assert {c.path for c in clips} == set(out.rglob("*.wav"))
    counts: collections.Counter = collections.Counter()
    for c in clips:
        domain, split, state, _, attrs = _parse(c.name)
        assert (c.section, c.split, c.domain, c.attributes) == ("00", split, domain, attrs)
        assert c.label == (ANOMALY if state == "anomaly" else NORMAL)
        assert c.machine == c.path.parent.parent.name
        counts[(c.machine, c.split, c.domain, c.label)] += 1
    for m in ("fan", "valve"):
        assert counts[(m, "train", SOURCE, NORMAL)] == 3
        assert counts[(m, "train", TARGET, NORMAL)] == 2
        for dom, lab in itertools.product((SOURCE, TARGET), (NORMAL, ANOMALY)):
            assert counts[(m, "test", dom, lab)] == 2
    assert not any(c.split == "train" and c.label == ANOMALY for c in clips)


def test_zero_test_and_target_clips(tmp_path):
    clips = make_toy_dataset(tmp_path, ["pump"], train_clips=2, target_train_clips=0, test_clips=0,
                             duration=0.5)
    assert [c.name[:33] for c in clips] == ["section_00_source_train_normal_00"] * 2
    assert not (tmp_path / "pump" / "test").exists()
    with open(tmp_path / "pump" / "attributes_00.csv") as fh:
        assert len(fh.read().splitlines()) == 1 + 2


def test_rerun_with_fewer_clips_removes_stale_files(tmp_path):
    make_toy_dataset(tmp_path, ["fan"], train_clips=4, target_train_clips=1, test_clips=1, duration=0.3)
    clips = make_toy_dataset(tmp_path, ["fan"], train_clips=2, target_train_clips=1, test_clips=1, duration=0.3)
    assert set((tmp_path / "fan").rglob("*.wav")) == {c.path for c in clips}


# ---- determinism ------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    out, _ = small
    again = make_toy_dataset(tmp_path / "again", **SMALL, seed=0)
    assert len(again) == len(_hashes(out)) - 2  # two CSV files
    assert _hashes(tmp_path / "again") == _hashes(out)
    wav_hashes = [h for k, h in _hashes(out).items() if k.endswith(".wav")]
    assert len(set(wav_hashes)) == len(wav_hashes)  # every clip is its own recording
    make_toy_dataset(tmp_path / "other", **SMALL, seed=1)
    h0, h1 = _hashes(out), _hashes(tmp_path / "other")
    wavs = [k for k in h0 if k.endswith(".wav")]
    assert h1.keys() == h0.keys()
    assert all(h0[k] != h1[k] for k in wavs)


def test_machine_alone_equals_machine_with_others(small, tmp_path):
    out, _ = small
    alone = dict(SMALL, machines=["valve"])
    make_toy_dataset(tmp_path, **alone, seed=0)
    assert _hashes(tmp_path / "valve") == {
        k.removeprefix("valve/"): v for k, v in _hashes(out).items() if k.startswith("valve/")
    }


def test_each_clip_has_its_own_generator(small, tmp_path):
    # More training clips must not change the first ones (each clip is seeded by its index).
    out, _ = small
    make_toy_dataset(tmp_path, **dict(SMALL, machines=["fan"], train_clips=5), seed=0)
    h_small, h_big = _hashes(out / "fan" / "train"), _hashes(tmp_path / "fan" / "train")
    assert h_small.items() <= h_big.items() and len(h_big) == len(h_small) + 2


# ---- domains and attributes -------------------------------------------------------------------


def test_registry_attributes_are_valid_and_target_combinations_are_new():
    assert {"fan", "pump", "valve", "slider", "gearbox"} <= set(MACHINES)
    for name, m in MACHINES.items():
        assert len(m.source_attributes) >= 2, name
        assert [a for a, _ in m.target_attributes] == [a for a, _ in m.source_attributes]
        for attr, values in m.source_attributes + m.target_attributes:
            assert values and all(re.fullmatch(r"[A-Za-z0-9.\-]+", s) for s in (attr, *values)), (name, attr)
        assert set(m.combinations(SOURCE)).isdisjoint(m.combinations(TARGET)), name
        assert len(m.anomalies) >= 3, name


def test_target_files_use_attribute_values_not_in_source(small):
    _, clips = small
    for m in ("fan", "valve"):
        src = {c.attributes for c in clips if c.machine == m and c.domain == SOURCE}
        tgt = {c.attributes for c in clips if c.machine == m and c.domain == TARGET}
        assert src and tgt and src.isdisjoint(tgt)


# ---- the sounds -------------------------------------------------------------------------------


def _profile(machine: str, attributes: dict, seeds, duration: float = 4.0, domain: str = SOURCE) -> np.ndarray:
    """Spectral shape (mean log-mel minus its overall level) and temporal spread (std over time
    of each log-mel band) averaged over clips: 128 values in dB."""
    means, stds = [], []
    for s in seeds:
        y = synthesize_clip(machine, domain, None, attributes, duration, SR, np.random.default_rng(s))
        mel = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=1024, hop_length=512, n_mels=64)
        lm = 10 * np.log10(mel + 1e-10)
        means.append(lm.mean(axis=1))
        stds.append(lm.std(axis=1))
    m = np.mean(means, axis=0)
    return np.concatenate([m - m.mean(), np.mean(stds, axis=0)])


def _dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_machine_types_sound_different():
    first = {m: dict(MACHINES[m].combinations(SOURCE)[0]) for m in MACHINES}
    a = {m: _profile(m, first[m], [0, 1], duration=2.0) for m in MACHINES}
    b = {m: _profile(m, first[m], [2, 3], duration=2.0) for m in MACHINES}
    noise = max(_dist(a[m], b[m]) for m in MACHINES)  # clip-to-clip variation of one machine
    for m1, m2 in itertools.combinations(MACHINES, 2):
        d = _dist(a[m1], a[m2])
        assert d > 1.5 and d > 2.5 * noise, (m1, m2, d, noise)


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_every_attribute_changes_the_sound(machine):
    mtype = MACHINES[machine]
    base = dict(mtype.combinations(SOURCE)[0])
    ref = _profile(machine, base, [0, 1, 2])
    noise = _dist(ref, _profile(machine, base, [3, 4, 5]))
    changed = 0
    for attr, values in mtype.source_attributes:
        if len(values) > 1:
            d = _dist(ref, _profile(machine, dict(base, **{attr: values[-1]}), [0, 1, 2]))
            assert d > 1.4 * noise and d > 0.25, (attr, d, noise)
            changed += 1
    assert changed >= 1


def test_anomalies_are_subtle_not_dominant():
    # The fault sound stays below the machine's own level...
    for mtype in MACHINES.values():
        levels = [FAULT_LEVEL_DB[k][1] + mtype.fault_offset_db for k in mtype.anomalies if k in FAULT_LEVEL_DB]
        assert levels and max(levels) <= -3.0, mtype.name
    # ...so an anomalous recording is about as loud as a normal one.
    for machine, mtype in MACHINES.items():
        attrs = dict(mtype.combinations(SOURCE)[0])

        def level(kind):
            clips = [synthesize_clip(machine, SOURCE, kind, attrs, 1.0, SR, np.random.default_rng(s)) for s in range(3)]
            return np.mean([20 * np.log10(rms(y)) for y in clips])

        normal = level(None)
        for kind in mtype.anomalies:
            assert abs(level(kind) - normal) < 3.0, (machine, kind)


def test_anomaly_kinds_are_varied_and_not_in_file_names():
    plans = plan_toy_dataset(None, train_clips=0, target_train_clips=0, test_clips=40, seed=0)
    for machine, mtype in MACHINES.items():
        kinds = {p.anomaly for p in plans if p.machine == machine and p.label == ANOMALY}
        assert kinds == set(mtype.anomalies), machine
        assert all(p.anomaly is None for p in plans if p.machine == machine and p.label == NORMAL)
    assert not any(k in p.file_name for p in plans for k in ("bearing", "leak", "drift", "rub", "missing"))


def test_synthesize_clip_every_machine_and_kind():
    for machine, mtype in MACHINES.items():
        for domain in (SOURCE, TARGET):
            attrs = dict(mtype.combinations(domain)[-1])
            for kind in (None, *mtype.anomalies):
                y = synthesize_clip(machine, domain, kind, attrs, 0.25, SR, np.random.default_rng(7))
                assert y.dtype == np.float32 and y.shape == (4000,), (machine, kind)
                assert np.all(np.isfinite(y)) and np.max(np.abs(y)) <= 1.0 and rms(y) > 1e-3, (machine, kind)
                again = synthesize_clip(machine, domain, kind, attrs, 0.25, SR, np.random.default_rng(7))
                assert np.array_equal(y, again)


def _proxy_source_auc(root: Path, clips: list[Clip], machine: str) -> float:
    """The calibration proxy: 5-frame stacked log-mel vectors, PCA reconstruction error."""

    def vectors(path: Path) -> np.ndarray:
        y, sr = sf.read(path, dtype="float32")
        mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=1024, hop_length=512, n_mels=128, power=2.0)
        lm = 10 * np.log10(mel + 1e-10)
        t = lm.shape[1] - 4
        return np.concatenate([lm[:, i : i + t] for i in range(5)]).T

    mine = [c for c in clips if c.machine == machine]
    train = np.concatenate([vectors(c.path) for c in mine if c.split == "train"])
    pca = PCA(16, random_state=0).fit(train)
    test = [c for c in mine if c.split == "test" and not (c.domain == TARGET and c.label == NORMAL)]
    scores = []
    for c in test:
        v = vectors(c.path)
        scores.append(float(np.mean((v - pca.inverse_transform(pca.transform(v))) ** 2)))
    return roc_auc_score([c.label for c in test], scores)


@pytest.mark.parametrize("seed", [0, 1])
def test_anomalies_detectable_but_not_trivially(tmp_path, seed):
    machines = ["fan", "bearing"]
    clips = make_toy_dataset(tmp_path, machines, train_clips=30, target_train_clips=3, test_clips=10,
                             duration=2.0, seed=seed)
    aucs = [_proxy_source_auc(tmp_path, clips, m) for m in machines]
    assert np.mean(aucs) > 0.65, aucs
    assert np.mean(aucs) < 0.99, aucs  # subtle faults: a linear model must not separate everything


# ---- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(machines=["fan", "blender"]), "blender"),
        (dict(train_clips=-1), "train_clips"),
        (dict(target_train_clips=-2), "target_train_clips"),
        (dict(test_clips=-1), "test_clips"),
        (dict(test_clips=1.5), "test_clips"),
        (dict(duration=0.0), "duration"),
        (dict(duration=-1.0), "duration"),
        (dict(duration=float("nan")), "duration"),
        (dict(seed=-1), "seed"),
        (dict(machines=[]), "no machines"),
        (dict(sr=100), "sr"),
    ],
)
def test_bad_arguments_raise_config_error(tmp_path, kwargs, message):
    args = dict(machines=["fan"], train_clips=1, target_train_clips=0, test_clips=0, duration=0.2)
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        make_toy_dataset(tmp_path, **args)
    assert not list(tmp_path.rglob("*.wav"))  # nothing written before the check


def test_unknown_machine_message_lists_known_names(tmp_path):
    with pytest.raises(ConfigError) as err:
        make_toy_dataset(tmp_path, ["blender"])
    assert all(m in str(err.value) for m in MACHINES)


def test_synthesize_clip_bad_arguments():
    rng = np.random.default_rng(0)
    fan = {"spd": "20", "load": "1"}
    with pytest.raises(ConfigError, match="anomaly"):
        synthesize_clip("fan", SOURCE, "missing", fan, 1.0, SR, rng)  # a valve fault
    with pytest.raises(ConfigError, match="domain"):
        synthesize_clip("fan", "elsewhere", None, fan, 1.0, SR, rng)
    with pytest.raises(ConfigError, match="load"):
        synthesize_clip("fan", SOURCE, None, {"spd": "20"}, 1.0, SR, rng)
    with pytest.raises(ConfigError, match="numbers"):
        synthesize_clip("fan", SOURCE, None, {"spd": "fast", "load": "1"}, 1.0, SR, rng)
    with pytest.raises(ConfigError, match="machine"):
        synthesize_clip("lathe", SOURCE, None, {}, 1.0, SR, rng)


def test_no_output_on_stdout(tmp_path, capsys):
    make_toy_dataset(tmp_path, ["gearbox"], train_clips=1, target_train_clips=0, test_clips=0, duration=0.2)
    assert capsys.readouterr().out == ""


def test_strong_domain_shift_changes_only_the_target_site(small, tmp_path):
    out, _ = small
    strong = tmp_path / "strong"
    make_toy_dataset(strong, **SMALL, seed=0, domain_shift="strong")
    mild, shifted = _hashes(out), _hashes(strong)
    assert mild.keys() == shifted.keys()
    for name, h in mild.items():
        if name.endswith(".wav"):  # source clips are the same bytes; target clips are not
            assert (h == shifted[name]) == ("_source_" in name), name
    # the target site is louder relative to the machine: more energy below 200 Hz (brown noise, hum)
    def low_share(path):
        y, sr = sf.read(path)
        spec = np.abs(np.fft.rfft(y)) ** 2
        return spec[: int(200 * len(y) / sr)].sum() / spec.sum()

    targets = sorted((out / "fan" / "train").glob("*_target_*.wav"))
    assert targets
    for p in targets:
        assert low_share(strong / "fan" / "train" / p.name) > 2 * low_share(p)
    with pytest.raises(ConfigError, match="domain_shift must be one of mild, strong, factory"):
        make_toy_dataset(tmp_path / "x", **SMALL, domain_shift="huge")


def _frame_db(y: np.ndarray, frame: int = 1024) -> np.ndarray:
    frames = y[: len(y) // frame * frame].reshape(-1, frame)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def test_factory_setting_adds_events_at_both_sites(tmp_path):
    strong, factory = tmp_path / "strong", tmp_path / "factory"
    args = dict(machines=["fan"], train_clips=6, target_train_clips=6, test_clips=0, duration=3.0, seed=0)
    make_toy_dataset(strong, **args, domain_shift="strong")
    make_toy_dataset(factory, **args, domain_shift="factory")
    again = tmp_path / "again"
    make_toy_dataset(again, **args, domain_shift="factory")
    assert _hashes(factory) == _hashes(again)  # reproducible byte for byte
    busier, changed = [], collections.Counter()
    for p in sorted((strong / "fan" / "train").glob("*.wav")):
        a, _ = sf.read(p)
        b, _ = sf.read(factory / "fan" / "train" / p.name)
        if np.array_equal(a, b):  # a quiet moment: no event in this clip (drawn per clip)
            continue
        changed["source" if "_source_" in p.name else "target"] += 1
        # the machine and site are the same sound under the events: most of the clip still matches
        assert np.corrcoef(a, b)[0, 1] > 0.3, p.name
        # the events come and go: the frame level varies more over time than without them
        busier.append(np.std(_frame_db(b)) > np.std(_frame_db(a)))
    assert changed["source"] >= 4 and changed["target"] >= 4  # both sites get events
    assert np.mean(busier) >= 0.5


def test_factory_events_differ_by_site_and_are_unit_rms():
    n = 4 * SR
    for seed in range(6):
        y = factory_events(n, SR, np.random.default_rng(seed), SOURCE)
        assert y.shape == (n,) and y.dtype.kind == "f"
        r = float(np.sqrt(np.mean(y**2)))
        assert r == pytest.approx(1.0, abs=1e-6) or r == 0.0  # nothing at all happens in some clips
    np.testing.assert_array_equal(factory_events(n, SR, np.random.default_rng(3), TARGET),
                                  factory_events(n, SR, np.random.default_rng(3), TARGET))
    # the target site has more impacts and differently pitched vehicles and machines
    def spectrum(domain):
        acc = np.zeros(n // 2 + 1)
        for seed in range(20):
            acc += np.abs(np.fft.rfft(factory_events(n, SR, np.random.default_rng(seed), domain))) ** 2
        return acc / acc.sum()

    src, tgt = spectrum(SOURCE), spectrum(TARGET)
    assert 0.5 * np.abs(src - tgt).sum() > 0.2  # total-variation distance of the two spectra
