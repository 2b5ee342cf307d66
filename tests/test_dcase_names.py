"""Tests of stetho.datasets.dcase: DCASE 2022-2025 file-name parsing and folder scanning."""

from __future__ import annotations

from pathlib import Path

import pytest

from stetho.datasets import Clip, Scan, list_machines, parse_filename, scan_dcase
from stetho.datasets.dcase import EXPECTED_NAME, parse_attributes
from stetho.errors import ConfigError, DatasetError

# ---------------------------------------------------------------- parse_filename


@pytest.mark.parametrize(
    "name, split, section, domain, label, attributes",
    [
        (
            "section_00_source_train_normal_0000_car_A2_spd_28V_mic_1.wav",
            "train", "00", "source", 0,
            (("car", "A2"), ("spd", "28V"), ("mic", "1")),
        ),
        (
            "section_01_target_train_normal_0009_car_B1_spd_31V_mic_2.wav",
            "train", "01", "target", 0,
            (("car", "B1"), ("spd", "31V"), ("mic", "2")),
        ),
        (
            "section_02_source_test_normal_0123_vel_9_loc_A.wav",
            "test", "02", "source", 0,
            (("vel", "9"), ("loc", "A")),
        ),
        (
            "section_00_target_test_anomaly_0040_volt_1.5_wt_130.wav",
            "test", "00", "target", 1,
            (("volt", "1.5"), ("wt", "130")),
        ),
        (
            "section_00_source_test_anomaly_0022_m-n_W.wav",
            "test", "00", "source", 1,
            (("m-n", "W"),),
        ),
        # empty attributes: trailing underscore, or nothing at all
        ("section_00_source_train_normal_0000_.wav", "train", "00", "source", 0, ()),
        ("section_03_target_test_anomaly_0007.wav", "test", "03", "target", 1, ()),
        # DCASE 2024/2025 machines without attributes
        ("section_00_source_train_normal_0001_noAttribute.wav", "train", "00", "source", 0, ()),
        ("section_00_target_test_anomaly_0002_noAttribute.wav", "test", "00", "target", 1, ()),
        # odd number of tokens: kept whole under the name "attributes"
        (
            "section_00_source_train_normal_0003_pat_01_extra.wav",
            "train", "00", "source", 0,
            (("attributes", "pat_01_extra"),),
        ),
        (
            "section_00_source_test_normal_0004_loud.wav",
            "test", "00", "source", 0,
            (("attributes", "loud"),),
        ),
    ],
)
def test_labeled_names(name, split, section, domain, label, attributes):
    path = Path("root") / "ToyCar" / split / name
    clip = parse_filename(path, "ToyCar", split)
    assert clip == Clip(
        path=path, machine="ToyCar", section=section, split=split,
        domain=domain, label=label, attributes=attributes,
    )
    assert clip.name == name
    assert clip.is_target == (domain == "target")


def test_unlabeled_eval_name_in_test():
    path = Path("eval") / "fan" / "test" / "section_00_0000.wav"
    clip = parse_filename(path, "fan", "test")
    assert clip == Clip(path=path, machine="fan", section="00", split="test")
    assert clip.domain is None and clip.label is None and clip.attributes == ()
    assert parse_filename(Path("section_03_0199.wav"), "fan", "test").section == "03"


def test_unlabeled_eval_name_in_train_is_an_error():
    with pytest.raises(DatasetError, match="does not parse"):
        parse_filename(Path("fan/train/section_00_0000.wav"), "fan", "train")


@pytest.mark.parametrize(
    "name, folder, name_split",
    [
        ("section_00_source_test_normal_0000_a_b.wav", "train", "test"),
        ("section_00_source_train_normal_0000_a_b.wav", "test", "train"),
    ],
)
def test_split_mismatch_between_name_and_folder(name, folder, name_split):
    path = Path("fan") / folder / name
    with pytest.raises(DatasetError) as ei:
        parse_filename(path, "fan", folder)
    msg = str(ei.value)
    assert str(path) in msg
    assert f"'{name_split}'" in msg and f"'{folder}/'" in msg


def test_anomaly_in_train_is_an_error():
    path = Path("fan/train/section_00_source_train_anomaly_0000_a_b.wav")
    with pytest.raises(DatasetError, match="must be normal") as ei:
        parse_filename(path, "fan", "train")
    assert str(path) in str(ei.value)


@pytest.mark.parametrize(
    "name",
    [
        "foo.wav",
        "section_0_source_train_normal_0000.wav",  # one-digit section
        "section_00_domain_train_normal_0000.wav",  # bad domain
        "section_00_source_dev_normal_0000.wav",  # bad split
        "section_00_source_train_abnormal_0000.wav",  # MIMII-style label
        "section_00_source_train_normal_.wav",  # no index
        "normal_id_00_00000000.wav",  # DCASE 2020 naming
        "section_00_0000_extra.wav",
    ],
)
def test_garbage_names(name):
    with pytest.raises(DatasetError, match="does not parse") as ei:
        parse_filename(Path("fan/train") / name, "fan", "train")
    assert EXPECTED_NAME in str(ei.value)


def test_parse_attributes_direct():
    assert parse_attributes(None) == ()
    assert parse_attributes("") == ()
    assert parse_attributes("noAttribute") == ()
    assert parse_attributes("a_1_b_2") == (("a", "1"), ("b", "2"))
    assert parse_attributes("a_1_b") == (("attributes", "a_1_b"),)


# ---------------------------------------------------------------- scanning a folder


def touch(root: Path, machine: str, split: str, *names: str) -> list[Path]:
    folder = root / machine / split
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n in names:
        (folder / n).write_bytes(b"")
        out.append(folder / n)
    return out


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "dev"
    touch(
        root, "valve", "train",
        "section_00_source_train_normal_0001_pat_01.wav",
        "section_00_source_train_normal_0000_pat_00.wav",
        "section_00_target_train_normal_0000_pat_02.wav",
        "notes.txt",  # ignored
        "README",  # ignored
        ".section_00_source_train_normal_0009_pat_01.wav",  # hidden: ignored
    )
    (root / "valve" / "train" / "subdir.wav").mkdir()  # a folder: ignored
    touch(
        root, "valve", "test",
        "section_00_target_test_anomaly_0000_pat_02.wav",
        "section_00_source_test_normal_0000_pat_00.wav",
        "section_00_0000.wav",  # unlabeled eval clip
        "garbage.wav",  # reported
        "section_00_source_train_normal_0005_pat_00.wav",  # split mismatch: reported
    )
    touch(
        root, "ToyCar", "train",
        "section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav",
        "section_00_source_train_anomaly_0001_car_A1_spd_28V_mic_1.wav",  # reported
        "section_00_source_train_normal_0002_.wav",
    )
    touch(root, "fan", "test", "section_00_source_test_normal_0000_noAttribute.wav")
    (root / "not_a_machine").mkdir()  # no train/test: not a machine
    (root / "stray.wav").write_bytes(b"")
    return root


def test_list_machines(tree):
    assert list_machines(tree) == ["ToyCar", "fan", "valve"]


def test_scan_clips_sorted_and_parsed(tree):
    scan = scan_dcase(tree)
    assert isinstance(scan, Scan)
    paths = [str(c.path) for c in scan.clips]
    assert paths == sorted(paths)
    names = {c.path.relative_to(tree).as_posix(): c for c in scan.clips}
    assert set(names) == {
        "ToyCar/train/section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav",
        "ToyCar/train/section_00_source_train_normal_0002_.wav",
        "fan/test/section_00_source_test_normal_0000_noAttribute.wav",
        "valve/test/section_00_0000.wav",
        "valve/test/section_00_source_test_normal_0000_pat_00.wav",
        "valve/test/section_00_target_test_anomaly_0000_pat_02.wav",
        "valve/train/section_00_source_train_normal_0000_pat_00.wav",
        "valve/train/section_00_source_train_normal_0001_pat_01.wav",
        "valve/train/section_00_target_train_normal_0000_pat_02.wav",
    }
    c = names["valve/test/section_00_target_test_anomaly_0000_pat_02.wav"]
    assert (c.machine, c.split, c.section, c.domain, c.label, c.attributes) == (
        "valve", "test", "00", "target", 1, (("pat", "02"),)
    )
    c = names["valve/test/section_00_0000.wav"]
    assert (c.machine, c.split, c.domain, c.label) == ("valve", "test", None, None)
    c = names["ToyCar/train/section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav"]
    assert c.attributes == (("car", "A1"), ("spd", "28V"), ("mic", "1"))
    assert names["ToyCar/train/section_00_source_train_normal_0002_.wav"].attributes == ()
    assert names["fan/test/section_00_source_test_normal_0000_noAttribute.wav"].attributes == ()
    for c in scan.clips:
        assert c.machine == c.path.parent.parent.name
        assert c.split == c.path.parent.name


def test_scan_reports_problems_not_drops(tree):
    scan = scan_dcase(tree)
    problems = {p.relative_to(tree).as_posix(): reason for p, reason in scan.problems}
    assert set(problems) == {
        "valve/test/garbage.wav",
        "valve/test/section_00_source_train_normal_0005_pat_00.wav",
        "ToyCar/train/section_00_source_train_anomaly_0001_car_A1_spd_28V_mic_1.wav",
    }
    assert EXPECTED_NAME in problems["valve/test/garbage.wav"]
    assert problems["valve/test/garbage.wav"].startswith("file name does not parse")
    assert "split 'train'" in problems["valve/test/section_00_source_train_normal_0005_pat_00.wav"]
    assert "must be normal" in problems[
        "ToyCar/train/section_00_source_train_anomaly_0001_car_A1_spd_28V_mic_1.wav"
    ]
    # every .wav file in a split folder is either a clip or a problem
    wavs = {
        p for p in tree.glob("*/*/*.wav") if p.is_file() and not p.name.startswith(".")
    }
    assert wavs == {c.path for c in scan.clips} | {p for p, _ in scan.problems}


def test_scan_selected_machines_and_splits(tree):
    scan = scan_dcase(tree, machines=["valve"], splits=("train",))
    assert {c.machine for c in scan.clips} == {"valve"}
    assert {c.split for c in scan.clips} == {"train"}
    assert len(scan.clips) == 3 and scan.problems == []
    scan = scan_dcase(tree, machines=["fan", "ToyCar"], splits=("test",))
    assert [c.name for c in scan.clips] == ["section_00_source_test_normal_0000_noAttribute.wav"]


def test_unknown_machine_is_config_error(tree):
    with pytest.raises(ConfigError) as ei:
        scan_dcase(tree, machines=["valve", "pump"])
    msg = str(ei.value)
    assert "pump" in msg
    assert "ToyCar, fan, valve" in msg


def test_missing_root_is_dataset_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="does not exist") as ei:
        scan_dcase(missing)
    assert str(missing) in str(ei.value)
    with pytest.raises(DatasetError):
        list_machines(missing)


def test_root_without_machine_folders_is_dataset_error(tmp_path):
    (tmp_path / "just_a_folder").mkdir()
    (tmp_path / "x.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="no machine folders"):
        scan_dcase(tmp_path)


# ---------------------------------------------------------------- real DCASE 2023 dev subset


def test_real_dcase2023_subset(real_data):
    root = real_data / "dcase2023t2_dev_subset"
    machines = list_machines(root)
    assert machines == sorted(["ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider", "valve"])
    scan = scan_dcase(root)
    assert scan.problems == []
    assert len(scan.clips) == 26
    assert len(list(root.glob("*/*/*.wav"))) == 26
    assert {c.machine for c in scan.clips} == set(machines)
    paths = [str(c.path) for c in scan.clips]
    assert paths == sorted(paths)

    for c in scan.clips:
        tokens = c.name.split("_")
        assert c.machine == c.path.parent.parent.name
        assert c.split == c.path.parent.name == tokens[3]
        assert c.section == tokens[1] == "00"
        assert c.domain == tokens[2]
        assert c.label == {"normal": 0, "anomaly": 1}[tokens[4]]
        if c.split == "train":
            assert c.label == 0
        # attributes re-join to the tail of the name
        tail = c.name[: -len(".wav")].split("_", 6)[6]
        assert "_".join(f"{k}_{v}" for k, v in c.attributes) == tail

    by_name = {c.name: c for c in scan.clips}
    toycar = by_name["section_00_source_test_normal_0028_car_C2_spd_34V_mic_1.wav"]
    assert toycar.machine == "ToyCar" and toycar.split == "test"
    assert (toycar.domain, toycar.label) == ("source", 0)
    assert toycar.attributes == (("car", "C2"), ("spd", "34V"), ("mic", "1"))
    gear = by_name["section_00_target_test_anomaly_0040_volt_1.5_wt_130.wav"]
    assert (gear.machine, gear.domain, gear.label) == ("gearbox", "target", 1)
    assert gear.attributes == (("volt", "1.5"), ("wt", "130"))
    fan = by_name["section_00_source_test_anomaly_0022_m-n_W.wav"]
    assert fan.attributes == (("m-n", "W"),)
    assert sum(c.label for c in scan.clips) == sum("_anomaly_" in n for n in by_name)


def test_missing_attribute_tables_are_one_warning_for_2023_to_2025(tmp_path, caplog):
    from stetho.datasets.dcase import scan

    for m in ("fan", "valve"):
        (tmp_path / m / "train").mkdir(parents=True)
        (tmp_path / m / "train" / "section_00_source_train_normal_0000_a_1.wav").write_bytes(b"")
    (tmp_path / "valve" / "attributes_00.csv").write_text("file_name,d1p,d1v\n")
    with caplog.at_level("WARNING"):
        scan(tmp_path, year="dcase2024")
    warnings = [r.getMessage() for r in caplog.records if "attributes_00.csv" in r.getMessage()]
    assert len(warnings) == 1 and "of fan (DCASE 2023-2025 ship one" in warnings[0]
    caplog.clear()
    scan(tmp_path, year="dcase2022")  # 2022 has no attribute tables
    assert not [r for r in caplog.records if "attributes_00.csv" in r.getMessage()]
