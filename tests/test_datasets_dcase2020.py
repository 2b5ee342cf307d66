"""Tests of stetho.datasets.dcase2020: DCASE 2020 Task 2 names (machine IDs, no domains)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from stetho.datasets import Clip, Scan, dcase2020
from stetho.datasets.dcase2020 import EXPECTED_NAME, matches, parse_filename, scan
from stetho.errors import ConfigError, DatasetError


def touch(root: Path, machine: str, split: str, *names: str) -> None:
    folder = root / machine / split
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


# ---------------------------------------------------------------- parse_filename


@pytest.mark.parametrize(
    "name, split, section, label",
    [
        ("normal_id_00_00000000.wav", "train", "00", 0),
        ("normal_id_06_00000914.wav", "train", "06", 0),
        ("normal_id_02_00000012.wav", "test", "02", 0),
        ("anomaly_id_02_00000012.wav", "test", "02", 1),
        ("anomaly_id_04_00000261.wav", "test", "04", 1),
        ("normal_id_01_00000000.WAV", "test", "01", 0),  # upper-case extension
        ("normal_id_05_0.wav", "test", "05", 0),  # any index width
    ],
)
def test_labeled_names(name, split, section, label):
    path = Path("dev") / "ToyCar" / split / name
    clip = parse_filename(path, "ToyCar", split)
    assert clip == Clip(path=path, machine="ToyCar", section=section, split=split, domain=None,
                        label=label, attributes=(), key=None, meta=(("id", section),))
    assert clip.name == name
    assert clip.get_meta("id") == section
    assert not clip.is_target


def test_unlabeled_eval_name_in_test():
    path = Path("eval") / "fan" / "test" / "id_01_00000000.wav"
    clip = parse_filename(path, "fan", "test")
    assert clip == Clip(path=path, machine="fan", section="01", split="test", meta=(("id", "01"),))
    assert clip.label is None and clip.domain is None


def test_unlabeled_eval_name_in_train_is_an_error():
    path = Path("fan") / "train" / "id_01_00000000.wav"
    with pytest.raises(DatasetError) as ei:
        parse_filename(path, "fan", "train")
    assert str(ei.value) == f"{path}: file name does not parse; expected {EXPECTED_NAME}"


def test_anomaly_in_train_is_an_error():
    path = Path("fan") / "train" / "anomaly_id_00_00000001.wav"
    with pytest.raises(DatasetError) as ei:
        parse_filename(path, "fan", "train")
    assert str(ei.value) == f"{path}: training clips must be normal (unsupervised training)"


@pytest.mark.parametrize(
    "name",
    [
        "garbage.wav",
        "Normal_id_00_00000000.wav",  # capitalised label
        "normal_id_0_00000000.wav",  # one-digit ID
        "normal_id_001_00000000.wav",  # three-digit ID
        "normal_id_00.wav",  # no index
        "abnormal_id_00_00000000.wav",  # MIMII folder word, not a 2020 name
        "id_01_00000000_extra.wav",
        "section_00_source_test_normal_0000.wav",  # a 2021+ name
    ],
)
def test_garbage_names(name):
    path = Path("pump") / "test" / name
    assert not matches(name)
    with pytest.raises(DatasetError, match="file name does not parse") as ei:
        parse_filename(path, "pump", "test")
    assert str(path) in str(ei.value)
    assert EXPECTED_NAME in str(ei.value)


def test_matches():
    assert matches("normal_id_00_00000000.wav")
    assert matches("anomaly_id_02_00000012.wav")
    assert matches("id_01_00000000.wav")
    assert not matches("section_00_0000.wav")
    assert not matches("00000000.wav")


# ---------------------------------------------------------------- scan


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "dev_data"
    touch(root, "fan", "train",
          "normal_id_00_00000001.wav", "normal_id_00_00000000.wav", "normal_id_02_00000000.wav",
          "anomaly_id_00_00000005.wav",  # anomaly in train: problem
          "id_00_00000009.wav",  # unlabeled name in train: problem
          "notes.txt", ".normal_id_00_00000007.wav")  # ignored
    touch(root, "fan", "test",
          "normal_id_00_00000000.wav",  # same name as a train clip: fine (other split)
          "anomaly_id_00_00000000.wav", "anomaly_id_02_00000003.wav",
          "id_04_00000000.wav",  # unlabeled eval clip
          "garbage.wav")  # problem
    touch(root, "ToyConveyor", "test", "normal_id_01_00000000.wav", "anomaly_id_01_00000000.wav")
    touch(root, "valve", "train", "normal_id_06_00000000.wav")
    touch(root / "valve", "train", "old", "normal_id_06_00000001.wav")  # nested: problem
    (root / "not_a_machine").mkdir()
    (root / "stray.wav").write_bytes(b"")
    return root


def test_scan_clips(tree):
    result = scan(tree)
    assert isinstance(result, Scan)
    assert result.dataset == "dcase2020" and result.root == tree
    rel = {c.path.relative_to(tree).as_posix(): c for c in result.clips}
    assert list(rel) == sorted(rel, key=lambda r: str(tree / r))
    assert rel == {
        "ToyConveyor/test/anomaly_id_01_00000000.wav":
            Clip(tree / "ToyConveyor/test/anomaly_id_01_00000000.wav", "ToyConveyor", "01", "test",
                 label=1, meta=(("id", "01"),)),
        "ToyConveyor/test/normal_id_01_00000000.wav":
            Clip(tree / "ToyConveyor/test/normal_id_01_00000000.wav", "ToyConveyor", "01", "test",
                 label=0, meta=(("id", "01"),)),
        "fan/test/anomaly_id_00_00000000.wav":
            Clip(tree / "fan/test/anomaly_id_00_00000000.wav", "fan", "00", "test", label=1, meta=(("id", "00"),)),
        "fan/test/anomaly_id_02_00000003.wav":
            Clip(tree / "fan/test/anomaly_id_02_00000003.wav", "fan", "02", "test", label=1, meta=(("id", "02"),)),
        "fan/test/id_04_00000000.wav":
            Clip(tree / "fan/test/id_04_00000000.wav", "fan", "04", "test", label=None, meta=(("id", "04"),)),
        "fan/test/normal_id_00_00000000.wav":
            Clip(tree / "fan/test/normal_id_00_00000000.wav", "fan", "00", "test", label=0, meta=(("id", "00"),)),
        "fan/train/normal_id_00_00000000.wav":
            Clip(tree / "fan/train/normal_id_00_00000000.wav", "fan", "00", "train", label=0, meta=(("id", "00"),)),
        "fan/train/normal_id_00_00000001.wav":
            Clip(tree / "fan/train/normal_id_00_00000001.wav", "fan", "00", "train", label=0, meta=(("id", "00"),)),
        "fan/train/normal_id_02_00000000.wav":
            Clip(tree / "fan/train/normal_id_02_00000000.wav", "fan", "02", "train", label=0, meta=(("id", "02"),)),
        "valve/train/normal_id_06_00000000.wav":
            Clip(tree / "valve/train/normal_id_06_00000000.wav", "valve", "06", "train", label=0, meta=(("id", "06"),)),
    }


def test_scan_reports_problems_not_drops(tree):
    result = scan(tree)
    problems = {p.relative_to(tree).as_posix(): reason for p, reason in result.problems}
    assert problems == {
        "fan/train/anomaly_id_00_00000005.wav": "training clips must be normal (unsupervised training)",
        "fan/train/id_00_00000009.wav": f"file name does not parse; expected {EXPECTED_NAME}",
        "fan/test/garbage.wav": f"file name does not parse; expected {EXPECTED_NAME}",
        "valve/train/old/normal_id_06_00000001.wav": "lies in a sub-folder of train/; this layout reads only "
                                                     "files directly in it (use --dataset folder for nested recordings)",
    }
    wavs = {p for p in tree.rglob("*.wav") if not p.name.startswith(".") and p.parent != tree}
    assert wavs == {c.path for c in result.clips} | {p for p, _ in result.problems}


def test_scan_machines_and_splits(tree):
    result = scan(tree, machines=["fan"], splits=("test",))
    assert [c.name for c in result.clips] == [
        "anomaly_id_00_00000000.wav", "anomaly_id_02_00000003.wav", "id_04_00000000.wav",
        "normal_id_00_00000000.wav",
    ]
    assert [p.name for p, _ in result.problems] == ["garbage.wav"]
    result = scan(tree, machines=["valve", "ToyConveyor"], splits=("train",))
    assert [c.name for c in result.clips] == ["normal_id_06_00000000.wav"]
    assert [p.name for p, _ in result.problems] == ["normal_id_06_00000001.wav"]
    result = scan(tree, machines=["ToyConveyor"])
    assert len(result.clips) == 2 and result.problems == []


def test_scan_repeated_machine_is_scanned_once(tree):
    result = scan(tree, machines=["valve", "valve"])
    assert [c.name for c in result.clips] == ["normal_id_06_00000000.wav"]


def test_unknown_machine_did_you_mean(tree):
    with pytest.raises(ConfigError) as ei:
        scan(tree, machines=["fan", "vlave", "drill"])
    msg = str(ei.value)
    assert "'vlave' (did you mean 'valve'?)" in msg
    assert "'drill'" in msg and "'drill' (did you mean" not in msg
    assert f"in {tree}; available: ToyConveyor, fan, valve" in msg
    assert "'fan'" not in msg


def test_misspelt_machine_folder_is_warned_about(tmp_path, caplog):
    touch(tmp_path, "Fan", "train", "normal_id_00_00000000.wav")
    touch(tmp_path, "ToyConvayor", "train", "normal_id_00_00000000.wav")
    touch(tmp_path, "drill", "train", "normal_id_00_00000000.wav")
    with caplog.at_level(logging.WARNING, logger="stetho.datasets.base"):
        result = scan(tmp_path)
    assert {c.machine for c in result.clips} == {"Fan", "ToyConvayor", "drill"}  # used as they are
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert any("'Fan'" in w and "did you mean 'fan'" in w for w in warnings)
    assert any("'ToyConvayor'" in w and "did you mean 'ToyConveyor'" in w for w in warnings)


def test_upper_case_extension_is_scanned(tmp_path):
    touch(tmp_path, "fan", "test", "normal_id_00_00000000.wav", "normal_id_00_00000001.WAV")
    result = scan(tmp_path)
    assert [c.name for c in result.clips] == ["normal_id_00_00000000.wav", "normal_id_00_00000001.WAV"]
    assert result.problems == []


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DatasetError, match="data folder does not exist") as ei:
        scan(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(ei.value)
    (tmp_path / "fan").mkdir()
    with pytest.raises(DatasetError, match="no machine folders found") as ei:
        scan(tmp_path)
    assert "DCASE 2020 layout" in str(ei.value)
    f = tmp_path / "file.csv"
    f.write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        scan(f)


# ---------------------------------------------------------------- real DCASE 2020 dev subset

REAL_IDS = {"ToyCar": "04", "ToyConveyor": "01", "fan": "06", "pump": "04", "slider": "00", "valve": "02"}


def test_real_dcase2020_subset(real_data):
    root = real_data / "dcase2020t2_dev_subset"
    result = scan(root)
    assert result.problems == []
    assert len(result.clips) == 111
    per = Counter((c.machine, c.split, c.label) for c in result.clips)
    expected = {(m, "test", 0): 3 for m in REAL_IDS} | {(m, "test", 1): 3 for m in REAL_IDS}
    expected[("slider", "train", 0)] = 75
    assert dict(per) == expected
    for c in result.clips:
        assert c.section == REAL_IDS[c.machine]
        assert c.meta == (("id", REAL_IDS[c.machine]),)
        assert c.domain is None and c.attributes == () and c.key is None
        assert c.machine == c.path.parent.parent.name and c.split == c.path.parent.name
        assert c.name.startswith({0: "normal_", 1: "anomaly_"}[c.label])
    train = [c.name for c in result.clips if c.split == "train"]
    assert train == [f"normal_id_00_{i:08d}.wav" for i in range(75)]
    slider_test = [c.name for c in result.clips if c.machine == "slider" and c.split == "test"]
    assert slider_test == [
        "anomaly_id_00_00000000.wav", "anomaly_id_00_00000096.wav", "anomaly_id_00_00000268.wav",
        "normal_id_00_00000013.wav", "normal_id_00_00000036.wav", "normal_id_00_00000098.wav",
    ]
    # pump has normal and anomaly clips with the same index: names still differ
    pump = [c.name for c in result.clips if c.machine == "pump"]
    assert "anomaly_id_04_00000096.wav" in pump and "normal_id_04_00000096.wav" in pump


def test_real_dcase2020_subset_machine_filter(real_data):
    root = real_data / "dcase2020t2_dev_subset"
    result = scan(root, machines=["slider"], splits=("train",))
    assert len(result.clips) == 75
    with pytest.raises(ConfigError, match=r"'slidr' \(did you mean 'slider'\?\)"):
        scan(root, machines=["slidr"])
    assert dcase2020.MACHINES == tuple(sorted(REAL_IDS))
