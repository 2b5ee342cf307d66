"""Tests of stetho.datasets.dcase2021: DCASE 2021 Task 2 (train/, source_test/, target_test/)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stetho.datasets import Clip, Scan
from stetho.datasets.dcase2021 import EXPECTED_NAME, FOLDERS, matches, parse_filename, scan
from stetho.errors import ConfigError, DatasetError

GEARBOX_ATTRS = "0_g_25_mm_2000_mV_none"


def touch(root: Path, machine: str, folder: str, *names: str) -> None:
    d = root / machine / folder
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        (d / name).write_bytes(b"")


# ---------------------------------------------------------------- parse_filename


@pytest.mark.parametrize(
    "name, folder, split, section, domain, label, attributes",
    [
        # gearbox: 7 tokens, kept whole
        (f"section_00_source_train_normal_0000_{GEARBOX_ATTRS}.wav", "train", "train", "00", "source", 0,
         (("attributes", GEARBOX_ATTRS),)),
        ("section_02_target_train_normal_0002_250_g_80_mm_1500_mV_none.wav", "train", "train", "02", "target", 0,
         (("attributes", "250_g_80_mm_1500_mV_none"),)),
        # fan: 3 tokens, kept whole
        ("section_00_source_train_normal_0000_strength_1_ambient.wav", "train", "train", "00", "source", 0,
         (("attributes", "strength_1_ambient"),)),
        # even token count: name/value pairs
        ("section_01_source_train_normal_0010_vel_9_loc_A.wav", "train", "train", "01", "source", 0,
         (("vel", "9"), ("loc", "A"))),
        ("section_01_source_train_normal_0011.wav", "train", "train", "01", "source", 0, ()),
        # dev test clips: no attributes
        ("section_00_source_test_normal_0000.wav", "source_test", "test", "00", "source", 0, ()),
        ("section_00_source_test_anomaly_0002.wav", "source_test", "test", "00", "source", 1, ()),
        ("section_02_target_test_normal_0008.wav", "target_test", "test", "02", "target", 0, ()),
        ("section_01_target_test_anomaly_0007.wav", "target_test", "test", "01", "target", 1, ()),
        # test clip with attributes (renamed eval data)
        (f"section_03_target_test_anomaly_0001_{GEARBOX_ATTRS}.wav", "target_test", "test", "03", "target", 1,
         (("attributes", GEARBOX_ATTRS),)),
        # unlabeled evaluation clips
        ("section_03_source_test_0000.wav", "source_test", "test", "03", "source", None, ()),
        ("section_05_target_test_0199.wav", "target_test", "test", "05", "target", None, ()),
        ("section_04_source_test_0001.WAV", "source_test", "test", "04", "source", None, ()),
    ],
)
def test_names(name, folder, split, section, domain, label, attributes):
    path = Path("dev") / "gearbox" / folder / name
    clip = parse_filename(path, "gearbox", folder)
    assert clip == Clip(path=path, machine="gearbox", section=section, split=split, domain=domain,
                        label=label, attributes=attributes, key=None, meta=())
    assert clip.name == name
    assert clip.is_target == (domain == "target")
    assert matches(name)


@pytest.mark.parametrize(
    "name, folder, reason",
    [
        # labeled train name in a test folder
        ("section_00_source_train_normal_0000.wav", "source_test",
         "name says split 'train' but the file is in 'source_test/'"),
        ("section_00_target_train_normal_0000.wav", "target_test",
         "name says split 'train' but the file is in 'target_test/'"),
        # test names in train/
        ("section_00_source_test_normal_0000.wav", "train", "name says split 'test' but the file is in 'train/'"),
        ("section_03_target_test_0000.wav", "train", "name says split 'test' but the file is in 'train/'"),
        # a domain's clip in the other domain's folder
        ("section_00_source_test_anomaly_0000.wav", "target_test",
         "name says domain 'source' but the file is in 'target_test/'"),
        ("section_01_target_test_normal_0003.wav", "source_test",
         "name says domain 'target' but the file is in 'source_test/'"),
        ("section_03_target_test_0000.wav", "source_test",
         "name says domain 'target' but the file is in 'source_test/'"),
        # anomaly in train
        ("section_00_source_train_anomaly_0000.wav", "train", "training clips must be normal (unsupervised training)"),
        ("section_00_target_train_anomaly_0000_x_1.wav", "train",
         "training clips must be normal (unsupervised training)"),
    ],
)
def test_names_contradicting_their_folder(name, folder, reason):
    path = Path("gearbox") / folder / name
    with pytest.raises(DatasetError) as ei:
        parse_filename(path, "gearbox", folder)
    assert str(ei.value) == f"{path}: {reason}"


@pytest.mark.parametrize(
    "name",
    [
        "garbage.wav",
        "section_0_source_test_normal_0000.wav",  # one-digit section
        "section_00_sauce_test_normal_0000.wav",
        "section_00_source_test_abnormal_0000.wav",
        "section_00_source_test_normal.wav",  # no index
        "section_00_0000.wav",  # the 2022-2025 unlabeled name has no domain
        "section_00_source_0000.wav",
        "section_00_source_test_0000_extra.wav",
        "normal_id_00_00000000.wav",  # a 2020 name
    ],
)
def test_garbage_names(name):
    assert not matches(name)
    path = Path("fan") / "source_test" / name
    with pytest.raises(DatasetError) as ei:
        parse_filename(path, "fan", "source_test")
    assert str(ei.value) == f"{path}: file name does not parse; expected {EXPECTED_NAME}"


def test_folders():
    assert FOLDERS == {"train": ("train",), "test": ("source_test", "target_test")}


# ---------------------------------------------------------------- scan


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "dev_data"
    touch(root, "gearbox", "train",
          f"section_00_source_train_normal_0001_{GEARBOX_ATTRS}.wav",
          f"section_00_source_train_normal_0000_{GEARBOX_ATTRS}.wav",
          "section_01_target_train_normal_0000_50_g_25_mm_1000_mV_none.wav",
          "section_00_source_train_anomaly_0002.wav",  # problem: anomaly in train
          "readme.txt")
    touch(root, "gearbox", "source_test",
          "section_00_source_test_normal_0000.wav", "section_00_source_test_anomaly_0000.wav",
          "section_01_target_test_normal_0000.wav",  # problem: wrong domain folder
          "section_03_source_test_0000.wav")  # unlabeled eval clip
    touch(root, "gearbox", "target_test",
          "section_00_target_test_normal_0000.wav", "section_01_target_test_anomaly_0001.wav",
          "oops.wav")  # problem
    touch(root, "ToyTrain", "target_test", "section_02_target_test_normal_0005.wav")
    touch(root / "gearbox", "target_test", "extra", "section_00_target_test_normal_0009.wav")  # nested: problem
    (root / "other").mkdir()
    return root


def test_scan_clips(tree):
    result = scan(tree)
    assert isinstance(result, Scan)
    assert result.dataset == "dcase2021" and result.root == tree
    got = [(c.path.relative_to(tree).as_posix(), c.machine, c.split, c.section, c.domain, c.label, c.attributes)
           for c in result.clips]
    assert got == [
        ("ToyTrain/target_test/section_02_target_test_normal_0005.wav", "ToyTrain", "test", "02", "target", 0, ()),
        ("gearbox/source_test/section_00_source_test_anomaly_0000.wav", "gearbox", "test", "00", "source", 1, ()),
        ("gearbox/source_test/section_00_source_test_normal_0000.wav", "gearbox", "test", "00", "source", 0, ()),
        ("gearbox/source_test/section_03_source_test_0000.wav", "gearbox", "test", "03", "source", None, ()),
        ("gearbox/target_test/section_00_target_test_normal_0000.wav", "gearbox", "test", "00", "target", 0, ()),
        ("gearbox/target_test/section_01_target_test_anomaly_0001.wav", "gearbox", "test", "01", "target", 1, ()),
        (f"gearbox/train/section_00_source_train_normal_0000_{GEARBOX_ATTRS}.wav", "gearbox", "train", "00",
         "source", 0, (("attributes", GEARBOX_ATTRS),)),
        (f"gearbox/train/section_00_source_train_normal_0001_{GEARBOX_ATTRS}.wav", "gearbox", "train", "00",
         "source", 0, (("attributes", GEARBOX_ATTRS),)),
        ("gearbox/train/section_01_target_train_normal_0000_50_g_25_mm_1000_mV_none.wav", "gearbox", "train", "01",
         "target", 0, (("attributes", "50_g_25_mm_1000_mV_none"),)),
    ]
    assert all(c.key is None and c.meta == () for c in result.clips)


def test_scan_reports_problems_not_drops(tree):
    result = scan(tree)
    problems = {p.relative_to(tree).as_posix(): reason for p, reason in result.problems}
    assert problems == {
        "gearbox/train/section_00_source_train_anomaly_0002.wav":
            "training clips must be normal (unsupervised training)",
        "gearbox/source_test/section_01_target_test_normal_0000.wav":
            "name says domain 'target' but the file is in 'source_test/'",
        "gearbox/target_test/oops.wav": f"file name does not parse; expected {EXPECTED_NAME}",
        "gearbox/target_test/extra/section_00_target_test_normal_0009.wav":
            "lies in a sub-folder of target_test/; this layout reads only files directly in it "
            "(use --dataset folder for nested recordings)",
    }
    wavs = set(tree.rglob("*.wav"))
    assert wavs == {c.path for c in result.clips} | {p for p, _ in result.problems}


def test_scan_splits_and_machines(tree):
    test_only = scan(tree, splits=("test",))
    assert {c.split for c in test_only.clips} == {"test"}
    assert len(test_only.clips) == 6
    assert len(test_only.problems) == 3
    train_only = scan(tree, machines=["gearbox"], splits=("train",))
    assert [c.name for c in train_only.clips] == [
        f"section_00_source_train_normal_0000_{GEARBOX_ATTRS}.wav",
        f"section_00_source_train_normal_0001_{GEARBOX_ATTRS}.wav",
        "section_01_target_train_normal_0000_50_g_25_mm_1000_mV_none.wav",
    ]
    assert [p.name for p, _ in train_only.problems] == ["section_00_source_train_anomaly_0002.wav"]
    toy = scan(tree, machines=["ToyTrain"])
    assert [c.name for c in toy.clips] == ["section_02_target_test_normal_0005.wav"]
    assert toy.problems == []


def test_unknown_machine_did_you_mean(tree):
    with pytest.raises(ConfigError) as ei:
        scan(tree, machines=["gearbx"])
    msg = str(ei.value)
    assert "'gearbx' (did you mean 'gearbox'?)" in msg
    assert msg.endswith("available: ToyTrain, gearbox")


def test_no_machine_folders(tmp_path):
    touch(tmp_path, "fan", "test", "section_00_source_test_normal_0000.wav")  # test/, not *_test/
    with pytest.raises(DatasetError) as ei:
        scan(tmp_path)
    assert str(ei.value).startswith(f"{tmp_path}: no machine folders found")
    assert "DCASE 2021 layout" in str(ei.value)
    with pytest.raises(DatasetError, match="data folder does not exist"):
        scan(tmp_path / "missing")


# ---------------------------------------------------------------- real DCASE 2021 dev subset


def test_real_dcase2021_subset(real_data):
    root = real_data / "dcase2021t2_dev_subset"
    result = scan(root)
    assert result.problems == []
    assert {c.machine for c in result.clips} == {"gearbox"}
    assert len(result.clips) == 67
    assert Counter(c.split for c in result.clips) == {"train": 31, "test": 36}
    train = Counter((c.section, c.domain) for c in result.clips if c.split == "train")
    assert train == {("00", "source"): 11, ("01", "source"): 10, ("02", "source"): 10}
    test = Counter((c.section, c.domain, c.label) for c in result.clips if c.split == "test")
    assert test == {
        ("00", "source", 0): 3, ("00", "source", 1): 3,
        ("01", "source", 0): 3, ("01", "source", 1): 3,
        ("02", "source", 0): 3, ("02", "source", 1): 3,
        ("00", "target", 0): 3, ("00", "target", 1): 3,
        ("01", "target", 0): 3, ("01", "target", 1): 4,
        ("02", "target", 0): 3, ("02", "target", 1): 2,
    }
    for c in result.clips:
        folder = c.path.parent.name
        if c.split == "train":
            assert folder == "train" and c.label == 0
            # the 2021 gearbox attribute strings have 7 tokens: kept whole, equal to the name's tail
            (name, value), = c.attributes
            assert name == "attributes"
            assert c.name.endswith(f"_{value}.wav")
            assert value.endswith("_g_25_mm_1000_mV_none") or value.endswith("_g_25_mm_2000_mV_none")
        else:
            assert folder == f"{c.domain}_test"
            assert c.attributes == ()
    first = next(c for c in result.clips if c.split == "train")
    assert first.name == f"section_00_source_train_normal_0000_{GEARBOX_ATTRS}.wav"
    assert first.attributes == (("attributes", GEARBOX_ATTRS),)
    assert sorted({c.section for c in result.clips}) == ["00", "01", "02"]


def test_real_dcase2021_subset_machine_filter(real_data):
    root = real_data / "dcase2021t2_dev_subset"
    assert len(scan(root, machines=["gearbox"], splits=("test",)).clips) == 36
    with pytest.raises(ConfigError, match=r"'Gearbox' \(did you mean 'gearbox'\?\)"):
        scan(root, machines=["Gearbox"])


def test_files_in_a_test_folder_are_problems_not_ignored(tmp_path):
    touch(tmp_path, "fan", "train", "section_00_source_train_normal_0000_a.wav")
    touch(tmp_path, "fan", "source_test", "section_00_source_test_normal_0000.wav")
    touch(tmp_path, "fan", "test", "section_00_source_test_normal_0001.wav")
    result = scan(tmp_path)
    assert [c.name for c in result.clips if c.split == "test"] == ["section_00_source_test_normal_0000.wav"]
    assert [(p.name, r) for p, r in result.problems] == [
        ("section_00_source_test_normal_0001.wav",
         "DCASE 2021 keeps test clips in source_test/ and target_test/, not test/")]
