"""Tests of stetho.datasets.ground_truth: the organisers' ground-truth tables and label_clips()."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from stetho.datasets import Clip, GroundTruth, label_clips, read_ground_truth
from stetho.datasets import dcase, dcase2020, dcase2021
from stetho.datasets.ground_truth import Truth
from stetho.errors import DatasetError


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def touch(root: Path, machine: str, folder: str, *names: str) -> None:
    d = root / machine / folder
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        (d / name).write_bytes(b"")


def clip(machine: str, name: str, domain: str | None = None, **kw) -> Clip:
    return Clip(Path("eval") / machine / "test" / name, machine, name.split("_")[1], "test", domain, **kw)


# ================================================================ 2020: eval_data_list.csv


@pytest.fixture
def gt2020(tmp_path) -> Path:
    folder = tmp_path / "gt2020"
    write(folder / "eval_data_list.csv",
          "ToyCar",
          "id_05_00000000.wav,anomaly_id_05_00000000.wav,1",
          "id_05_00000001.wav,normal_id_05_00000000.wav,0",
          "",
          "fan,,",  # a machine-type line with empty cells
          "id_01_00000000.wav,normal_id_01_00000000.wav,0",
          "id_01_00000001.wav,anomaly_id_01_00000007.wav,1",
          "id_05_00000000.wav,normal_id_05_00000003.wav,0")  # the ToyCar name again, other machine
    return folder


def test_read_2020(gt2020):
    truth = read_ground_truth(gt2020)
    assert isinstance(truth, GroundTruth)
    assert truth.format == "dcase2020" and truth.source == gt2020
    assert truth.entries == {
        ("ToyCar", "id_05_00000000.wav"): Truth(1),
        ("ToyCar", "id_05_00000001.wav"): Truth(0),
        ("fan", "id_01_00000000.wav"): Truth(0),
        ("fan", "id_01_00000001.wav"): Truth(1),
        ("fan", "id_05_00000000.wav"): Truth(0),
    }
    assert truth.machines() == ["ToyCar", "fan"]


def test_label_2020_eval_tree(gt2020, tmp_path):
    root = tmp_path / "eval_data"
    touch(root, "ToyCar", "test", "id_05_00000001.wav", "id_05_00000000.wav")
    touch(root, "fan", "test", "id_05_00000000.wav", "id_01_00000001.wav", "id_01_00000000.wav")
    clips = dcase2020.scan(root, splits=("test",)).clips
    assert all(c.label is None for c in clips)
    labeled = label_clips(clips, read_ground_truth(gt2020))
    assert [(c.machine, c.name, c.section, c.label, c.domain, c.meta) for c in labeled] == [
        ("ToyCar", "id_05_00000000.wav", "05", 1, None, (("id", "05"),)),
        ("ToyCar", "id_05_00000001.wav", "05", 0, None, (("id", "05"),)),
        ("fan", "id_01_00000000.wav", "01", 0, None, (("id", "01"),)),
        ("fan", "id_01_00000001.wav", "01", 1, None, (("id", "01"),)),
        ("fan", "id_05_00000000.wav", "05", 0, None, (("id", "05"),)),  # same name as ToyCar's, other label
    ]
    assert [c.path for c in labeled] == [c.path for c in clips]


@pytest.mark.parametrize("lines, message", [
    (["id_01_00000000.wav,normal_id_01_00000000.wav,0"], ":1: a file row before the first machine-type line"),
    (["fan", "id_01_00000000.wav,0"], ":2: expected '<eval name>,<renamed name>,<0|1>'"),
    (["fan", "", "id_01_00000000.wav,anomaly_id_01_00000000.wav,0"],
     ":3: the renamed name anomaly_id_01_00000000.wav contradicts the label 0"),
    (["fan", "id_01_00000000.wav,normal_id_01_00000000.wav,0", "", "id_01_00000000.wav,normal_id_01_00000000.wav,0"],
     ":4: fan id_01_00000000.wav is listed twice"),
    (["fan", "id_01_00000000.wav,normal_id_01_00000000.wav,maybe"],
     ": id_01_00000000.wav: label 'maybe' is not one of normal/anomaly/abnormal/0/1"),
])
def test_read_2020_errors(tmp_path, lines, message):
    path = write(tmp_path / "eval_data_list.csv", *lines)
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == f"{path}{message}"


# ================================================================ 2021: per-domain tables


@pytest.fixture
def gt2021(tmp_path) -> Path:
    folder = tmp_path / "gt2021"
    data = folder / "ground_truth_data"
    write(data / "ground_truth_fan_section_03_source_test.csv",
          "section_03_source_test_0001.wav,0", "section_03_source_test_0000.wav,1")
    write(data / "ground_truth_fan_section_03_target_test.csv",
          "section_03_target_test_0000.wav,0", "section_03_target_test_0001.wav,1")
    write(data / "ground_truth_ToyCar_section_04_source_test.csv", "section_04_source_test_0000.wav,1")
    write(data / "notes.csv", "not,a,table")  # ignored: not a ground-truth name
    return folder


def test_read_2021(gt2021):
    truth = read_ground_truth(gt2021)
    assert truth.format == "dcase2021"
    assert truth.entries == {
        ("fan", "section_03_source_test_0000.wav"): Truth(1, "source"),
        ("fan", "section_03_source_test_0001.wav"): Truth(0, "source"),
        ("fan", "section_03_target_test_0000.wav"): Truth(0, "target"),
        ("fan", "section_03_target_test_0001.wav"): Truth(1, "target"),
        ("ToyCar", "section_04_source_test_0000.wav"): Truth(1, "source"),
    }
    # the ground_truth_data folder itself works too
    inner = read_ground_truth(gt2021 / "ground_truth_data")
    assert inner.entries == truth.entries and inner.source == gt2021 / "ground_truth_data"


def test_label_2021_eval_tree(gt2021, tmp_path):
    root = tmp_path / "eval_data"
    touch(root, "fan", "source_test", "section_03_source_test_0000.wav", "section_03_source_test_0001.wav")
    touch(root, "fan", "target_test", "section_03_target_test_0000.wav", "section_03_target_test_0001.wav")
    touch(root, "ToyCar", "source_test", "section_04_source_test_0000.wav")
    clips = dcase2021.scan(root, splits=("test",)).clips
    labeled = label_clips(clips, read_ground_truth(gt2021))
    assert [(c.machine, c.name, c.section, c.domain, c.label) for c in labeled] == [
        ("ToyCar", "section_04_source_test_0000.wav", "04", "source", 1),
        ("fan", "section_03_source_test_0000.wav", "03", "source", 1),
        ("fan", "section_03_source_test_0001.wav", "03", "source", 0),
        ("fan", "section_03_target_test_0000.wav", "03", "target", 0),
        ("fan", "section_03_target_test_0001.wav", "03", "target", 1),
    ]


def test_2021_domain_contradiction(tmp_path):
    data = tmp_path / "ground_truth_data"
    write(data / "ground_truth_fan_section_03_source_test.csv", "section_03_source_test_0000.wav,1")
    # a source-domain file listed in the target table
    write(data / "ground_truth_fan_section_03_target_test.csv", "section_03_source_test_0001.wav,0")
    truth = read_ground_truth(tmp_path)
    clips = [clip("fan", "section_03_source_test_0000.wav", "source"),
             clip("fan", "section_03_source_test_0001.wav", "source")]
    with pytest.raises(DatasetError) as ei:
        label_clips(clips, truth)
    assert str(ei.value) == (
        f"{tmp_path}: the ground truth does not match the test files (joined by machine type and file name):\n"
        "  1 domain(s) contradict the file names:\n"
        "    fan/section_03_source_test_0001.wav (file says source, table says target)"
    )


def test_2021_table_errors(tmp_path):
    data = tmp_path / "ground_truth_data"
    path = write(data / "ground_truth_fan_section_03_source_test.csv",
                 "section_03_source_test_0000.wav,1", "", "section_03_source_test_0000.wav,0")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == f"{path}:3: section_03_source_test_0000.wav is listed twice"
    write(path, "section_03_source_test_0000.wav")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == f"{path}:1: expected '<file name>,<0|1>', got 'section_03_source_test_0000.wav'"
    write(path, "section_03_source_test_0000.wav,yes")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == (f"{path}: section_03_source_test_0000.wav: label 'yes' is not one of "
                             "normal/anomaly/abnormal/0/1")


# ================================================================ 2022-2025: data + domain (+ attributes)


def write_2022(folder: Path, machine: str, section: str, rows: list[tuple[str, int, int]],
               originals: dict[str, str] | None = None) -> Path:
    """Tables for one machine and section; ``rows`` are (name, label, domain code)."""
    table = f"ground_truth_{machine}_section_{section}_test.csv"
    data = write(folder / "ground_truth_data" / table, *(f"{n},{lab}" for n, lab, _ in rows))
    write(folder / "ground_truth_domain" / table, *(f"{n},{d}" for n, _, d in reversed(rows)))
    if originals is not None:
        write(folder / "ground_truth_attributes" / table, *(f"{n},{o}" for n, o in originals.items()))
    return data


def test_read_2022_and_shared_names(tmp_path):
    write_2022(tmp_path, "fan", "03", [("section_03_0000.wav", 1, 0), ("section_03_0001.wav", 0, 1)])
    write_2022(tmp_path, "valve", "03", [("section_03_0000.wav", 0, 1), ("section_03_0001.wav", 1, 0)])
    write_2022(tmp_path, "valve", "04", [("section_04_0000.wav", 1, 1)])
    truth = read_ground_truth(tmp_path)
    assert truth.format == "dcase2022"
    assert truth.entries == {
        ("fan", "section_03_0000.wav"): Truth(1, "source"),
        ("fan", "section_03_0001.wav"): Truth(0, "target"),
        ("valve", "section_03_0000.wav"): Truth(0, "target"),
        ("valve", "section_03_0001.wav"): Truth(1, "source"),
        ("valve", "section_04_0000.wav"): Truth(1, "target"),
    }
    # clips given in any order are joined by machine type and name, never by position
    clips = [clip("valve", "section_04_0000.wav"), clip("valve", "section_03_0001.wav"),
             clip("fan", "section_03_0001.wav"), clip("valve", "section_03_0000.wav"),
             clip("fan", "section_03_0000.wav", attributes=(("x", "1"),), meta=(("k", "v"),))]
    labeled = label_clips(clips, truth)
    assert [(c.machine, c.name, c.label, c.domain) for c in labeled] == [
        ("valve", "section_04_0000.wav", 1, "target"),
        ("valve", "section_03_0001.wav", 1, "source"),
        ("fan", "section_03_0001.wav", 0, "target"),
        ("valve", "section_03_0000.wav", 0, "target"),
        ("fan", "section_03_0000.wav", 1, "source"),
    ]
    # everything else is kept; attributes stay when the truth has none
    assert labeled[4] == replace(clips[4], label=1, domain="source")
    assert labeled[4].attributes == (("x", "1"),) and labeled[4].meta == (("k", "v"),)


def test_read_2023_attributes(tmp_path):
    write_2022(tmp_path, "ToyCar", "00",
               [("section_00_0000.wav", 0, 1), ("section_00_0001.wav", 1, 0), ("section_00_0002.wav", 1, 0)],
               originals={
                   "section_00_0000.wav": "section_00_target_test_normal_0032_car_C2_spd_H_mic_2",
                   "section_00_0001.wav": "section_00_source_test_anomaly_0007_car_A1_spd_28V_mic_1",
                   "section_00_0002.wav": "section_00_source_test_anomaly_0008_noAttribute",
               })
    write_2022(tmp_path, "gearbox", "00", [("section_00_0000.wav", 0, 0)],
               originals={"section_00_0000.wav": "section_00_source_test_normal_0001_volt_1.0_wt_30"})
    truth = read_ground_truth(tmp_path)
    assert truth.format == "dcase2023"
    assert truth.entries == {
        ("ToyCar", "section_00_0000.wav"): Truth(0, "target", (("car", "C2"), ("spd", "H"), ("mic", "2"))),
        ("ToyCar", "section_00_0001.wav"): Truth(1, "source", (("car", "A1"), ("spd", "28V"), ("mic", "1"))),
        ("ToyCar", "section_00_0002.wav"): Truth(1, "source", ()),
        ("gearbox", "section_00_0000.wav"): Truth(0, "source", (("volt", "1.0"), ("wt", "30"))),
    }
    # attached to the clips by label_clips, over the (empty) attributes of an unlabeled name
    eval_root = tmp_path / "eval_data"
    touch(eval_root, "ToyCar", "test", "section_00_0000.wav", "section_00_0001.wav", "section_00_0002.wav")
    touch(eval_root, "gearbox", "test", "section_00_0000.wav")
    clips = dcase.scan(eval_root, splits=("test",)).clips
    labeled = label_clips(clips, truth)
    assert [(c.machine, c.name, c.label, c.domain, c.attributes) for c in labeled] == [
        ("ToyCar", "section_00_0000.wav", 0, "target", (("car", "C2"), ("spd", "H"), ("mic", "2"))),
        ("ToyCar", "section_00_0001.wav", 1, "source", (("car", "A1"), ("spd", "28V"), ("mic", "1"))),
        ("ToyCar", "section_00_0002.wav", 1, "source", ()),
        ("gearbox", "section_00_0000.wav", 0, "source", (("volt", "1.0"), ("wt", "30"))),
    ]


def test_2023_original_name_contradicting_the_tables(tmp_path):
    write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0)],
               originals={"section_00_0000.wav": "section_00_target_test_anomaly_0001_n_A"})
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == (
        f"{tmp_path / 'ground_truth_attributes' / 'ground_truth_fan_section_00_test.csv'}: section_00_0000.wav: "
        "the original name section_00_target_test_anomaly_0001_n_A contradicts the label/domain tables")
    write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0)],
               originals={"section_00_0000.wav": "section_00_source_test_normal_0001_n_A"})
    with pytest.raises(DatasetError, match="contradicts the label/domain tables"):
        read_ground_truth(tmp_path)


def test_2022_data_table_without_domain_table(tmp_path):
    data = write(tmp_path / "ground_truth_data" / "ground_truth_fan_section_00_test.csv", "section_00_0000.wav,1")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    domain = tmp_path / "ground_truth_domain" / "ground_truth_fan_section_00_test.csv"
    assert str(ei.value) == (f"{data}: its domain table {domain} is missing (DCASE 2022-2025 ground truth "
                             "comes as ground_truth_data/ and ground_truth_domain/)")
    # given the data folder itself, the domain folder is looked for beside it
    with pytest.raises(DatasetError, match="its domain table .* is missing"):
        read_ground_truth(tmp_path / "ground_truth_data")
    write(domain, "section_00_0000.wav,1")
    assert read_ground_truth(tmp_path / "ground_truth_data").entries == {
        ("fan", "section_00_0000.wav"): Truth(1, "target")}


def test_2022_domain_table_errors(tmp_path):
    data = write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0), ("section_00_0001.wav", 0, 1)])
    domain = tmp_path / "ground_truth_domain" / data.name
    write(domain, "section_00_0000.wav,0", "section_00_0002.wav,1")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == (f"{domain}: does not list the same files as {data}: "
                             "section_00_0001.wav, section_00_0002.wav")
    write(domain, "section_00_0000.wav,0", "section_00_0001.wav,target")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == f"{domain}: section_00_0001.wav: domain 'target' is not 0 (source) or 1 (target)"


def test_same_name_in_two_tables_of_one_machine(tmp_path):
    write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0)])
    second = write_2022(tmp_path, "fan", "01", [("section_00_0000.wav", 0, 0)])
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == f"{second}: fan section_00_0000.wav is also listed in another table"


def test_2021_and_2022_tables_mixed(tmp_path):
    write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0)])
    write(tmp_path / "ground_truth_data" / "ground_truth_fan_section_03_source_test.csv",
          "section_03_source_test_0000.wav,1")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value) == (f"{tmp_path / 'ground_truth_data'}: mixes 2021 tables (..._<source|target>_test.csv) "
                             "with 2022-2025 tables (..._test.csv)")


def test_no_tables(tmp_path):
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path / "missing")
    assert str(ei.value) == f"{tmp_path / 'missing'}: ground-truth folder does not exist"
    write(tmp_path / "ground_truth_data" / "fan.csv", "section_00_0000.wav,1")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(tmp_path)
    assert str(ei.value).startswith(f"{tmp_path}: no ground-truth tables found; expected eval_data_list.csv (2020)")


# ================================================================ label_clips mismatches


def test_label_clips_lists_every_mismatch(tmp_path, caplog):
    write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0), ("section_00_0001.wav", 0, 1),
                                       ("section_00_0002.wav", 0, 0)])
    write_2022(tmp_path, "valve", "00", [("section_00_0000.wav", 1, 0)])
    write_2022(tmp_path, "slider", "00", [("section_00_0000.wav", 1, 0)])  # not in the data
    truth = read_ground_truth(tmp_path)
    clips = [clip("fan", "section_00_0000.wav"), clip("fan", "section_00_0009.wav"),
             clip("pump", "section_00_0000.wav"), clip("valve", "section_00_0000.wav", "target")]
    with caplog.at_level(logging.WARNING, logger="stetho.datasets.ground_truth"):
        with pytest.raises(DatasetError) as ei:
            label_clips(clips, truth)
    assert str(ei.value) == (
        f"{tmp_path}: the ground truth does not match the test files (joined by machine type and file name):\n"
        "  no ground truth for machine type(s): pump\n"
        "  2 test file(s) without a ground-truth row:\n"
        "    fan/section_00_0009.wav\n"
        "    pump/section_00_0000.wav\n"
        "  2 ground-truth row(s) without a test file:\n"
        "    fan/section_00_0001.wav\n"
        "    fan/section_00_0002.wav\n"
        "  1 domain(s) contradict the file names:\n"
        "    valve/section_00_0000.wav (file says target, table says source)"
    )
    assert "ground truth for machine type(s) slider not found in the data: ignored" in caplog.text


def test_label_clips_only_missing_rows(tmp_path):
    write_2022(tmp_path, "fan", "00", [("section_00_0000.wav", 1, 0)])
    truth = read_ground_truth(tmp_path)
    with pytest.raises(DatasetError) as ei:
        label_clips([clip("fan", "section_00_0000.wav"), clip("fan", "section_00_0001.wav")], truth)
    msg = str(ei.value)
    assert msg.endswith("\n  1 test file(s) without a ground-truth row:\n    fan/section_00_0001.wav")
    assert "row(s) without a test file" not in msg and "no ground truth for" not in msg


def test_label_clips_by_key(tmp_path):
    # a clip's score-file name is its key when it has one
    write_2022(tmp_path, "fan", "00", [("renamed_0000.wav", 1, 1)])
    c = Clip(Path("x") / "section_00_0000.wav", "fan", "00", "test", key="renamed_0000.wav")
    (out,) = label_clips([c], read_ground_truth(tmp_path))
    assert (out.label, out.domain, out.key, out.path) == (1, "target", "renamed_0000.wav", c.path)


def test_label_clips_empty():
    truth = GroundTruth({("fan", "a.wav"): Truth(1)}, "dcase2022", Path("gt"))
    assert label_clips([], truth) == []


def test_2020_file_row_without_its_columns_is_an_error(tmp_path):
    write(tmp_path / "eval_data_list.csv", "fan", "id_01_00000000.wav,normal_id_01_00000000.wav,0",
          "id_01_00000001.wav")
    with pytest.raises(DatasetError, match=r"eval_data_list.csv:3: expected .* got only id_01_00000001.wav"):
        read_ground_truth(tmp_path)
