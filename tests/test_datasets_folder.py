"""Tests of stetho.datasets.folder (one's own recordings) and stetho.datasets.manifest (clip CSVs)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from stetho.datasets import Clip, read_manifest, scan_dataset, write_manifest
from stetho.datasets import folder, manifest
from stetho.datasets.base import format_pairs, parse_label, parse_pairs
from stetho.errors import ConfigError, DatasetError
from stetho.features import AudioOptions, extract_logmels


def touch(*paths: Path) -> None:
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def write(path: Path, text: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
    return path


def summary(clips, root):
    return [(c.path.relative_to(root).as_posix(), c.machine, c.split, c.section, c.domain, c.label, c.key)
            for c in clips]


# ================================================================ shared helpers (base)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("normal", 0), ("Normal", 0), (" OK ", 0), ("good", 0),
    ("1", 1), ("anomaly", 1), ("ANOMALOUS", 1), ("abnormal", 1),
])
def test_parse_label(text, value):
    assert parse_label(text) == value


@pytest.mark.parametrize("text", ["", "2", "bad", "true", "-1"])
def test_parse_label_rejects(text):
    with pytest.raises(ValueError) as ei:
        parse_label(text)
    assert str(ei.value) == f"label '{text}' is not one of normal/anomaly/abnormal/0/1"


def test_parse_and_format_pairs():
    assert parse_pairs("speed=28V;load=high") == (("speed", "28V"), ("load", "high"))
    assert parse_pairs(" speed = 28V ; ;load=") == (("speed", "28V"), ("load", ""))
    assert parse_pairs("") == () and parse_pairs(None) == ()
    assert parse_pairs("url=a=b") == (("url", "a=b"),)
    for bad in ("speed", "=3", "a=1;b"):
        with pytest.raises(ValueError, match="is not name=value"):
            parse_pairs(bad)
    pairs = (("car", "A2"), ("spd", "28V"), ("mic", "1"))
    assert format_pairs(pairs) == "car=A2;spd=28V;mic=1"
    assert parse_pairs(format_pairs(pairs)) == pairs


# ================================================================ own recordings (folder)


@pytest.fixture
def own(tmp_path) -> Path:
    root = tmp_path / "recordings"
    touch(root / "fan/train/a.wav", root / "fan/train/b.wav", root / "fan/train/day2/c.wav",
          root / "fan/test/x.wav", root / "fan/test/y.WAV", root / "fan/test/day2/x.wav",
          root / "pump/train/p.wav", root / "pump/test/q.wav")
    write(root / "fan/test/notes.txt", "not audio")
    touch(root / "fan/test/.hidden.wav")
    (root / "docs").mkdir()
    return root


def test_folder_without_labels(own):
    result = folder.scan(own)
    assert result.dataset == "folder" and result.root == own and result.problems == []
    assert summary(result.clips, own) == [
        ("fan/test/day2/x.wav", "fan", "test", "00", None, None, "day2/x.wav"),
        ("fan/test/x.wav", "fan", "test", "00", None, None, None),
        ("fan/test/y.WAV", "fan", "test", "00", None, None, None),
        ("fan/train/a.wav", "fan", "train", "00", None, 0, None),
        ("fan/train/b.wav", "fan", "train", "00", None, 0, None),
        ("fan/train/day2/c.wav", "fan", "train", "00", None, 0, "day2/c.wav"),
        ("pump/test/q.wav", "pump", "test", "00", None, None, None),
        ("pump/train/p.wav", "pump", "train", "00", None, 0, None),
    ]
    names = [c.name for c in result.clips if c.machine == "fan" and c.split == "test"]
    assert names == ["day2/x.wav", "x.wav", "y.WAV"]  # x.wav twice on disk, two names
    assert all(c.attributes == () and c.meta == () for c in result.clips)


def test_folder_root_labels(own):
    write(own / "labels.csv", "file,label,domain,section\n"
          "fan/test/x.wav,anomaly,target,01\n"
          "fan/test/y.WAV,normal,source,\n"
          "fan/test/day2/x.wav,1,,\n"
          "pump/test/q.wav,OK,,\n"
          "fan/train/a.wav,normal,target,01\n"
          "pump/train/p.wav,0,source,\n")
    result = folder.scan(own)
    assert result.problems == []
    assert summary(result.clips, own) == [
        ("fan/test/day2/x.wav", "fan", "test", "00", None, 1, "day2/x.wav"),
        ("fan/test/x.wav", "fan", "test", "01", "target", 1, None),
        ("fan/test/y.WAV", "fan", "test", "00", "source", 0, None),
        ("fan/train/a.wav", "fan", "train", "01", "target", 0, None),
        ("fan/train/b.wav", "fan", "train", "00", None, 0, None),  # train files need no row
        ("fan/train/day2/c.wav", "fan", "train", "00", None, 0, "day2/c.wav"),
        ("pump/test/q.wav", "pump", "test", "00", None, 0, None),
        ("pump/train/p.wav", "pump", "train", "00", "source", 0, None),
    ]


def test_folder_per_machine_labels_with_bom(own):
    write(own / "fan/labels.csv", "file,label,domain\n"
          "test/x.wav,abnormal,source\ntest/y.WAV,good,target\ntest/day2/x.wav,0,source\n", bom=True)
    write(own / "pump/labels.csv", "label,file\nanomaly,test/q.wav\n")  # any column order
    result = folder.scan(own)
    got = {(c.machine, c.name): (c.label, c.domain) for c in result.clips if c.split == "test"}
    assert got == {("fan", "day2/x.wav"): (0, "source"), ("fan", "x.wav"): (1, "source"),
                   ("fan", "y.WAV"): (0, "target"), ("pump", "q.wav"): (1, None)}


def test_folder_table_for_one_machine_labels_only_that_machine(own):
    # fan/labels.csv labels fan; pump has no table, so its test files stay unlabeled (score only)
    write(own / "fan/labels.csv", "file,label\ntest/x.wav,0\ntest/y.WAV,1\ntest/day2/x.wav,0\n")
    result = folder.scan(own)
    got = {(c.machine, c.name): c.label for c in result.clips if c.split == "test"}
    assert got == {("fan", "day2/x.wav"): 0, ("fan", "x.wav"): 0, ("fan", "y.WAV"): 1, ("pump", "q.wav"): None}
    # ... but a table of fan that misses one of fan's test files is an error naming it
    write(own / "fan/labels.csv", "file,label\ntest/x.wav,0\ntest/y.WAV,1\n")
    with pytest.raises(DatasetError) as ei:
        folder.scan(own)
    msg = str(ei.value)
    assert msg.startswith(f"{own}: 1 test file(s) are not listed in labels.csv")
    assert str(own / "fan/test/day2/x.wav") in msg


def test_folder_file_listed_in_two_tables(own):
    write(own / "labels.csv", "file,label\nfan/test/x.wav,0\n")
    write(own / "fan/labels.csv", "file,label\ntest/x.wav,1\n")
    with pytest.raises(DatasetError) as ei:
        folder.scan(own)
    assert str(ei.value) == (f"{own / 'fan' / 'labels.csv'}: {(own / 'fan/test/x.wav').resolve()} "
                             "is also listed in another labels.csv")


def test_folder_bad_rows_listed_with_line_numbers(own):
    table = write(own / "labels.csv", "file,label,domain\n"
                  "fan/test/x.wav,normal,source\n"  # 2: fine
                  "fan/test/y.WAV,broken,\n"  # 3
                  "\n"  # 4: blank, still counted
                  "fan/test/y.WAV,normal,sideways\n"  # 5
                  ",normal,\n"  # 6
                  ",,\n"  # 7: empty row, skipped
                  "fan/test/x.wav,anomaly,\n")  # 8
    with pytest.raises(DatasetError) as ei:
        folder.scan(own)
    assert str(ei.value) == (
        f"{table}: 4 bad row(s):\n"
        "  line 3 (fan/test/y.WAV): label 'broken' is not one of normal/anomaly/abnormal/0/1\n"
        "  line 5 (fan/test/y.WAV): domain 'sideways' is not source or target\n"
        "  line 6: empty file name\n"
        "  line 8: fan/test/x.wav is listed twice"
    )


@pytest.mark.parametrize("header, message", [
    ("file,domain", "missing column(s) label; expected a header file,label[,domain][,section]"),
    ("name,label", "missing column(s) file; expected a header file,label[,domain][,section]"),
    ("", "missing column(s) file, label; expected a header file,label[,domain][,section]"),
    ("file,label,notes,speed", "unknown column(s) notes, speed; expected file,label[,domain][,section]"),
])
def test_folder_bad_header(own, header, message):
    table = write(own / "fan/labels.csv", header + ("\n" if header else ""))
    with pytest.raises(DatasetError) as ei:
        folder.scan(own)
    assert str(ei.value) == f"{table}: {message}"


def test_folder_listed_files_that_do_not_exist(own):
    write(own / "labels.csv", "file,label\nfan/test/x.wav,0\nfan/test/y.WAV,0\nfan/test/day2/x.wav,0\n"
          "pump/test/q.wav,1\nfan/test/gone.wav,1\nfan/other/z.wav,0\n")
    touch(own / "fan/other/z.wav")  # exists, but not under train/ or test/
    with pytest.raises(DatasetError) as ei:
        folder.scan(own)
    msg = str(ei.value)
    assert msg.startswith(f"{own}: 2 file(s) listed in labels.csv do not exist under <machine>/{{train,test}}/:")
    assert str((own / "fan/test/gone.wav").resolve()) in msg
    assert str((own / "fan/other/z.wav").resolve()) in msg


def test_folder_unlisted_test_files(own):
    write(own / "labels.csv", "file,label\nfan/test/x.wav,0\npump/test/q.wav,1\n")
    with pytest.raises(DatasetError) as ei:
        folder.scan(own)
    msg = str(ei.value)
    assert msg.startswith(f"{own}: 2 test file(s) are not listed in labels.csv (list every test file, "
                          "or remove labels.csv to score without evaluating):")
    assert msg.endswith(f"\n  {own / 'fan/test/day2/x.wav'}\n  {own / 'fan/test/y.WAV'}")
    # a header-only table lists nothing: every test file is unlisted
    write(own / "labels.csv", "file,label\n")
    with pytest.raises(DatasetError, match="4 test file"):
        folder.scan(own)


def test_folder_anomaly_marked_in_train(own):
    write(own / "labels.csv", "file,label\nfan/test/x.wav,0\nfan/test/y.WAV,0\nfan/test/day2/x.wav,0\n"
          "pump/test/q.wav,1\nfan/train/day2/c.wav,anomaly\n")
    result = folder.scan(own)
    assert result.problems == [(own / "fan/train/day2/c.wav", "a labels.csv marks this training file as an "
                                "anomaly (training clips must be normal)")]
    assert "day2/c.wav" not in [c.name for c in result.clips]
    assert len(result.clips) == 7


def test_folder_machines_and_splits(own):
    write(own / "labels.csv", "file,label\nfan/test/x.wav,0\nfan/test/y.WAV,0\nfan/test/day2/x.wav,0\n"
          "pump/test/q.wav,1\n")
    result = folder.scan(own, machines=["pump"], splits=("test",))
    assert summary(result.clips, own) == [("pump/test/q.wav", "pump", "test", "00", None, 1, None)]
    with pytest.raises(ConfigError, match=r"'pmup' \(did you mean 'pump'\?\)"):
        folder.scan(own, machines=["pmup"])


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="data folder does not exist"):
        folder.scan(tmp_path / "missing")
    touch(tmp_path / "a.wav", tmp_path / "fan" / "a.wav")
    with pytest.raises(DatasetError) as ei:
        folder.scan(tmp_path)
    assert str(ei.value).startswith(f"{tmp_path}: no machine folders found; expected")


# ================================================================ manifest


MANIFEST_HEADER = "path,machine,split,label,domain,section,attributes,key,meta,dataset\n"


def test_read_manifest_values(tmp_path):
    absolute = tmp_path / "elsewhere" / "b.wav"
    mf = write(tmp_path / "m" / "clips.csv", MANIFEST_HEADER
               + "train/a.wav,fan,train,,source,00,speed=28V;load=high,,snr=-6;id=00,dcase2021\n"
               + f"{absolute},fan,test,anomaly,target,01,,b_key.wav,,dcase2021\n"
               + "test/c.wav,pump,test,,,,,,,\n"
               + "test/d.wav,pump,test,0,,02,,,,dcase2021\n"
               + "test/e.wav,pump,train,normal,,,,,,\n")
    clips, dataset = read_manifest(mf)
    base = tmp_path / "m"
    assert dataset == "dcase2021"
    assert clips == [  # file order
        Clip(base / "train/a.wav", "fan", "00", "train", "source", 0, (("speed", "28V"), ("load", "high")),
             None, (("snr", "-6"), ("id", "00"))),
        Clip(absolute, "fan", "01", "test", "target", 1, (), "b_key.wav", ()),
        Clip(base / "test/c.wav", "pump", "00", "test", None, None, (), None, ()),
        Clip(base / "test/d.wav", "pump", "02", "test", None, 0, (), None, ()),
        Clip(base / "test/e.wav", "pump", "00", "train", None, 0, (), None, ()),
    ]
    assert clips[1].name == "b_key.wav" and clips[0].get_meta("snr") == "-6"


def test_read_manifest_minimal_columns_any_order(tmp_path):
    mf = write(tmp_path / "clips.csv", "split,path,machine\ntest,x.wav,fan\ntrain,y.wav,fan\n", bom=True)
    clips, dataset = read_manifest(mf)
    assert dataset is None
    assert clips == [Clip(tmp_path / "x.wav", "fan", "00", "test"), Clip(tmp_path / "y.wav", "fan", "00", "train",
                                                                         label=0)]


def test_read_manifest_bad_rows(tmp_path):
    (tmp_path / "sub").mkdir()
    mf = write(tmp_path / "clips.csv", "path,machine,split,label,domain,attributes\n"
               ",fan,train,,,\n"  # 2
               "a.wav,fan,validate,,,\n"  # 3
               "\n"  # 4 (blank)
               "b.wav,fan,test,maybe,,\n"  # 5
               "c.wav,fan,train,anomaly,,\n"  # 6
               "d.wav,fan,test,1,left,\n"  # 7
               "e.wav,fan,test,0,,speed\n"  # 8
               "f.wav,fan,test,,,\n"  # 9 fine
               "sub/../f.wav,fan,test,,,\n"  # 10: the same file
               "g.wav,,test,,,\n")  # 11
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert str(ei.value) == (
        f"{mf}: 8 bad row(s):\n"
        "  line 2 (): path and machine must not be empty\n"
        "  line 3 (a.wav): split 'validate' is not train or test\n"
        "  line 5 (b.wav): label 'maybe' is not one of normal/anomaly/abnormal/0/1\n"
        "  line 6 (c.wav): training clips must be normal\n"
        "  line 7 (d.wav): domain 'left' is not source or target\n"
        "  line 8 (e.wav): 'speed' is not name=value\n"
        "  line 10: sub/../f.wav is already listed on line 9\n"
        "  line 11 (g.wav): path and machine must not be empty"
    )


def test_read_manifest_duplicate_absolute_and_relative(tmp_path):
    mf = write(tmp_path / "clips.csv", f"path,machine,split\na.wav,fan,test\n{tmp_path / 'a.wav'},pump,test\n")
    with pytest.raises(DatasetError, match=r"line 3: .*a\.wav is already listed on line 2"):
        read_manifest(mf)


def test_read_manifest_mixed_datasets(tmp_path):
    mf = write(tmp_path / "clips.csv", "path,machine,split,dataset\na.wav,fan,test,dcase2021\n"
               "b.wav,fan,test,dcase2023\nc.wav,fan,test,\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert str(ei.value) == (f"{mf}: 1 bad row(s):\n  the dataset column holds several values "
                             "(dcase2021, dcase2023); one manifest describes one dataset")


@pytest.mark.parametrize("header, message", [
    ("path,machine", "missing column(s) split; a manifest needs a header with path, machine, split "
                     "(optional: label, domain, section, attributes, key, meta, dataset)"),
    ("file,machine,split", "missing column(s) path; a manifest needs a header"),
    ("path,machine,split,snr", "unknown column(s) snr; known: path, machine, split, label, domain, section, "
                               "attributes, key, meta, dataset"),
])
def test_read_manifest_bad_header(tmp_path, header, message):
    mf = write(tmp_path / "clips.csv", header + "\n")
    with pytest.raises(DatasetError) as ei:
        read_manifest(mf)
    assert str(ei.value).startswith(f"{mf}: {message}")


def test_read_manifest_missing_file(tmp_path):
    with pytest.raises(DatasetError) as ei:
        read_manifest(tmp_path / "none.csv")
    assert str(ei.value) == f"{tmp_path / 'none.csv'}: manifest file does not exist"


def test_write_manifest_text_and_round_trip(tmp_path):
    tmp_path = tmp_path.resolve()
    clips = [
        Clip(tmp_path / "d" / "b.wav", "pump", "00_-6dB", "test", None, 1, (), "-6_dB_abnormal_id_00_b.wav",
             (("id", "00"), ("snr", "-6"))),
        Clip(tmp_path / "d" / "a.wav", "fan", "01", "test", "target", None, (("car", "A2"), ("mic", "1"))),
        Clip(tmp_path / "d" / "c,d.wav", "fan", "00", "train", "source", 0),  # a comma in the name
    ]
    out = write_manifest(tmp_path / "out" / "clips.csv", clips, dataset="mimii")
    assert out == tmp_path / "out" / "clips.csv"
    d = tmp_path / "d"
    assert out.read_text(encoding="utf-8") == (
        MANIFEST_HEADER
        + f"{d / 'a.wav'},fan,test,,target,01,car=A2;mic=1,,,mimii\n"
        + f'"{d / "c,d.wav"}",fan,train,0,source,00,,,,mimii\n'
        + f"{d / 'b.wav'},pump,test,1,,00_-6dB,,-6_dB_abnormal_id_00_b.wav,id=00;snr=-6,mimii\n"
    )
    back, dataset = read_manifest(out)
    assert dataset == "mimii"
    assert back == [clips[1], clips[2], clips[0]]  # sorted by machine, split, path
    # no dataset: an empty column, read back as None
    out2 = write_manifest(tmp_path / "out2.csv", back)
    assert read_manifest(out2) == (back, None)
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic write leaves no temp file


def test_relative_manifest_rewritten_absolute(tmp_path):
    tmp_path = tmp_path.resolve()
    mf = write(tmp_path / "data" / "clips.csv", "path,machine,split,label\nfan/a.wav,fan,test,1\n../b.wav,fan,test,0\n")
    clips, _ = read_manifest(mf)
    assert [c.path for c in clips] == [tmp_path / "data" / "fan" / "a.wav", tmp_path / "data" / ".." / "b.wav"]
    out = write_manifest(tmp_path / "copy" / "clips.csv", clips)
    text = out.read_text()
    assert f"{tmp_path / 'b.wav'},fan,test,0," in text  # resolved, absolute
    back, _ = read_manifest(out)
    assert [c.path for c in back] == [tmp_path / "b.wav", tmp_path / "data" / "fan" / "a.wav"]
    assert [c.label for c in back] == [0, 1]


def test_manifest_scan(tmp_path):
    mf = write(tmp_path / "clips.csv", "path,machine,split,label,domain,dataset\n"
               "fan/train/a.wav,fan,train,,source,dcase2021\n"
               "fan/test/b.wav,fan,test,1,target,dcase2021\n"
               "pump/test/b.wav,pump,test,0,source,dcase2021\n")
    result = manifest.scan(mf)
    assert result.dataset == "manifest:dcase2021" and result.root == mf and result.problems == []
    assert [c.path.relative_to(tmp_path).as_posix() for c in result.clips] == [
        "fan/test/b.wav", "fan/train/a.wav", "pump/test/b.wav"]  # sorted by path
    assert [c.name for c in manifest.scan(mf, machines=["pump"]).clips] == ["b.wav"]
    assert [c.split for c in manifest.scan(mf, splits=("train",)).clips] == ["train"]
    with pytest.raises(ConfigError, match=r"'pumo' \(did you mean 'pump'\?\)"):
        manifest.scan(mf, machines=["pumo"])
    plain = write(tmp_path / "plain.csv", "path,machine,split\nx.wav,fan,test\n")
    assert manifest.scan(plain).dataset == "manifest"
    # scan_dataset detects a CSV as a manifest
    assert scan_dataset(mf).dataset == "manifest:dcase2021"


def test_manifest_scan_errors(tmp_path):
    empty = write(tmp_path / "empty.csv", "path,machine,split\n")
    with pytest.raises(DatasetError) as ei:
        manifest.scan(empty)
    assert str(ei.value) == f"{empty}: the manifest lists no clips"
    dup = write(tmp_path / "dup.csv", "path,machine,split\nx/a.wav,fan,test\ny/a.wav,fan,test\nz/a.wav,fan,train\n")
    with pytest.raises(DatasetError) as ei:
        manifest.scan(dup)
    msg = str(ei.value)
    assert "1 clip name(s) occur more than once within a machine type and split" in msg
    assert "give a `key` column in a manifest" in msg
    assert f"fan/test: 'a.wav' is the name of {tmp_path / 'x/a.wav'}, {tmp_path / 'y/a.wav'}" in msg
    keyed = write(tmp_path / "keyed.csv", "path,machine,split,key\nx/a.wav,fan,test,x_a.wav\ny/a.wav,fan,test,\n")
    assert [c.name for c in manifest.scan(keyed).clips] == ["x_a.wav", "a.wav"]
    # a key that repeats a file name is caught as well
    clash = write(tmp_path / "clash.csv", "path,machine,split,key\nx/a.wav,fan,test,b.wav\ny/b.wav,fan,test,\n")
    with pytest.raises(DatasetError, match="'b.wav' is the name of"):
        manifest.scan(clash)


# ================================================================ real recordings: BLDC motors


def _bldc_rows(root: Path, keys: bool) -> list[str]:
    healthy = sorted((root / "Healthy" / "M1").glob("*.wav"))
    propeller = sorted((root / "Propeller" / "M1").glob("*.wav"))
    rows = []
    for i, p in enumerate(healthy):
        split = "train" if i < 4 else "test"
        key = f"healthy_{p.name}" if keys and split == "test" else ""
        rows.append(f"{p},bldc,{split},normal,,M1,rpm={p.stem},{key},motor=M1")
    for p in propeller:
        key = f"propeller_{p.name}" if keys else ""
        rows.append(f"{p},bldc,test,anomaly,,M1,rpm={p.stem},{key},motor=M1")
    return rows


def test_real_bldc_manifest(real_data, tmp_path):
    root = real_data / "bldc_motor"
    header = "path,machine,split,label,domain,section,attributes,key,meta\n"
    # Healthy/M1/1750.wav and Propeller/M1/1750.wav share a name: keys are needed
    plain = write(tmp_path / "plain.csv", header + "\n".join(_bldc_rows(root, keys=False)) + "\n")
    with pytest.raises(DatasetError) as ei:
        scan_dataset(plain)
    msg = str(ei.value)
    assert "2 clip name(s) occur more than once" in msg
    assert f"bldc/test: '1750.wav' is the name of {root / 'Healthy/M1/1750.wav'}, {root / 'Propeller/M1/1750.wav'}" in msg

    mf = write(tmp_path / "bldc.csv", header + "\n".join(_bldc_rows(root, keys=True)) + "\n")
    result = scan_dataset(mf)
    assert result.dataset == "manifest" and result.problems == []
    assert len(result.clips) == 14
    assert Counter((c.split, c.label) for c in result.clips) == {("train", 0): 4, ("test", 0): 4, ("test", 1): 6}
    train = [c for c in result.clips if c.split == "train"]
    assert [c.path.relative_to(root).as_posix() for c in train] == [
        "Healthy/M1/1400.wav", "Healthy/M1/1450.wav", "Healthy/M1/1550.wav", "Healthy/M1/1650.wav"]
    test = sorted(c.name for c in result.clips if c.split == "test")
    assert test == ["healthy_1750.wav", "healthy_1850.wav", "healthy_1950.wav", "healthy_2000.wav",
                    "propeller_1400.wav", "propeller_1450.wav", "propeller_1550.wav", "propeller_1650.wav",
                    "propeller_1750.wav", "propeller_1850.wav"]
    for c in result.clips:
        assert c.label == (1 if c.path.parts[-3] == "Propeller" else 0)
        assert c.attributes == (("rpm", c.path.stem),) and c.meta == (("motor", "M1"),)
        assert c.section == "M1" and c.domain is None and c.path.is_file()
    # write + read back gives the same clips
    again = write_manifest(tmp_path / "again.csv", result.clips)
    assert sorted(read_manifest(again)[0]) == sorted(result.clips)

    # audio: stereo, Healthy/M1/1400.wav is 44.1 kHz (resampled, or refused when resampling is off)
    ok = extract_logmels(train[:2], raise_on_error=False, workers=2)
    assert ok.problems == [] and len(ok.features) == 2
    assert {f.shape[1] for f in ok.features} == {128}
    strict = extract_logmels(train[:2], audio=AudioOptions(resample=False), raise_on_error=False, workers=2)
    assert [(p.path.relative_to(root).as_posix(), p.reason) for p in strict.problems] == [
        ("Healthy/M1/1400.wav", "sample rate is 44100 Hz, expected 16000 Hz (resampling is off)")]


# ================================================================ real recordings: SensiML fan


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


def test_real_sensiml_manifest_and_folder(real_data, tmp_path):
    rec = real_data / "sensiml_fan" / "recordings"
    on = sorted(rec.glob("ON_*.wav"))
    faults = sorted(rec.glob("BLADE FAULT_*.wav")) + sorted(rec.glob("TAPPING_*.wav"))
    assert (len(on), len(faults)) == (12, 6)
    # ON = normal (first 7 train, 5 test), BLADE FAULT / TAPPING = anomaly; OFF and FAN_GUARDS left out
    rows = [f"{p},fan,train,normal" for p in on[:7]] + [f"{p},fan,test,normal" for p in on[7:]]
    rows += [f'"{p}",fan,test,anomaly' for p in faults]
    mf = write(tmp_path / "sensiml.csv", "path,machine,split,label\n" + "\n".join(rows) + "\n")
    result = scan_dataset(mf)
    assert len(result.clips) == 18
    assert Counter((c.split, c.label) for c in result.clips) == {("train", 0): 7, ("test", 0): 5, ("test", 1): 6}
    assert {c.name.split("_")[0] for c in result.clips if c.label == 1} == {"BLADE FAULT", "TAPPING"}
    assert not any(c.name.startswith(("OFF", "FAN_GUARDS")) for c in result.clips)
    assert all(c.name.startswith("ON_") for c in result.clips if c.label == 0)

    # the same as one's own recordings: <machine>/{train,test}/ + labels.csv (symlinks to the real files)
    own = tmp_path / "own"
    try:
        for p in on[:7]:
            _link(p, own / "fan" / "train" / p.name)
        for p in on[7:] + faults:
            _link(p, own / "fan" / "test" / p.name)
    except OSError:
        pytest.skip("symbolic links are not available")
    write(own / "labels.csv", "file,label\n" + "".join(
        f"fan/test/{p.name},{'normal' if p in on else 'anomaly'}\n" for p in on[7:] + faults))
    scanned = scan_dataset(own)
    assert scanned.dataset == "folder"
    assert sorted((c.name, c.split, c.label) for c in scanned.clips) == sorted(
        (c.name, c.split, c.label) for c in result.clips)


def test_real_sensiml_empty_cuts(real_data, tmp_path):
    empty = sorted((real_data / "sensiml_fan" / "empty_cuts").glob("*.wav"))
    assert len(empty) == 9
    mf = write(tmp_path / "empty.csv", "path,machine,split\n" + "".join(f"{p},fan,test\n" for p in empty))
    result = scan_dataset(mf)
    # scanning does not read audio: the zero-sample files are listed (unlabeled) ...
    assert [c.path for c in result.clips] == empty
    assert all(c.label is None for c in result.clips)
    # ... and audio validation reports every one of them
    out = extract_logmels(result.clips, raise_on_error=False, workers=2)
    assert out.clips == [] and out.features == []
    assert [(p.path, p.reason) for p in out.problems] == [(p, "zero-length file (no samples)") for p in empty]
    # one's own recordings: the same files in a test/ folder are listed too
    own = tmp_path / "own"
    try:
        for p in empty:
            _link(p, own / "fan" / "test" / "cuts" / p.name)
    except OSError:
        pytest.skip("symbolic links are not available")
    scanned = folder.scan(own)
    assert [c.name for c in scanned.clips] == [f"cuts/{p.name}" for p in empty]
