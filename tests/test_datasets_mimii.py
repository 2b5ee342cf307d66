"""Tests of stetho.datasets.mimii: MIMII folders at every root level, and both split rules."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stetho.datasets import Clip, scan_dataset
from stetho.datasets.mimii import SPLIT_RULES, looks_like, scan, split_folder
from stetho.errors import ConfigError, DatasetError


def make_id(folder: Path, n_normal: int, n_abnormal: int, wav: bool = False) -> Path:
    """``folder`` (an ``id_XX`` folder) with ``normal/`` and ``abnormal/`` files ``00000000.wav`` ..."""
    for sub, n in (("normal", n_normal), ("abnormal", n_abnormal)):
        d = folder / sub
        d.mkdir(parents=True, exist_ok=True)
        # created in reverse order: the split must not depend on directory order
        for i in reversed(range(n)):
            path = d / f"{i:08d}.wav"
            if wav:
                sf.write(path, np.zeros((160, 8), dtype=np.int16), 16000, subtype="PCM_16")
            else:
                path.write_bytes(b"")
    return folder


def make_tree(root: Path, snr: str, machine: str, mid: str, n_normal: int, n_abnormal: int) -> Path:
    return make_id(root / f"{snr}_dB_{machine}" / machine / f"id_{mid}", n_normal, n_abnormal)


def rel(clips, root):
    return [(c.path.relative_to(root).as_posix(), c.split, c.label) for c in clips]


# ---------------------------------------------------------------- split rules by hand


def test_split_folder_by_hand():
    normals = [Path(f"{i:08d}.wav") for i in (6, 2, 0, 5, 1, 4, 3)]  # 7, unsorted
    abnormals = [Path(f"a{i}.wav") for i in range(3)]
    train, val, test = split_folder(normals, abnormals, "baseline")
    assert [p.stem for p in test] == ["00000000", "00000001", "00000002"] and val == []
    assert [p.stem for p in train] == ["00000003", "00000004", "00000005", "00000006"]
    train, val, test = split_folder(normals, abnormals, "cande")  # 7 // 2 = 3 in test; ⌊0.4⌋ = 0 validation
    assert [p.stem for p in test] == ["00000000", "00000001", "00000002"] and val == []
    assert [p.stem for p in train] == ["00000003", "00000004", "00000005", "00000006"]
    ten = [Path(f"{i:08d}.wav") for i in range(10)]
    train, val, test = split_folder(ten, abnormals, "baseline")  # 3 abnormals → 3 test normals
    assert [p.stem for p in test] == [f"{i:08d}" for i in range(3)]
    assert [p.stem for p in train] == [f"{i:08d}" for i in range(3, 10)]
    train, val, test = split_folder(ten, abnormals, "cande")  # first half test
    assert [p.stem for p in test] == [f"{i:08d}" for i in range(5)]
    assert [p.stem for p in train] == [f"{i:08d}" for i in range(5, 10)]
    # 40 normals: train = 20-39, validation = the first ⌊0.1 · 20⌋ = 2 test normals
    forty = [Path(f"{i:08d}.wav") for i in range(40)]
    train, val, test = split_folder(forty, abnormals, "cande")
    assert train == forty[20:] and val == forty[:2] and test == forty[2:20]  # disjoint (default)
    train, val, test = split_folder(forty, abnormals, "cande-overlap")
    assert train == forty[20:] and val == forty[:2] and test == forty[:20]  # the original: tested too
    # more abnormals than normals: baseline puts every normal in test
    two = ten[:2]
    assert split_folder(two, abnormals, "baseline") == ([], [], two)
    assert split_folder(two, abnormals, "cande") == ([two[1]], [], [two[0]])
    # no abnormals: baseline trains on everything
    assert split_folder(ten, [], "baseline") == (ten, [], [])
    assert split_folder([], abnormals, "cande") == ([], [], [])
    with pytest.raises(ConfigError, match="must be one of baseline, cande, cande-overlap, got 'half'"):
        split_folder(ten, abnormals, "half")


def test_cande_validation_clips_are_marked_training_clips(tmp_path):
    root = tmp_path / "mimii"
    make_tree(root, "6", "valve", "00", 40, 2)
    for rule, n_test_normals in (("cande", 18), ("cande-overlap", 20)):
        clips = scan(root, split_rule=rule).clips
        val = [c for c in clips if c.is_validation]
        assert [(c.path.name, c.split, c.label) for c in val] == [
            ("00000000.wav", "train", 0), ("00000001.wav", "train", 0)]
        assert val[0].meta == (("id", "00"), ("snr", "6"), ("role", "validation"))
        assert val[0].get_meta("id") == "00"
        assert sum(c.split == "train" and not c.is_validation for c in clips) == 20
        test_normals = [c for c in clips if c.split == "test" and c.label == 0]
        assert len(test_normals) == n_test_normals
        tested = {c.path.name for c in test_normals}
        assert ("00000000.wav" in tested) is (rule == "cande-overlap")
    assert not any(c.is_validation for c in scan(root).clips)  # baseline: none


# ---------------------------------------------------------------- a folder of SNR folders


@pytest.fixture
def snr_tree(tmp_path) -> Path:
    root = tmp_path / "mimii"
    make_tree(root, "-6", "fan", "00", 7, 3)
    make_tree(root, "0", "fan", "00", 10, 3)
    make_tree(root, "6", "fan", "02", 2, 5)
    make_tree(root, "-6", "pump", "04", 4, 1)
    (root / "-6_dB_fan" / "fan" / "id_00" / "normal" / "notes.txt").write_text("x")
    (root / "-6_dB_fan" / "fan" / "id_00" / "normal" / ".00000099.wav").write_bytes(b"")
    (root / "readme.txt").write_text("x")
    return root


def test_snr_tree_baseline(snr_tree):
    result = scan(snr_tree)
    assert result.dataset == "mimii" and result.root == snr_tree and result.problems == []
    assert len(result.clips) == 7 + 3 + 10 + 3 + 2 + 5 + 4 + 1
    by_path = {c.path.relative_to(snr_tree).as_posix(): c for c in result.clips}
    c = by_path["-6_dB_fan/fan/id_00/normal/00000000.wav"]
    assert c == Clip(path=snr_tree / "-6_dB_fan/fan/id_00/normal/00000000.wav", machine="fan",
                     section="00_-6dB", split="test", domain=None, label=0, attributes=(),
                     key="-6_dB_normal_id_00_00000000.wav", meta=(("id", "00"), ("snr", "-6")))
    assert c.name == "-6_dB_normal_id_00_00000000.wav"
    assert c.get_meta("snr") == "-6" and c.get_meta("id") == "00"
    c = by_path["0_dB_fan/fan/id_00/abnormal/00000002.wav"]
    assert (c.section, c.split, c.label, c.key, c.meta) == (
        "00_0dB", "test", 1, "0_dB_abnormal_id_00_00000002.wav", (("id", "00"), ("snr", "0")))
    c = by_path["6_dB_fan/fan/id_02/normal/00000001.wav"]
    assert (c.section, c.split, c.label, c.key) == ("02_6dB", "test", 0, "6_dB_normal_id_02_00000001.wav")

    def assigned(prefix):
        return sorted((p.rsplit("/", 2)[1] + "/" + p.rsplit("/", 1)[1], by_path[p].split)
                      for p in by_path if p.startswith(prefix))

    # -6 dB fan id_00: 7 normals + 3 abnormals → test normals = first 3
    assert assigned("-6_dB_fan/") == (
        [(f"abnormal/{i:08d}.wav", "test") for i in range(3)]
        + [(f"normal/{i:08d}.wav", "test") for i in range(3)]
        + [(f"normal/{i:08d}.wav", "train") for i in range(3, 7)]
    )
    # 0 dB fan id_00: 10 normals + 3 abnormals → 3 test, 7 train
    got = assigned("0_dB_fan/")
    assert [n for n, s in got if s == "train"] == [f"normal/{i:08d}.wav" for i in range(3, 10)]
    # 6 dB fan id_02: 2 normals + 5 abnormals → no training clip
    assert {s for _, s in assigned("6_dB_fan/")} == {"test"}
    # -6 dB pump id_04: 4 normals + 1 abnormal → 1 test normal
    assert assigned("-6_dB_pump/") == [
        ("abnormal/00000000.wav", "test"), ("normal/00000000.wav", "test"),
        ("normal/00000001.wav", "train"), ("normal/00000002.wav", "train"), ("normal/00000003.wav", "train"),
    ]
    assert Counter((c.machine, c.section) for c in result.clips) == {
        ("fan", "00_-6dB"): 10, ("fan", "00_0dB"): 13, ("fan", "02_6dB"): 7, ("pump", "04_-6dB"): 5,
    }
    for c in result.clips:
        assert c.domain is None and c.attributes == ()
        assert c.label == (1 if c.path.parent.name == "abnormal" else 0)
        if c.split == "train":
            assert c.label == 0
    keys = [(c.machine, c.name) for c in result.clips]
    assert len(keys) == len(set(keys))  # 00000000.wav everywhere, keys unique
    paths = [str(c.path) for c in result.clips]
    assert paths == sorted(paths)


def test_snr_tree_cande(snr_tree):
    result = scan(snr_tree, split_rule="cande")
    split = {c.path.relative_to(snr_tree).as_posix(): c.split for c in result.clips}
    # 7 normals: 7 // 2 = 3 test, 4 train (same as baseline here)
    assert [p for p, s in sorted(split.items()) if p.startswith("-6_dB_fan/fan/id_00/normal") and s == "train"] == [
        f"-6_dB_fan/fan/id_00/normal/{i:08d}.wav" for i in range(3, 7)]
    # 10 normals: baseline 3 test / 7 train, cande 5 / 5
    assert [p for p, s in sorted(split.items()) if p.startswith("0_dB_fan/fan/id_00/normal") and s == "test"] == [
        f"0_dB_fan/fan/id_00/normal/{i:08d}.wav" for i in range(5)]
    # 2 normals + 5 abnormals: cande still trains on one
    assert split["6_dB_fan/fan/id_02/normal/00000001.wav"] == "train"
    assert split["6_dB_fan/fan/id_02/normal/00000000.wav"] == "test"
    # 4 normals + 1 abnormal: 2 / 2
    assert [s for p, s in sorted(split.items()) if p.startswith("-6_dB_pump/pump/id_04/normal")] == [
        "test", "test", "train", "train"]
    assert Counter(c.split for c in result.clips) == {"train": 4 + 5 + 1 + 2, "test": 3 + 3 + 5 + 3 + 1 + 5 + 2 + 1}
    with pytest.raises(ConfigError, match="MIMII split rule must be one of baseline, cande, cande-overlap, got 'random'"):
        scan(snr_tree, split_rule="random")
    assert SPLIT_RULES == ("baseline", "cande", "cande-overlap")


def test_splits_and_machines(snr_tree):
    train = scan(snr_tree, splits=("train",))
    assert {c.split for c in train.clips} == {"train"} and len(train.clips) == 4 + 7 + 3
    test = scan(snr_tree, machines=["pump"], splits=("test",))
    assert [c.key for c in test.clips] == ["-6_dB_abnormal_id_04_00000000.wav", "-6_dB_normal_id_04_00000000.wav"]
    with pytest.raises(ConfigError) as ei:
        scan(snr_tree, machines=["fna"])
    assert "'fna' (did you mean 'fan'?)" in str(ei.value)
    assert str(ei.value).endswith("available: fan, pump")


# ---------------------------------------------------------------- roots at each level


def test_root_is_one_snr_folder(tmp_path):
    make_tree(tmp_path, "-6", "valve", "06", 4, 2)
    root = tmp_path / "-6_dB_valve"
    result = scan(root)
    assert {c.section for c in result.clips} == {"06_-6dB"}
    assert {c.meta for c in result.clips} == {(("id", "06"), ("snr", "-6"))}
    assert [(c.key, c.split) for c in result.clips] == [
        ("-6_dB_abnormal_id_06_00000000.wav", "test"), ("-6_dB_abnormal_id_06_00000001.wav", "test"),
        ("-6_dB_normal_id_06_00000000.wav", "test"), ("-6_dB_normal_id_06_00000001.wav", "test"),
        ("-6_dB_normal_id_06_00000002.wav", "train"), ("-6_dB_normal_id_06_00000003.wav", "train"),
    ]


def test_root_is_the_machine_folder_inside_an_snr_folder(tmp_path):
    make_tree(tmp_path, "6", "slider", "00", 2, 1)
    result = scan(tmp_path / "6_dB_slider" / "slider")
    assert {(c.machine, c.section) for c in result.clips} == {("slider", "00_6dB")}
    assert [c.key for c in result.clips] == [
        "6_dB_abnormal_id_00_00000000.wav", "6_dB_normal_id_00_00000000.wav", "6_dB_normal_id_00_00000001.wav"]


def test_root_without_snr(tmp_path):
    make_id(tmp_path / "data" / "fan" / "id_00", 3, 1)
    make_id(tmp_path / "data" / "fan" / "id_02", 2, 0)
    make_id(tmp_path / "data" / "valve" / "id_00", 0, 2)
    result = scan(tmp_path / "data")
    assert [(c.machine, c.section, c.split, c.label, c.key, c.meta) for c in result.clips] == [
        ("fan", "00", "test", 1, "abnormal_id_00_00000000.wav", (("id", "00"),)),
        ("fan", "00", "test", 0, "normal_id_00_00000000.wav", (("id", "00"),)),
        ("fan", "00", "train", 0, "normal_id_00_00000001.wav", (("id", "00"),)),
        ("fan", "00", "train", 0, "normal_id_00_00000002.wav", (("id", "00"),)),
        ("fan", "02", "train", 0, "normal_id_02_00000000.wav", (("id", "02"),)),
        ("fan", "02", "train", 0, "normal_id_02_00000001.wav", (("id", "02"),)),
        ("valve", "00", "test", 1, "abnormal_id_00_00000000.wav", (("id", "00"),)),
        ("valve", "00", "test", 1, "abnormal_id_00_00000001.wav", (("id", "00"),)),
    ]
    # the machine folder itself as root
    only_fan = scan(tmp_path / "data" / "fan")
    assert len(only_fan.clips) == 6 and {c.machine for c in only_fan.clips} == {"fan"}
    assert {c.get_meta("snr") for c in only_fan.clips} == {None}


def test_machine_folder_contradicting_its_snr_folder(tmp_path):
    make_id(tmp_path / "0_dB_fan" / "pump" / "id_00", 1, 1)
    with pytest.raises(DatasetError) as ei:
        scan(tmp_path)
    folder = tmp_path / "0_dB_fan" / "pump" / "id_00"
    assert str(ei.value) == f"{folder}: lies in '0_dB_fan' but its machine folder is 'pump'"
    with pytest.raises(DatasetError, match="lies in '0_dB_fan' but its machine folder is 'pump'"):
        scan(tmp_path / "0_dB_fan" / "pump")


def test_same_folders_without_snr_give_duplicate_names(tmp_path):
    make_id(tmp_path / "a" / "fan" / "id_00", 1, 1)
    make_id(tmp_path / "b" / "fan" / "id_00", 1, 1)
    with pytest.raises(DatasetError, match="occur more than once") as ei:
        scan(tmp_path)
    assert str(tmp_path / "a" / "fan" / "id_00" / "normal" / "00000000.wav") in str(ei.value)
    assert str(tmp_path / "b" / "fan" / "id_00" / "normal" / "00000000.wav") in str(ei.value)


def test_no_mimii_folders(tmp_path):
    (tmp_path / "fan" / "id_00" / "other").mkdir(parents=True)  # no normal/abnormal
    (tmp_path / "fan" / "id_00" / "other" / "00000000.wav").write_bytes(b"")
    assert not looks_like(tmp_path)
    with pytest.raises(DatasetError) as ei:
        scan(tmp_path)
    assert str(ei.value).startswith(f"{tmp_path}: no MIMII folders found; expected [<snr>_dB_<machine>/]")
    assert not looks_like(tmp_path / "missing")


def test_looks_like_depth(tmp_path):
    make_id(tmp_path / "deep" / "x" / "0_dB_fan" / "fan" / "id_00", 1, 0)
    assert not looks_like(tmp_path)  # id_00 is 5 levels down
    assert not looks_like(tmp_path / "deep")  # 4 levels
    assert looks_like(tmp_path / "deep" / "x")  # 3 levels: a folder of SNR folders
    assert looks_like(tmp_path / "deep" / "x" / "0_dB_fan" / "fan")


def test_upper_case_extension_and_eight_channel_files(tmp_path):
    folder = make_id(tmp_path / "-6_dB_fan" / "fan" / "id_00", 2, 1, wav=True)
    (folder / "normal" / "00000001.wav").rename(folder / "normal" / "00000001.WAV")
    result = scan(tmp_path)
    assert [c.key for c in result.clips] == [
        "-6_dB_abnormal_id_00_00000000.wav", "-6_dB_normal_id_00_00000000.wav", "-6_dB_normal_id_00_00000001.WAV"]
    assert sf.info(str(result.clips[0].path)).channels == 8


# ---------------------------------------------------------------- real MIMII subsets


MIMII_MACHINES = ("fan", "pump", "slider", "valve")
MIMII_IDS = ("00", "02", "04", "06")


def test_real_mimii_0db_subset(real_data):
    root = real_data / "mimii_0dB_subset"
    result = scan(root)
    assert result.problems == [] and len(result.clips) == 32
    assert Counter((c.machine, c.section) for c in result.clips) == {
        (m, f"{i}_0dB"): 2 for m in MIMII_MACHINES for i in MIMII_IDS}
    # one normal + one abnormal per folder: the baseline rule puts the normal in test
    assert Counter((c.split, c.label) for c in result.clips) == {("test", 0): 16, ("test", 1): 16}
    for c in result.clips:
        mid = c.path.parent.parent.name[3:]
        assert c.meta == (("id", mid), ("snr", "0"))
        assert c.key == f"0_dB_{c.path.parent.name}_id_{mid}_00000000.wav"
        assert c.machine == c.path.parent.parent.parent.name
        assert c.path.parents[3].name == f"0_dB_{c.machine}"
    cande = scan(root, split_rule="cande")  # 1 // 2 = 0 test normals: the normal trains
    assert Counter((c.split, c.label) for c in cande.clips) == {("train", 0): 16, ("test", 1): 16}
    auto = scan_dataset(root)
    assert auto.dataset == "mimii" and [c.key for c in auto.clips] == [c.key for c in result.clips]
    auto = scan_dataset(root, mimii_split="cande", machines=["valve"], splits=("train",))
    assert [c.key for c in auto.clips] == [f"0_dB_normal_id_{i}_00000000.wav" for i in MIMII_IDS]


def test_real_mimii_fan_id00_subset(real_data):
    root = real_data / "mimii_fan_id00_subset"
    result = scan(root)
    assert result.problems == [] and len(result.clips) == 40
    assert {(c.machine, c.section, c.meta) for c in result.clips} == {("fan", "00", (("id", "00"),))}
    assert Counter((c.split, c.label) for c in result.clips) == {("test", 0): 20, ("test", 1): 20}
    cande = scan(root, split_rule="cande")
    train = [c.key for c in cande.clips if c.split == "train" and not c.is_validation]
    assert train == [f"normal_id_00_{i:08d}.wav" for i in range(10, 20)]
    # validation: the first ⌊0.1 · 10⌋ = 1 test normal, out of the test set
    assert [c.key for c in cande.clips if c.is_validation] == ["normal_id_00_00000000.wav"]
    test_normals = [c.key for c in cande.clips if c.split == "test" and c.label == 0]
    assert test_normals == [f"normal_id_00_{i:08d}.wav" for i in range(1, 10)]
    assert scan_dataset(root).dataset == "mimii"


def test_real_mimii_8ch_originals(real_data):
    root = real_data / "mimii_8ch_originals"
    result = scan(root)
    assert [(c.key, c.section, c.split, c.label) for c in result.clips] == [
        ("0_dB_abnormal_id_00_00000000.wav", "00_0dB", "test", 1),
        ("0_dB_normal_id_00_00000000.wav", "00_0dB", "test", 0),
        ("0_dB_abnormal_id_02_00000000.wav", "02_0dB", "test", 1),
        ("0_dB_normal_id_02_00000000.wav", "02_0dB", "test", 0),
    ]
    assert {sf.info(str(c.path)).channels for c in result.clips} == {8}
