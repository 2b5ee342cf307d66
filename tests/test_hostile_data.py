"""Hostile and damaged inputs at the data and config boundary (issue 15).

Names that become paths (machine types, sections) are checked wherever data enters; every audio
format libsndfile reads is scanned and other files are reported; a labels.csv the layout does
not read is a warning; a damaged recipe / config.yaml is a one-line error naming the file; config
values are range-checked; manifest rows are read exactly as written or refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stetho.config import SEED_MAX, load_recipe, resolve
from stetho.datasets import (
    MAX_NAME_LENGTH, check_name, is_safe_name, read_ground_truth, read_manifest, scan_dataset,
)
from stetho.datasets import dcase, dcase2020, dcase2021, mimii
from stetho.synth import MACHINES as TOY_MACHINES
from stetho.errors import ConfigError, DatasetError


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


# ====================================================================== 1. safe names

HOSTILE = {
    "": "is empty",
    ".": "is a relative folder reference",
    "..": "is a relative folder reference",
    "../../x": "contains the path separator '/'",
    "/tmp/x/VICTIM": "contains the path separator '/'",
    "a\\b": "contains the path separator '\\\\'",
    ".hidden": "starts with '.'",
    "-rf": "starts with '-'",
    "fan\n": "contains a control character",
    "fan\x00": "contains a control character",
    "x" * (MAX_NAME_LENGTH + 1): f"is {MAX_NAME_LENGTH + 1} characters long (at most {MAX_NAME_LENGTH})",
    "fan.": "ends with '.'",
    "CON": "is a device name Windows reserves",
    "nul.txt": "is a device name Windows reserves",
    "fan 1": "contains ' '",
    "L\u00fcfter": "contains '\u00fc'",
    "fan;rm": "contains ';'",
}


@pytest.mark.parametrize("value", list(HOSTILE))
def test_check_name_refuses_hostile_names(value):
    assert not is_safe_name(value)
    with pytest.raises(DatasetError) as ei:
        check_name(value, "machine type", "clips.csv line 3")
    msg = one_line(ei)
    assert msg.startswith("clips.csv line 3: machine type ")
    assert f"is not a safe name ({HOSTILE[value]}); use ASCII letters, digits and _ - . +" in msg
    assert len(msg) < 300  # a 10 000-character value is quoted shortened


def test_check_name_error_class_and_long_value_quoted_short():
    with pytest.raises(ConfigError) as ei:
        check_name("a/" * 5000, "asset id", "request", ConfigError)
    msg = one_line(ei)
    assert msg.startswith("request: asset id 'a/a/a/") and "... is not a safe name" in msg
    assert not is_safe_name(3) and "is a int, not text" in str(pytest.raises(DatasetError, check_name, 3, "x", "y").value)


def test_every_real_and_known_name_is_safe(real_data):
    """The rule must let every real machine type and section through (all layouts, toy data,
    the machine types of every DCASE year, MIMII sections with negative SNRs)."""
    names = set(TOY_MACHINES) | set(dcase2020.MACHINES) | set(dcase2021.MACHINES) | set(mimii.MACHINES)
    names |= {m for year in dcase.MACHINES.values() for m in year}
    names |= {"00_-6dB", "06_6dB", "M1", "bldc", "ON", "FAN_GUARDS"}
    for folder in ("dcase2020t2_dev_subset", "dcase2021t2_dev_subset", "dcase2023t2_dev_subset",
                   "mimii_0dB_subset", "mimii_8ch_originals", "mimii_fan_id00_subset"):
        scan = scan_dataset(real_data / folder)
        assert scan.problems == [] and scan.clips
        names |= {c.machine for c in scan.clips} | {c.section for c in scan.clips}
    assert {"ToyConveyor", "gearbox", "3DPrinter", "00_0dB", "02"} <= names
    assert [n for n in sorted(names) if not is_safe_name(n)] == []


def test_manifest_refuses_names_that_would_become_paths(tmp_path):
    mf = touch(tmp_path / "clips.csv", "path,machine,split,section\n"
                                       "a.wav,/tmp/x/VICTIM,train,\n"
                                       "b.wav,../../x,train,\n"
                                       "c.wav,fan,test,../00\n"
                                       "d.wav,fan,test,00\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    lines = str(ei.value).splitlines()
    assert lines[0] == f"{mf}: 3 bad row(s):"
    assert lines[1].startswith("  line 2 (a.wav): machine type '/tmp/x/VICTIM' is not a safe name "
                               "(contains the path separator '/')")
    assert lines[2].startswith("  line 3 (b.wav): machine type '../../x' is not a safe name")
    assert lines[3].startswith("  line 4 (c.wav): section '../00' is not a safe name")


def test_labels_csv_refuses_unsafe_section(tmp_path):
    touch(tmp_path / "fan/train/a.wav")
    touch(tmp_path / "fan/test/b.wav")
    touch(tmp_path / "labels.csv", "file,label,section\nfan/test/b.wav,normal,../../evil\n")
    with pytest.raises(DatasetError) as ei:
        scan_dataset(tmp_path, "folder")
    assert str(ei.value) == (f"{tmp_path / 'labels.csv'}: 1 bad row(s):\n  line 2 (fan/test/b.wav): section "
                             "'../../evil' is not a safe name (contains the path separator '/'); use ASCII "
                             "letters, digits and _ - . + (at most 64 characters, not starting with . - +)")


LAYOUT_FILES = {
    "folder": ("{m}/train/a.wav", "{m}/test/b.wav"),
    "dcase2020": ("{m}/train/normal_id_00_00000000.wav", "{m}/test/anomaly_id_00_00000001.wav"),
    "dcase2021": ("{m}/train/section_00_source_train_normal_0000_a.wav",
                  "{m}/source_test/section_00_source_test_anomaly_0000_a.wav"),
    "dcase2023": ("{m}/train/section_00_source_train_normal_0000_a_1.wav",
                  "{m}/test/section_00_source_test_anomaly_0000_a_1.wav"),
    "mimii": ("{m}/id_00/normal/00000000.wav", "{m}/id_00/abnormal/00000000.wav"),
}


@pytest.mark.parametrize("layout", list(LAYOUT_FILES))
def test_unsafe_machine_folder_is_a_listed_problem(tmp_path, layout):
    """A machine folder whose name is not safe: its files are problems (fatal unless --skip-bad,
    then listed in skipped.csv), the other machine types are read."""
    bad = "fan 1"
    for m in ("fan", bad):
        for pattern in LAYOUT_FILES[layout]:
            touch(tmp_path / pattern.format(m=m))
    scan = scan_dataset(tmp_path, layout)
    assert {c.machine for c in scan.clips} == {"fan"} and len(scan.clips) == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p, _ in scan.problems) == sorted(
        pattern.format(m=bad) for pattern in LAYOUT_FILES[layout])
    assert {r for _, r in scan.problems} == {"machine type 'fan 1' is not a safe name (contains ' '); use ASCII "
                                             "letters, digits and _ - . + (at most 64 characters, not starting "
                                             "with . - +)"}


def test_dcase_section_of_unicode_digits_is_a_problem(tmp_path):
    """``\\d`` matches Arabic-Indic digits too; such a section must not reach a file name."""
    touch(tmp_path / "fan/train/section_00_source_train_normal_0000_a_1.wav")
    odd = touch(tmp_path / "fan/train/section_\u0660\u0661_source_train_normal_0000_a_1.wav")
    scan = scan_dataset(tmp_path, "dcase2023")
    assert [c.section for c in scan.clips] == ["00"]
    assert [(p, r.split(" (")[0]) for p, r in scan.problems] == [(odd, "section '\u0660\u0661' is not a safe name")]


def test_ground_truth_refuses_unsafe_machine_types(tmp_path):
    gt = tmp_path / "gt2020"
    touch(gt / "eval_data_list.csv", "fan\nid_01_00000000.wav,normal_id_01_00000000.wav,0\n../x\n")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(gt)
    assert one_line(ei).startswith(f"{gt / 'eval_data_list.csv'}:3: machine type '../x' is not a safe name")
    gt = tmp_path / "gt2023"
    touch(gt / "ground_truth_data/ground_truth_fan;rm_section_00_test.csv", "section_00_0000.wav,1\n")
    touch(gt / "ground_truth_domain/ground_truth_fan;rm_section_00_test.csv", "section_00_0000.wav,0\n")
    with pytest.raises(DatasetError) as ei:
        read_ground_truth(gt)
    table = gt / "ground_truth_data/ground_truth_fan;rm_section_00_test.csv"
    assert one_line(ei).startswith(f"{table} (its file name): machine type 'fan;rm' is not a safe name (contains ';')")


@pytest.mark.parametrize("machines", ["../x", ["fan", "/tmp/x/VICTIM"], "fan,..", [".."], [3]])
def test_config_machines_must_be_safe_names(machines):
    with pytest.raises(ConfigError) as ei:
        resolve({"machines": machines})
    assert one_line(ei).startswith("config: machines: machine type ")
    assert "is not a safe name" in str(ei.value)


def test_config_machines_comma_list_still_works():
    assert resolve({"machines": "fan, ToyCar,"})["machines"] == ["fan", "ToyCar"]
    with pytest.raises(ConfigError, match=r"compare.variants: variant name \(it names a folder\) '../a'"):
        resolve({"compare": {"variants": {"../a": {}}}})


# ====================================================================== 2. audio formats


def test_folder_layout_reads_every_audio_format_and_reports_the_rest(tmp_path, caplog):
    for name in ("a.wav", "b.flac", "c.ogg", "d.OGG", "e.mp3", "README.txt", "notes.pdf", ".hidden.flac"):
        touch(tmp_path / "fan/train" / name)
    touch(tmp_path / "fan/train/sub/f.FLAC")
    touch(tmp_path / "fan/test/g.aiff")
    with caplog.at_level(logging.WARNING, logger="stetho.datasets"):
        scan = scan_dataset(tmp_path)
    assert scan.dataset == "folder"
    assert [c.name for c in scan.clips] == ["g.aiff", "a.wav", "b.flac", "c.ogg", "d.OGG", "e.mp3", "sub/f.FLAC"]
    assert [p.name for p in scan.ignored] == ["README.txt", "notes.pdf"]
    msgs = [r.getMessage() for r in caplog.records if "not audio" in r.getMessage()]
    assert msgs == [f"{tmp_path}: ignored 2 file(s) that are not audio (fan/train/README.txt, fan/train/notes.pdf); "
                    "audio files are those libsndfile reads (.wav, .flac, .ogg, .mp3, .aiff ...)"]


def test_ignored_message_names_three_and_counts_all(tmp_path, caplog):
    for name in ("a.wav", "1.txt", "2.txt", "3.txt", "4.txt", "5.csv"):
        touch(tmp_path / "fan/train" / name)
    with caplog.at_level(logging.WARNING, logger="stetho.datasets"):
        scan_dataset(tmp_path)
    assert (f"{tmp_path}: ignored 5 file(s) that are not audio (fan/train/1.txt, fan/train/2.txt, fan/train/3.txt, "
            "...)") in caplog.text


@pytest.mark.parametrize("layout", ["dcase2020", "dcase2021", "dcase2023", "mimii"])
def test_named_layouts_accept_any_audio_extension(tmp_path, layout):
    """DCASE / MIMII layouts: a clip converted to FLAC (half the size) keeps its parsed name."""
    train, test = LAYOUT_FILES[layout]
    flac = touch(tmp_path / train.format(m="fan").replace(".wav", ".flac"))
    wav = touch(tmp_path / test.format(m="fan"))
    touch(flac.parent / "readme.txt")
    scan = scan_dataset(tmp_path, layout)
    assert scan.problems == []
    assert sorted(c.path for c in scan.clips) == sorted([flac, wav])
    assert scan.ignored == [flac.parent / "readme.txt"]
    clip = next(c for c in scan.clips if c.path == flac)
    assert clip.label == 0 and clip.split == ("test" if layout == "mimii" else "train")  # MIMII: 1 normal tests


def test_manifest_lists_flac_and_ogg(tmp_path):
    mf = touch(tmp_path / "clips.csv", "path,machine,split,label\na.flac,fan,train,\nb.ogg,fan,test,1\n")
    assert [(c.path.name, c.label) for c in scan_dataset(mf).clips] == [("a.flac", 0), ("b.ogg", 1)]


# ====================================================================== 3. labels.csv the layout does not read


def test_labels_csv_ignored_by_a_dcase_layout_is_a_warning(tmp_path, caplog):
    touch(tmp_path / "fan/train/section_00_source_train_normal_0000_a_1.wav")
    touch(tmp_path / "fan/test/section_00_source_test_anomaly_0000_a_1.wav")
    table = touch(tmp_path / "fan/labels.csv", "file,label\ntest/section_00_source_test_anomaly_0000_a_1.wav,normal\n")
    with caplog.at_level(logging.WARNING, logger="stetho.datasets"):
        scan_dataset(tmp_path)
        scan_dataset(tmp_path, splits=("test",))  # a run scans twice: one warning
    warnings = [r.getMessage() for r in caplog.records if "labels.csv" in r.getMessage()]
    assert warnings == [f"{table} ignored: the data follows the DCASE 2023 Task 2 layout (detected by --dataset "
                        "auto), whose labels come from the file names; use --dataset folder to take the labels "
                        "from labels.csv"]
    # the folder layout reads it, without a warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stetho.datasets"):
        scan = scan_dataset(tmp_path, "folder")
    assert [c.label for c in scan.clips if c.split == "test"] == [0]
    assert "ignored" not in caplog.text


def test_labels_csv_ignored_by_mimii_names_the_folder_names(tmp_path, caplog):
    touch(tmp_path / "fan/id_00/normal/00000000.wav")
    table = touch(tmp_path / "labels.csv", "file,label\n")
    with caplog.at_level(logging.WARNING, logger="stetho.datasets"):
        scan_dataset(tmp_path, "mimii")
    assert (f"{table} ignored: the data follows the MIMII layout (--dataset mimii), whose labels come from the "
            "folder names (normal/abnormal)") in caplog.text


# ====================================================================== 4. damaged recipes / config.yaml

FULL = "data: /data/dcase\ndataset: dcase2023\nmachines: [fan]\nmodel: ae\nparams:\n  epochs: 5\ntest:\n  score: all\n"


@pytest.mark.parametrize("text, expected", [
    ("data: /data/dcase\ndataset: d", "dataset 'd' is not supported; choose from auto, dcase2020"),
    ("data: /data/dcase\ndataset: dcase2023\nmachines: [fa", "not valid YAML ("),
    ("data: /data/dcase\nparams:\n  epo", "params must be a mapping of model hyper-parameters (e.g. params: "
                                         "{epochs: 5}), got 'epo'"),
    ("data: /data/dcase\ntest: al", "test must be a mapping with the keys score, data, got 'al'"),
    ("data: /data/dcase\ntest:", "test must be a mapping with the keys score, data, got None"),
    ("data: /data/dcase\nseed:", "seed must be an integer from 0 to 4294967295, got None"),
    ("dat", "a recipe must be a YAML mapping of keys to values (key: value lines), got 'dat'; is the file complete?"),
    ("- data: x\n", "a recipe must be a YAML mapping of keys to values (key: value lines), got a list"),
    ("seed: 1\nmodel: ae\nseed: 2\n", "not valid YAML (key 'seed' appears twice (lines 1 and 3) at line 3, column 1)"),
    ("params:\n  epochs: 1\n  epochs: 2\n", "(key 'epochs' appears twice (lines 2 and 3) at line 3, column 3)"),
    ("data: x\nmodel: ae\nsede: 3\n", "unknown key 'sede'"),
])
def test_damaged_config_is_one_line_naming_the_file(tmp_path, text, expected):
    path = touch(tmp_path / "config.yaml", text)
    with pytest.raises(ConfigError) as ei:
        resolve(load_recipe(path), where=str(path))
    msg = one_line(ei)
    assert msg.startswith(f"{path}: ")
    assert expected in msg


def test_unreadable_config_files(tmp_path):
    binary = tmp_path / "config.yaml"
    binary.write_bytes(b"seed: 1\n\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as ei:
        load_recipe(binary)
    assert one_line(ei) == f"{binary}: not a UTF-8 text file (byte 8); a recipe is YAML text"
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    with pytest.raises(ConfigError) as ei:
        load_recipe(folder)
    assert one_line(ei) == f"{folder}: is a folder, not a recipe file"
    assert resolve(load_recipe(touch(tmp_path / "ok.yaml", FULL)))["params"] == {"epochs": 5}


def test_report_on_a_truncated_run_config_names_run_config_yaml(tmp_path):
    from stetho.pipeline import load_run_config

    run = tmp_path / "RUN"
    touch(run / "config.yaml", FULL[: FULL.index("dcase2023") + 1])  # cut after "dataset: d"
    with pytest.raises(ConfigError) as ei:
        load_run_config(run)
    assert one_line(ei).startswith(f"{run / 'config.yaml'}: dataset 'd' is not supported")


# ====================================================================== 5. config values


@pytest.mark.parametrize("seed", [1e20, 10**20, -1, SEED_MAX + 1, True, "7", None])
def test_seed_must_be_a_32_bit_unsigned_integer(seed):
    with pytest.raises(ConfigError) as ei:
        resolve({"seed": seed})
    assert one_line(ei) == f"config: seed must be an integer from 0 to 4294967295, got {seed!r}"


def test_seed_limits_accepted():
    assert resolve({"seed": 0})["seed"] == 0 and resolve({"seed": SEED_MAX})["seed"] == SEED_MAX
    with pytest.raises(ConfigError, match=r"compare.seeds must be an integer from 0 to 4294967295, got -3"):
        resolve({"compare": {"seeds": [1, -3]}})


@pytest.mark.parametrize("key, value, expected", [
    ("channel", True, "channel must be a non-negative integer (0 = the first channel), got True"),
    ("channel", -1, "channel must be a non-negative integer (0 = the first channel), got -1"),
    ("channel", 1.5, "channel must be a non-negative integer (0 = the first channel), got 1.5"),
    ("overwrite", "yes", "overwrite must be true or false, got 'yes'"),
    ("skip_bad", 1, "skip_bad must be true or false, got 1"),
    ("data", 5, "data must be a path, got 5"),
    ("out", "", "out must be a path, got ''"),
    ("model", None, "model must be a model name, got None"),
    ("device", "cuda:x", "device must be auto, cpu or cuda[:N], got 'cuda:x'"),
    ("threads", 0, "threads must be auto or a positive integer, got 0"),
    ("toy", "yes", "toy must be a mapping of toy-data settings"),
    ("machines", 5, "machines must be a list of machine type names (or comma-separated), got 5"),
])
def test_config_values_are_checked(key, value, expected):
    with pytest.raises(ConfigError) as ei:
        resolve({key: value})
    assert one_line(ei).startswith(f"config: {expected}")


def test_config_test_score_checked():
    with pytest.raises(ConfigError, match=r"^config: test.score must be all, a score mode or a list of them, got 5$"):
        resolve({"test": {"score": 5}})
    assert resolve({"test": {"score": ["a", "b"]}})["test"] == {"score": ["a", "b"], "data": None}


# ====================================================================== 6. partial labels in a manifest


def test_manifest_with_partial_labels_is_read_row_by_row(tmp_path):
    mf = touch(tmp_path / "clips.csv", "path,machine,split,label,domain\n"
                                       "t.wav,fan,train,,source\n"
                                       "a.wav,fan,test,normal,source\n"
                                       "b.wav,fan,test,,source\n"
                                       "c.wav,fan,test,1,target\n"
                                       "d.wav,fan,test, ,\n")
    clips, _ = read_manifest(mf)
    assert [(c.path.name, c.split, c.label, c.domain) for c in clips] == [
        ("t.wav", "train", 0, "source"), ("a.wav", "test", 0, "source"), ("b.wav", "test", None, "source"),
        ("c.wav", "test", 1, "target"), ("d.wav", "test", None, None)]


def test_manifest_bad_label_names_the_row(tmp_path):
    mf = touch(tmp_path / "clips.csv", "path,machine,split,label\na.wav,fan,test,1\nb.wav,fan,test,-1\n"
                                       "c.wav,fan,test,1.0\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert str(ei.value) == (f"{mf}: 2 bad row(s):\n"
                             "  line 3 (b.wav): label '-1' is not one of normal/anomaly/abnormal/0/1\n"
                             "  line 4 (c.wav): label '1.0' is not one of normal/anomaly/abnormal/0/1")


def test_manifest_short_row_is_not_read_as_unknown(tmp_path):
    """A row without its label cell would read as unlabeled: refused, naming the line."""
    mf = touch(tmp_path / "clips.csv", "path,machine,split,label,domain\na.wav,fan,test,1,source\nb.wav,fan,test\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert one_line(ei) == (f"{mf}: line 3 has 3 cell(s) but the header has 5 columns "
                            "(path,machine,split,label,domain); leave an unknown value as an empty cell")


def test_manifest_long_row_does_not_lose_cells(tmp_path):
    mf = touch(tmp_path / "clips.csv", "path,machine,split,label\na.wav,fan,test,1,target\nb.wav,fan,test,0,,\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert one_line(ei) == (f"{mf}: line 2 has 5 cells but the header has 4 columns (path,machine,split,label); "
                            "the cell(s) past the header ('target') would be lost")
    # empty cells past the header lose nothing
    touch(mf, "path,machine,split,label\na.wav,fan,test,1,,\n")
    assert [c.label for c in read_manifest(mf)[0]] == [1]


def test_manifest_repeated_column_and_non_utf8(tmp_path):
    mf = touch(tmp_path / "clips.csv", "path,machine,split,label,label\na.wav,fan,test,1,0\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert one_line(ei) == f"{mf}: column(s) label appear more than once in the header"
    mf.write_bytes(b"path,machine,split\n\xe9.wav,fan,test\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert one_line(ei) == f"{mf}: not a UTF-8 text file (byte 19); save the table as UTF-8 CSV"
    touch(mf, "path,machine,split\nx\x00y.wav,fan,test\n")
    with pytest.raises(DatasetError, match=r"line 2 \(x\x00y.wav\): the path contains a NUL character"):
        read_manifest(mf)
