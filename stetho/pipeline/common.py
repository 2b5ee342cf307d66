"""What every pipeline step shares: a detector from a config, scans of a split, features,
the run folder's bookkeeping files (skipped.csv, versions.json, timings.json) and its config."""

from __future__ import annotations

import csv
import datetime as _dt
import json
import logging
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stetho
from stetho.config import resolve
from stetho.datasets import Clip, Scan, get_layout, scan_dataset
from stetho.errors import ConfigError, DatasetError, StethoError
from stetho.features import FeatureCache, default_cache_dir
from stetho.models import Detector, get_model
from stetho.models.training import resolve_device
from stetho.outputs import write_csv
from stetho.fileio import atomic_write_text

log = logging.getLogger("stetho.pipeline")

SKIPPED_HEADER = ("file", "stage", "reason")
TRAIN_FILES_HEADER = ("file", "machine", "section", "domain", "label", "role", "sample_rate")
TEST_FILES_HEADER = ("name", "machine", "section", "domain", "label", "file", "sample_rate", "note")


def make_detector(cfg: Mapping[str, Any]) -> Detector:
    """A fresh detector from a resolved config (model params + seed/device/channel/progress)."""
    cls = get_model(cfg["model"])
    accepted = set(cls.param_defaults())
    params = dict(cfg["params"])
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(unknown)} for model '{cfg['model']}'; "
            f"accepted: {', '.join(sorted(accepted))}"
        )
    common = {"seed": cfg["seed"], "device": cfg["device"], "channel": cfg["channel"], "progress": cfg["progress"],
              "threads": cfg.get("threads") or "auto"}
    params.update({k: v for k, v in common.items() if k in accepted and k not in cfg["params"]})
    det = cls(**params)
    det.check_params()
    return det


def feature_cache(cfg: Mapping[str, Any]) -> FeatureCache | None:
    if not cfg["cache"]:
        return None
    return FeatureCache(cfg["cache_dir"] or default_cache_dir())


def scan_split(cfg: Mapping[str, Any], root: str | Path, split: str, machines: list[str] | None,
          dataset: str | None = None) -> tuple[Scan, list[tuple[Path, str]]]:
    """Clips of one split with the run's layout; unparseable names are fatal unless skip_bad."""
    scan = scan_dataset(root, dataset or cfg["dataset"], machines, splits=(split,), subset=cfg["subset"],
                        mimii_split=cfg["mimii_split"])
    if scan.problems and not cfg["skip_bad"]:
        lines = [f"  {p}: {r}" for p, r in scan.problems[:20]]
        more = f"\n  ... and {len(scan.problems) - 20} more" if len(scan.problems) > 20 else ""
        raise DatasetError(
            f"{len(scan.problems)} file(s) in {scan.root} cannot be used (use --skip-bad to leave them "
            "out; they are then listed in skipped.csv):\n" + "\n".join(lines) + more
        )
    return scan, list(scan.problems)


def data_test_split(cfg: Mapping[str, Any], root: str | Path, scan: Scan) -> list[Clip]:
    """Every test clip the data at ``root`` holds, of every machine type, read with the layout of
    ``scan`` (file names only, no audio): what an official score has to cover. Names that do not
    parse are left out here; the scan of the machine types tested reports them."""
    quiet = logging.getLogger("stetho.datasets")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the scan of the tested machine types has logged it all already
    try:
        full = scan_dataset(root, scan.dataset.partition(":")[0], None, splits=("test",), subset=cfg["subset"],
                            mimii_split=cfg["mimii_split"])
    finally:
        quiet.setLevel(level)
    return full.clips


def features_of(cfg, detector: Detector, clips: list[Clip], desc: str, rates: list[int] | None = None):
    """The detector's features of ``clips``; bad audio fatal unless skip_bad. Each clip's native
    sample rate is appended to ``rates`` when given."""
    ex = detector.extract(clips, resample=cfg["resample"], cache=feature_cache(cfg), progress=cfg["progress"],
                          raise_on_error=not cfg["skip_bad"], desc=desc)
    if rates is not None:
        rates.extend(ex.sample_rates)
    return ex.clips, ex.features, [(p.path, p.reason) for p in ex.problems]


def write_skipped(run_dir: Path, stage: str, skipped: Sequence[tuple[Path, str]],
                   previous: Path | None = None) -> None:
    """Record skipped files of ``stage`` in RUN/skipped.csv, keeping other stages' rows (read
    from ``previous``, default the file itself)."""
    path = run_dir / "skipped.csv"
    previous = previous or path
    rows: list[list[str]] = []
    if previous.exists():
        with open(previous, newline="", encoding="utf-8") as fh:
            rows = [r for r in list(csv.reader(fh))[1:] if r and r[1] != stage]
    rows += [[str(p), stage, reason] for p, reason in skipped]
    write_csv(path, rows, header=SKIPPED_HEADER)
    for p, reason in skipped:
        log.warning("skipped %s: %s", p, reason)


def versions(cfg: Mapping[str, Any]) -> dict[str, Any]:
    import librosa
    import scipy
    import sklearn
    import soundfile

    return {
        "stetho": stetho.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
        "librosa": librosa.__version__, "soundfile": soundfile.__version__,
        "platform": platform.platform(), "device": str(resolve_device(cfg["device"])),
        "torch_threads": torch.get_num_threads(), "seed": cfg["seed"],
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def record_timings(run_dir: Path, stage: str, timings: Mapping[str, Any], fresh: bool = False) -> None:
    """Store the wall-clock seconds of ``stage`` (train/test) in RUN/timings.json, keeping the
    other stage's unless ``fresh`` (a new training makes an earlier test's timings stale)."""
    path = run_dir / "timings.json"
    data: dict[str, Any] = {}
    if path.is_file() and not fresh:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
    data[stage] = dict(timings)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config a run was trained with."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: not a stetho run folder (no config.yaml); train one with `stetho train`")
    from stetho.config import load_recipe

    return resolve(load_recipe(path), where=str(path))


def score_modes(det: Detector, score: str | Sequence[str]) -> list[str]:
    if isinstance(score, str):
        score = list(det.score_modes) if score in ("all", "both") else [s for s in score.split(",") if s]
    bad = [s for s in score if s not in det.score_modes]
    if bad:
        raise ConfigError(f"unknown score mode(s) {', '.join(bad)} for model '{det.name}'; "
                          f"choose from {', '.join(det.score_modes)}, or all")
    return list(score)


def missing_data_message(cfg: Mapping[str, Any]) -> str:
    """What to point a recipe without ``data`` at, in the words of its layout."""
    hint = ""
    if cfg.get("dataset") not in (None, "auto"):
        layout = get_layout(cfg["dataset"])
        hint = f": a {layout.title} folder" + (f" ({layout.expected})" if layout.expected else "")
    return f"no data folder given (--data ROOT, `data:` in the recipe, or data=ROOT after `stetho run RECIPE`){hint}"
