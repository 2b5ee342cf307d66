"""Start-up (issue 23 item 3): heavy libraries are imported only where they are used. Each check
runs a fresh Python process and reads its ``sys.modules``; the times are in ``make bench``
(``bench/run.py --only startup``), not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stetho import pipeline
from stetho.synth import make_toy_dataset

REPO = Path(__file__).resolve().parents[1]
#: Root packages a command must not import unless it uses them.
HEAVY = ("torch", "librosa", "numba", "matplotlib", "sklearn", "scipy", "sqlalchemy", "fastapi", "uvicorn", "jinja2")

_PROBE = """
import contextlib, io, json, sys
snapshots = []
def snap():
    snapshots.append(sorted({m.split('.')[0] for m in sys.modules}))
with contextlib.redirect_stdout(io.StringIO()):
    try:
        exec(sys.argv[1])
    except SystemExit:
        pass
snap()
print(json.dumps(snapshots))
"""


def imported(code: str, cwd: Path = REPO) -> list[set[str]]:
    """The root packages a fresh interpreter has imported at each ``snap()`` in ``code`` and at its end."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    done = subprocess.run([sys.executable, "-c", _PROBE, code], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [set(m) for m in json.loads(done.stdout.strip().splitlines()[-1])]


def cli(*argv: str) -> str:
    return f"from stetho.cli import main; main({list(argv)!r})"


@pytest.mark.parametrize("code", [
    "import stetho", "import stetho.cli", "import stetho.models", "from stetho.models import MODELS; list(MODELS)",
    cli("--help"), cli("score", "--help"), cli("serve", "--help"), cli("watch", "--help"),
], ids=["import stetho", "import stetho.cli", "import stetho.models", "MODELS", "--help", "score --help",
        "serve --help", "watch --help"])
def test_cli_and_package_import_no_heavy_library(code):
    # (`stetho train --help` / `test --help` / `toy --help` do import the detectors or the
    # synthesiser: their help lists every model's parameters and defaults, or the toy machines.)
    heavy = imported(code)[-1] & set(HEAVY)
    assert not heavy, f"{code!r} imported {sorted(heavy)}"


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("startup")
    make_toy_dataset(root, machines=["fan"], train_clips=8, target_train_clips=2, test_clips=1, duration=1.0, seed=0)
    out = tmp_path_factory.mktemp("runs") / "ae"
    pipeline.train({"data": str(root), "out": str(out), "model": "ae", "params": {"epochs": 1, "device": "cpu"},
                    "progress": False, "cache": False})
    return out, sorted((root / "fan" / "test").glob("*.wav"))[0]


def test_the_detector_api_and_scoring_with_an_ae_run_import_no_sklearn(ae_run, tmp_path):
    run, wav = ae_run
    after_import, after_score = imported(
        "from stetho.models import Detector, StatsDetector, AEDetector; snap(); "
        + cli("score", str(run), str(wav), "--json"), cwd=tmp_path)
    # Detector (and the stats model) need torch for the log-mel and the model files; scikit-learn
    # and scipy come when a detector is fitted (thresholds, k-means, Ledoit-Wolf, GMM) and librosa
    # when the first log-mel is computed (its mel filters).
    assert "torch" in after_import
    assert not after_import & {"sklearn", "scipy", "librosa", "numba", "matplotlib", "sqlalchemy", "fastapi"}
    # scoring with an AE: the model file and the log-mel's mel filters, no scikit-learn or service
    assert "torch" in after_score and "librosa" in after_score
    assert not after_score & {"sklearn", "matplotlib", "sqlalchemy", "fastapi", "uvicorn"}, sorted(after_score)
