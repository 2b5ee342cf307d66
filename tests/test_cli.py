"""The CLI is a thin skin: one-line errors, and train/test/evaluate/toy/run work from the shell."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stetho.cli import main
from stetho.models import MODELS


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse exits for usage errors and --help
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, fragment", [
    ((), "the following arguments are required: COMMAND"),
    (("train", "--data", "x"), "the following arguments are required: --out"),
    (("train", "--data", "x", "--out", "y", "--epochs", "many"), "argument --epochs: invalid int value: 'many'"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
    (("train", "--data", "x", "--out", "y", "--model", "vae"), "argument --model: invalid choice: 'vae'"),
    (("toy", "x", "--domain-shift", "loud"), "invalid choice: 'loud' (choose from mild, strong, factory)"),
    (("test",), "the following arguments are required: --run"),
])
def test_wrong_arguments_give_a_one_line_error(capsys, argv, fragment):
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and fragment in err and "Traceback" not in err


def test_user_errors_are_one_line_without_traceback(capsys, tmp_path):
    code, _, err = _run(capsys, "train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert code == 2 and err.strip() == f"stetho: error: {tmp_path / 'nope'}: data folder does not exist"
    code, _, err = _run(capsys, "test", "--run", str(tmp_path))
    assert code == 2 and "not a stetho run folder (no config.yaml)" in err and err.count("\n") == 1
    code, _, err = _run(capsys, "run", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml: recipe file does not exist" in err
    (tmp_path / "bad.yaml").write_text("datta: x\n")
    code, _, err = _run(capsys, "run", str(tmp_path / "bad.yaml"))
    assert code == 2 and "unknown key 'datta'" in err


def test_toy_train_test_evaluate_from_the_command_line(capsys, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    code, out, _ = _run(capsys, "-q", "toy", str(data), "--machines", "valve", "--train-clips", "12",
                        "--target-train-clips", "2", "--test-clips", "3", "--duration", "2", "--seed", "1")
    assert code == 0 and "wrote 26 clips of 1 machine types (valve)" in out
    code, out, _ = _run(capsys, "-q", "train", "--data", str(data), "--out", str(run), "--epochs", "2",
                        "--no-progress", "--param", "batch_size=64")
    assert code == 0 and (run / "models" / "valve.pt").is_file()
    code, out, _ = _run(capsys, "-q", "test", "--run", str(run), "--score", "mse", "--no-progress")
    assert code == 0 and "official score (dcase2023" in out and "valve" in out
    assert not (run / "results" / "mahalanobis").exists()
    code, out, _ = _run(capsys, "-q", "evaluate", str(run / "results" / "mse"), "--data", str(data),
                        "--out", str(tmp_path / "ev"))
    assert code == 0 and "official score" in out and (tmp_path / "ev" / "summary.csv").is_file()
    code, _, err = _run(capsys, "test", "--run", str(run), "--score", "l2")
    assert code == 2 and "unknown score mode(s) l2 for model 'ae'; choose from mahalanobis, mse" in err


def _model_entries(help_text: str, title: str) -> dict[str, str]:
    """The model table under ``title`` of a help text: model name -> its entry, on one line."""
    text = " ".join(help_text[help_text.index(title):].split())
    starts = []
    for name in MODELS:  # in registry order, each after the previous one
        starts.append(text.index(f" {name} ", starts[-1] + 1 if starts else 0))
    return {name: text[a:b] for name, a, b in zip(MODELS, starts, starts[1:] + [len(text)])}


@pytest.mark.parametrize("command, title", [("train", "models (--model"), ("test", "score modes (--score)")])
def test_help_lists_every_registered_model_with_its_score_modes(capsys, command, title):
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0
    entries = _model_entries(out, title)
    assert list(entries) == list(MODELS) and len(MODELS) >= 5
    for name, cls in MODELS.items():
        assert f"score modes: {', '.join(cls.score_modes)}" in entries[name], name
        assert ("one model for all machine types" in entries[name]) == cls.joint, name


def test_train_help_gives_each_model_its_own_epochs_default(capsys):
    _, out, _ = _run(capsys, "train", "--help")
    entries = _model_entries(out, "models (--model")
    defaults = {name: inspect.signature(cls.__init__).parameters["epochs"].default for name, cls in MODELS.items()
                if "epochs" in inspect.signature(cls.__init__).parameters}
    assert defaults["arae"] == 20 and defaults["discriminative"] == 16 and defaults["ae"] == 100
    for name, epochs in defaults.items():
        assert f"epochs: {epochs}" in entries[name].split(";")[-1], name
    assert "stats" not in defaults and "epochs" not in entries["stats"]  # no training loop
    epochs_help = " ".join(out.split("\n  --epochs EPOCHS")[1].split("\n  --")[0].split())
    assert epochs_help == "training epochs (default: the model's, see models below)"  # not one number for all


def test_help_without_a_subcommand_does_not_load_torch_or_the_toy_synthesiser():
    code = ("import sys; from stetho.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'sklearn', 'scipy.signal', 'stetho.synth') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "registered model" not in proc.stdout and proc.stdout.splitlines()[-1] == "[]"


def test_novelty_help_lists_the_registered_models_that_score_arrays(capsys):
    from stetho.novelty import array_models

    code, out, _ = _run(capsys, "novelty", "--help")
    assert code == 0 and array_models() == ["arae"]
    assert f"models that score image arrays: {', '.join(array_models())}." in " ".join(out.split())


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "stetho.cli", "--version"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0 and proc.stdout.startswith("stetho ")


def test_summarize_runs_from_the_command_line(capsys, tmp_path):
    data = tmp_path / "data"
    assert _run(capsys, "-q", "toy", str(data), "--machines", "fan", "--train-clips", "12",
                "--target-train-clips", "2", "--test-clips", "4", "--duration", "2")[0] == 0
    official = []
    for seed in (1, 2):
        run = tmp_path / f"run{seed}"
        assert _run(capsys, "-q", "train", "--data", str(data), "--out", str(run), "--epochs", "2",
                    "--seed", str(seed), "--no-progress")[0] == 0
        assert _run(capsys, "-q", "test", "--run", str(run), "--score", "mse", "--no-progress")[0] == 0
        with open(run / "summary.csv") as fh:
            official.append(float(fh.read().splitlines()[1].split(",")[2]))
    code, out, _ = _run(capsys, "summarize", str(tmp_path / "run1"), str(tmp_path / "run2"),
                        "--out", str(tmp_path / "sum"))
    assert code == 0 and "mse (dcase2023, 2 runs)" in out
    mean, std = np.mean(official), np.std(official, ddof=1)
    assert f"official score: {mean:.4f} ± {std:.4f}" in out
    assert (tmp_path / "sum" / "summary_runs_mse.csv").is_file()
    code, _, err = _run(capsys, "summarize", str(tmp_path / "run1"), str(tmp_path / "data"))
    assert code == 2 and "no results/<mode>/summary.csv" in err
