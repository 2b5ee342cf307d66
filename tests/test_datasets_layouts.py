"""Tests of stetho.datasets.layouts (registry, detection, scan_dataset) and base.resolve_root."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stetho.datasets import DATASETS, LAYOUTS, Clip, detect, get_layout, official_formula, resolve_root, scan_dataset
from stetho.metrics import FORMULAS
from stetho.errors import ConfigError, DatasetError


def touch(root: Path, machine: str, folder: str, *names: str) -> None:
    d = root / machine / folder
    d.mkdir(parents=True, exist_ok=True)
    for name in names:
        (d / name).write_bytes(b"")


def mimii_tree(root: Path) -> None:
    for sub in ("normal", "abnormal"):
        d = root / "0_dB_fan" / "fan" / "id_00" / sub
        d.mkdir(parents=True)
        (d / "00000000.wav").write_bytes(b"")


S23 = "section_00_source_train_normal_0000_car_A1_spd_28V_mic_1.wav"


# ---------------------------------------------------------------- registry


def test_registry():
    assert DATASETS == ("auto", "dcase2020", "dcase2021", "dcase2022", "dcase2023", "dcase2024", "dcase2025",
                        "mimii", "folder", "manifest")
    assert {n: lay.formula for n, lay in LAYOUTS.items()} == {
        "dcase2020": "dcase2020", "dcase2021": "dcase2021", "dcase2022": "dcase2022", "dcase2023": "dcase2023",
        "dcase2024": "dcase2024", "dcase2025": "dcase2025", "mimii": "dcase2020", "folder": None, "manifest": None,
    }
    assert all(lay.name == n for n, lay in LAYOUTS.items())
    # score files are named the way the formula's year named them
    named = {n: FORMULAS[lay.formula].naming for n, lay in LAYOUTS.items() if lay.formula}
    assert named == {"dcase2020": "id", "dcase2021": "section_domain", "dcase2022": "section",
                     "dcase2023": "section", "dcase2024": "section", "dcase2025": "section", "mimii": "id"}


def test_get_layout():
    assert get_layout("dcase2021") is LAYOUTS["dcase2021"]
    inner = get_layout("manifest:dcase2021")
    assert (inner.name, inner.formula) == ("manifest:dcase2021", "dcase2021")
    assert FORMULAS[inner.formula].naming == "section_domain"
    assert inner.title == "manifest of DCASE 2021 Task 2"
    assert inner.scan is LAYOUTS["manifest"].scan
    assert get_layout("manifest:mimii").formula == "dcase2020"
    assert FORMULAS[get_layout("manifest:mimii").formula].naming == "id"
    assert FORMULAS[get_layout("manifest:dcase2024").formula].naming == "section"
    assert get_layout("manifest:folder").formula is None
    assert get_layout("manifest") is LAYOUTS["manifest"]
    with pytest.raises(ConfigError) as ei:
        get_layout("dcase2019")
    assert str(ei.value) == f"unknown dataset 'dcase2019'; choose from {', '.join(DATASETS)}"
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        get_layout("manifest:nope")


def test_official_formula():
    with_domains = [Clip(Path("a.wav"), "fan", "00", "test", domain="source", label=0)]
    without = [Clip(Path("a.wav"), "fan", "00", "test", label=0)]
    assert official_formula("dcase2020", with_domains) == "dcase2020"
    assert official_formula("dcase2021", without) == "dcase2021"
    assert official_formula("dcase2022", without) == "dcase2022"
    assert official_formula("dcase2023", without) == "dcase2023"
    assert official_formula("dcase2025", without) == "dcase2025"
    assert official_formula("mimii", without) == "dcase2020"
    assert official_formula("folder", with_domains) == "dcase2022"
    assert official_formula("folder", without) == "dcase2020"
    assert official_formula("folder", without + with_domains) == "dcase2022"
    assert official_formula("manifest", with_domains) == "dcase2022"
    assert official_formula("manifest", []) == "dcase2020"
    assert official_formula("manifest:dcase2021", without) == "dcase2021"
    assert official_formula("manifest:mimii", with_domains) == "dcase2020"
    assert official_formula("manifest:folder", with_domains) == "dcase2022"
    with pytest.raises(ConfigError):
        official_formula("auto", without)


# ---------------------------------------------------------------- detect


def test_detect_dcase2020(tmp_path):
    touch(tmp_path, "fan", "train", "normal_id_00_00000000.wav")
    touch(tmp_path, "fan", "test", "anomaly_id_00_00000000.wav", "garbage.wav")
    touch(tmp_path, "ToyCar", "test", "id_05_00000000.wav")  # eval names
    assert detect(tmp_path) == ("dcase2020", "DCASE 2020 names (<normal|anomaly>_id_XX_NNNNNNNN.wav)")


def test_detect_dcase2021(tmp_path):
    touch(tmp_path, "gearbox", "train", "section_00_source_train_normal_0000_0_g_25_mm_2000_mV_none.wav")
    touch(tmp_path, "gearbox", "source_test", "section_00_source_test_normal_0000.wav")
    touch(tmp_path, "fan", "target_test", "section_03_target_test_0000.wav")
    assert detect(tmp_path) == ("dcase2021", "DCASE 2021 folders (source_test/, target_test/)")


def test_detect_dcase2022_several_sections(tmp_path):
    for s in range(6):
        touch(tmp_path, "bearing", "train", f"section_{s:02d}_source_train_normal_0000_vel_6.wav")
    touch(tmp_path, "bearing", "test", "section_03_0000.wav")
    name, reason = detect(tmp_path)
    assert name == "dcase2022"
    assert reason == ("DCASE 2022-2025 names with sections 00, 01, 02, 03, 04, 05 (several sections per "
                      "machine type: DCASE 2022)")


def test_detect_dcase2022_eval_sections_only(tmp_path):
    touch(tmp_path, "fan", "test", "section_03_0000.wav", "section_04_0000.wav")
    assert detect(tmp_path)[0] == "dcase2022"


def test_detect_dcase2023_one_section(tmp_path):
    touch(tmp_path, "ToyCar", "train", S23)
    touch(tmp_path, "ToyCar", "test", "section_00_target_test_anomaly_0000_car_A1_spd_28V_mic_1.wav")
    touch(tmp_path, "Vacuum", "test", "section_00_0000.wav")  # unlabeled eval
    name, reason = detect(tmp_path)
    assert name == "dcase2023"
    assert reason.startswith("DCASE 2022-2025 names with one section (00)")


def test_detect_folder_and_mimii_and_manifest(tmp_path):
    own = tmp_path / "own"
    touch(own, "pump", "train", "rec_001.wav")
    touch(own, "pump", "test", "rec_002.wav")
    assert detect(own) == ("folder", "other file names (one's own recordings)")
    mimii = tmp_path / "mimii"
    mimii_tree(mimii)
    assert detect(mimii) == ("mimii", "folders <machine>/id_XX/{normal,abnormal}/ (MIMII)")
    assert detect(mimii / "0_dB_fan")[0] == "mimii"
    assert detect(mimii / "0_dB_fan" / "fan")[0] == "mimii"
    csv = tmp_path / "clips.CSV"
    csv.write_text("path,machine,split\n")
    assert detect(csv) == ("manifest", f"{csv} is a CSV file: read as a manifest")


def test_detect_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as ei:
        detect(tmp_path / "empty")
    assert str(ei.value).startswith(f"{tmp_path / 'empty'}: no dataset found; expected <machine>/train/")
    f = tmp_path / "clips.txt"
    f.write_text("x")
    with pytest.raises(DatasetError) as ei:
        detect(f)
    assert str(ei.value) == f"{f}: is a file; --data takes a dataset folder or a manifest .csv"


def test_detect_mixed_2020_and_2023_machine_folders(tmp_path):
    touch(tmp_path, "fan", "train", "normal_id_00_00000000.wav", "normal_id_00_00000001.wav")
    touch(tmp_path, "pump", "train", "normal_id_02_00000000.wav")
    touch(tmp_path, "valve", "train", "section_00_source_train_normal_0000_pat_00.wav")
    with pytest.raises(DatasetError) as ei:
        detect(tmp_path)
    msg = str(ei.value)
    assert msg.startswith(f"{tmp_path}: mixed dataset layouts in one root; keep one layout per data folder "
                          "(or list the clips in a manifest CSV):\n  ")
    lines = msg.split("\n  ")[1:]
    assert lines == [
        "DCASE 2020 names (<normal|anomaly>_id_XX_NNNNNNNN.wav): fan, pump (e.g. "
        f"{tmp_path / 'fan/train/normal_id_00_00000000.wav'}, {tmp_path / 'fan/train/normal_id_00_00000001.wav'}, "
        f"{tmp_path / 'pump/train/normal_id_02_00000000.wav'})",
        "DCASE 2022-2025 names (section_XX_<domain>_<split>_<label>_NNNN_<attributes>.wav): valve (e.g. "
        f"{tmp_path / 'valve/train/section_00_source_train_normal_0000_pat_00.wav'})",
    ]
    # the scan refuses as well
    with pytest.raises(DatasetError, match="mixed dataset layouts"):
        scan_dataset(tmp_path)


def test_detect_mixed_names_in_one_machine_folder(tmp_path):
    touch(tmp_path, "fan", "train", "normal_id_00_00000000.wav")
    touch(tmp_path, "fan", "test", "section_00_source_test_normal_0000.wav")
    with pytest.raises(DatasetError) as ei:
        detect(tmp_path)
    msg = str(ei.value)
    assert (f"DCASE 2020 and 2022-2025 names together: fan (e.g. {tmp_path / 'fan/train/normal_id_00_00000000.wav'}, "
            f"{tmp_path / 'fan/test/section_00_source_test_normal_0000.wav'})") in msg


def test_detect_mixed_dcase_and_own_names(tmp_path):
    touch(tmp_path, "ToyCar", "train", S23)
    touch(tmp_path, "drill", "train", "morning.wav", "evening.wav")
    with pytest.raises(DatasetError) as ei:
        detect(tmp_path)
    msg = str(ei.value)
    assert f"DCASE 2022-2025 names (section_XX_<domain>_<split>_<label>_NNNN_<attributes>.wav): ToyCar (e.g. " in msg
    assert (f"other file names (one's own recordings): drill (e.g. {tmp_path / 'drill/train/evening.wav'}, "
            f"{tmp_path / 'drill/train/morning.wav'})") in msg


def test_detect_mixed_2021_and_2023(tmp_path):
    touch(tmp_path, "gearbox", "source_test", "section_00_source_test_normal_0000.wav")
    touch(tmp_path, "ToyCar", "train", S23)
    with pytest.raises(DatasetError) as ei:
        detect(tmp_path)
    msg = str(ei.value)
    assert ("DCASE 2021 folders (source_test/, target_test/): gearbox (e.g. "
            f"{tmp_path / 'gearbox/source_test/section_00_source_test_normal_0000.wav'})") in msg
    assert "): ToyCar (e.g." in msg


def test_detect_mimii_beside_dcase(tmp_path):
    touch(tmp_path, "ToyCar", "train", S23)
    mimii_tree(tmp_path)
    with pytest.raises(DatasetError) as ei:
        detect(tmp_path)
    msg = str(ei.value)
    assert "\n  MIMII folders: MIMII id_XX folders" in msg
    assert "): ToyCar (e.g. " in msg


# ---------------------------------------------------------------- resolve_root


def test_resolve_root_dev_and_eval(tmp_path):
    touch(tmp_path / "dev_data", "fan", "train", S23)
    assert resolve_root(tmp_path) == tmp_path / "dev_data"
    assert resolve_root(tmp_path, "dev") == tmp_path / "dev_data"
    with pytest.raises(DatasetError) as ei:
        resolve_root(tmp_path, "eval")
    assert str(ei.value) == (f"{tmp_path}: --subset eval asks for eval_data/, which is not there "
                             "(found: dev_data)")
    touch(tmp_path / "eval_data", "fan", "test", "section_00_0000.wav")
    with pytest.raises(DatasetError) as ei:
        resolve_root(tmp_path)
    assert str(ei.value) == (f"{tmp_path} holds both dev_data/ and eval_data/: choose one with "
                             "--subset dev|eval (or `subset:` in the recipe)")
    assert resolve_root(tmp_path, "eval") == tmp_path / "eval_data"
    assert resolve_root(str(tmp_path), "dev") == tmp_path / "dev_data"
    with pytest.raises(ConfigError) as ei:
        resolve_root(tmp_path, "test")
    assert str(ei.value) == "subset must be dev or eval, got 'test'"


def test_resolve_root_raw(tmp_path):
    touch(tmp_path / "dev_data" / "raw", "fan", "train", S23)
    assert resolve_root(tmp_path) == tmp_path / "dev_data" / "raw"
    assert resolve_root(tmp_path / "dev_data") == tmp_path / "dev_data" / "raw"
    (tmp_path / "dev_data" / ".cache").mkdir()  # hidden folders do not count
    assert resolve_root(tmp_path / "dev_data") == tmp_path / "dev_data" / "raw"
    # raw/ beside machine folders is not entered (it may be a machine type called "raw")
    touch(tmp_path / "dev_data", "pump", "train", S23)
    assert resolve_root(tmp_path / "dev_data") == tmp_path / "dev_data"


def test_resolve_root_plain_missing_and_file(tmp_path):
    touch(tmp_path, "fan", "train", S23)
    assert resolve_root(tmp_path) == tmp_path
    assert resolve_root(tmp_path, "eval") == tmp_path  # ignored: no dev_data/eval_data here
    f = tmp_path / "clips.csv"
    f.write_text("path,machine,split\n")
    assert resolve_root(f) == f
    with pytest.raises(DatasetError) as ei:
        resolve_root(tmp_path / "missing")
    assert str(ei.value) == f"{tmp_path / 'missing'}: data folder does not exist"


# ---------------------------------------------------------------- scan_dataset


def test_scan_dataset_resolves_and_detects(tmp_path):
    touch(tmp_path / "dev_data" / "raw", "fan", "train", S23)
    touch(tmp_path / "eval_data", "fan", "test", "section_00_0000.wav")
    dev = scan_dataset(tmp_path, subset="dev")
    assert dev.dataset == "dcase2023" and dev.root == tmp_path / "dev_data" / "raw"
    assert [c.name for c in dev.clips] == [S23]
    ev = scan_dataset(tmp_path, subset="eval")
    assert ev.root == tmp_path / "eval_data"
    assert [(c.name, c.label, c.domain) for c in ev.clips] == [("section_00_0000.wav", None, None)]
    with pytest.raises(DatasetError, match="choose one with --subset dev|eval"):
        scan_dataset(tmp_path)
    # an explicit layout skips detection
    forced = scan_dataset(tmp_path, dataset="dcase2025", subset="dev")
    assert forced.dataset == "dcase2025" and len(forced.clips) == 1
    with pytest.raises(ConfigError) as ei:
        scan_dataset(tmp_path, dataset="dcase2019")
    assert str(ei.value) == f"unknown dataset 'dcase2019'; choose from {', '.join(DATASETS)}"


def test_scan_dataset_explicit_layout_on_wrong_data(tmp_path):
    touch(tmp_path, "fan", "train", S23)
    # 2023 names read as 2020: every file is a problem, none is dropped
    as2020 = scan_dataset(tmp_path, dataset="dcase2020")
    assert as2020.clips == [] and [p.name for p, _ in as2020.problems] == [S23]
    # a manifest given a folder layout name
    csv = tmp_path / "clips.csv"
    csv.write_text("path,machine,split\nx.wav,fan,test\n")
    with pytest.raises(DatasetError, match="is a file, not a data folder"):
        scan_dataset(csv, dataset="dcase2020")
    with pytest.raises(DatasetError, match="manifest file does not exist"):
        scan_dataset(tmp_path, dataset="manifest")


def test_scan_dataset_folder_layout(tmp_path):
    touch(tmp_path, "drill", "train", "a.wav")
    touch(tmp_path, "drill", "test", "b.wav")
    result = scan_dataset(tmp_path, machines=["drill"], splits=("test",))
    assert result.dataset == "folder"
    assert [(c.name, c.split, c.label) for c in result.clips] == [("b.wav", "test", None)]


def test_scan_dataset_real_subsets(real_data):
    checks = {
        "dcase2020t2_dev_subset": ("dcase2020", 111, {"ToyCar", "ToyConveyor", "fan", "pump", "slider", "valve"}),
        "dcase2021t2_dev_subset": ("dcase2021", 67, {"gearbox"}),
        "dcase2023t2_dev_subset": ("dcase2023", 26, {"ToyCar", "ToyTrain", "bearing", "fan", "gearbox", "slider",
                                                     "valve"}),
        "mimii_0dB_subset": ("mimii", 32, {"fan", "pump", "slider", "valve"}),
        "mimii_fan_id00_subset": ("mimii", 40, {"fan"}),
        "mimii_8ch_originals": ("mimii", 4, {"fan"}),
    }
    for folder, (dataset, n, machines) in checks.items():
        root = real_data / folder
        assert detect(root)[0] == dataset, folder
        result = scan_dataset(root)
        assert (result.dataset, len(result.clips), result.problems) == (dataset, n, []), folder
        assert {c.machine for c in result.clips} == machines, folder
        assert result.root == root
    gearbox = scan_dataset(real_data / "dcase2021t2_dev_subset", splits=("test",))
    assert Counter(c.domain for c in gearbox.clips) == {"source": 18, "target": 18}
    assert official_formula(gearbox.dataset, gearbox.clips) == "dcase2021"
    assert FORMULAS[get_layout(gearbox.dataset).formula].naming == "section_domain"
    slider = scan_dataset(real_data / "dcase2020t2_dev_subset", machines=["slider"])
    assert Counter(c.split for c in slider.clips) == {"train": 75, "test": 6}
    assert official_formula(slider.dataset, slider.clips) == "dcase2020"


# ---------------------------------------------------------------- edge cases of detection


def test_empty_machine_folder_does_not_make_a_root_mixed(tmp_path):
    touch(tmp_path, "fan", "train", S23)
    (tmp_path / "valve" / "train").mkdir(parents=True)  # nothing in it yet
    assert detect(tmp_path)[0] == "dcase2023"
    (tmp_path / "fan" / "train" / S23).unlink()
    assert detect(tmp_path)[0] == "folder"  # nothing but empty folders: own recordings


def test_own_recordings_in_id_folders_are_not_mimii(tmp_path):
    touch(tmp_path, "fan", "train", "a.wav")
    touch(tmp_path, "fan", "test/id_00/abnormal", "x.wav")
    touch(tmp_path, "fan", "test/id_00/normal", "y.wav")
    assert detect(tmp_path)[0] == "folder"
    scan = scan_dataset(tmp_path)
    assert sorted(c.name for c in scan.clips) == ["a.wav", "id_00/abnormal/x.wav", "id_00/normal/y.wav"]


def test_hidden_folders_are_skipped(tmp_path):
    touch(tmp_path, "fan", "train", "a.wav")
    touch(tmp_path, "fan", "train/.ipynb_checkpoints", "a.wav")
    assert [c.name for c in scan_dataset(tmp_path).clips] == ["a.wav"]


def test_manifest_with_an_unknown_dataset_value_names_the_manifest(tmp_path):
    touch(tmp_path, "fan", "train", "a.wav")
    m = tmp_path / "m.csv"
    m.write_text(f"path,machine,split,dataset\n{tmp_path / 'fan/train/a.wav'},fan,train,dcase2099\n")
    with pytest.raises(DatasetError, match=r"m.csv: the dataset column says 'dcase2099'"):
        scan_dataset(m)


# ---------------------------------------------------------------- attribute tables


def _table_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "attributes_00.csv" in r.getMessage()]


def test_missing_attribute_table_is_warned_about_once_and_only_where_the_year_has_them(tmp_path, caplog):
    layouts = {
        "dcase2020": lambda r: touch(r, "fan", "train", "normal_id_00_00000000.wav"),
        "dcase2021": lambda r: (touch(r, "gearbox", "train", "section_00_source_train_normal_0000_a_1.wav"),
                                touch(r, "gearbox", "source_test", "section_00_source_test_normal_0000_a_1.wav")),
        "dcase2022": lambda r: touch(r, "fan", "train", *(f"section_{s:02d}_source_train_normal_0000_a_1.wav"
                                                          for s in range(3))),
        "mimii": mimii_tree,
        "folder": lambda r: touch(r, "drill", "train", "a.wav"),
    }
    with caplog.at_level("WARNING", logger="stetho.datasets"):
        for name, make in layouts.items():
            make(tmp_path / name)
            assert scan_dataset(tmp_path / name).dataset == name
        assert _table_warnings(caplog) == []  # these layouts never ship attribute tables
        root = tmp_path / "dcase2023"
        touch(root, "fan", "train", S23)
        touch(root, "fan", "test", "section_00_source_test_normal_0000_car_A1_spd_28V_mic_1.wav")
        touch(root, "valve", "train", S23)
        (root / "valve" / "attributes_00.csv").write_text("file_name,d1p,d1v\n")
        for splits in (("train",), ("test",), ("train", "test")):  # a run scans several times
            scan_dataset(root, splits=splits)
        scan_dataset(root, dataset="dcase2024")
    warnings = _table_warnings(caplog)
    assert len(warnings) == 1 and f"{root}: no attributes_00.csv beside train/ and test/ of fan (" in warnings[0]
