"""What a run folder records of its trained detectors for the report, in plain files.

The report (:mod:`stetho.outputs.report`) draws threshold lines and embedding projections from
these files, so it never loads a model (no torch, no refit of the discriminative model's backends):

- ``RUN/thresholds.csv`` (``mode, machine, threshold``): each score mode's decision threshold
  per machine type, as trained; ``RUN/test_thresholds.csv`` the same for the thresholds the last
  test decided with (``stetho test --decision-fpr`` refits them), when the test wrote it;
- ``RUN/decision_scores.csv`` (``file, machine, section, domain, <mode> ...``): the out-of-sample
  scores of the calibration clips the thresholds were fitted on (``decision_scores_``), one row
  per clip, one column per score mode;
- ``RUN/train_embeddings.npz`` (only detectors that keep training embeddings, e.g. the
  discriminative model): ``embeddings`` ``(n, dim)`` of the training clips by the model of the
  last ensemble epoch, with ``epoch``, ``machine`` and ``domain`` per row.

- ``DIR/tested_run.json`` (``{"run": "/abs/RUN", ...}``): in a folder written by ``stetho test
  --out DIR``, the run whose models DIR's results come from (the report reads the run's
  config, thresholds and histories there).

Runs trained before these files existed have none of them; the report then draws what it can
without the model and says so.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stetho.errors import StethoError
from stetho.fileio import atomic_write_text, atomic_write_with, write_csv

if TYPE_CHECKING:  # the models import torch; this module must not
    from stetho.models import Detector

log = logging.getLogger(__name__)

THRESHOLDS = "thresholds.csv"
#: The thresholds the last test decided with (written with its results, committed together).
TEST_THRESHOLDS = "test_thresholds.csv"
DECISION_SCORES = "decision_scores.csv"
#: In an evaluation folder of ``stetho test --out DIR``: which run DIR evaluated.
TESTED_RUN = "tested_run.json"
TRAIN_EMBEDDINGS = "train_embeddings.npz"
THRESHOLD_HEADER = ("mode", "machine", "threshold")
CALIBRATION_COLUMNS = ("file", "machine", "section", "domain")


def _unique(detectors: Mapping[str, Detector]) -> list[Detector]:
    """Each detector once (a joint model is listed under every machine type it covers)."""
    return list({id(d): d for d in detectors.values()}.values())


def write_thresholds(folder: str | Path, detectors: Mapping[str, Detector], name: str = THRESHOLDS) -> Path:
    """``folder/<name>`` (``thresholds.csv``): every score mode's threshold per machine type of
    ``detectors``."""
    rows = [(mode, machine, float(per[machine]))
            for det in _unique(detectors) for mode, per in det.thresholds_.items() for machine in sorted(per)]
    return write_csv(Path(folder) / name, sorted(rows), header=THRESHOLD_HEADER)


def write_run_record(run_dir: str | Path, detectors: Mapping[str, Detector]) -> list[Path]:
    """Write what the report needs of the trained ``detectors`` into ``run_dir`` (see the module
    docstring); returns the files written.

    Args:
        run_dir: the run folder (while training: its staging folder).
        detectors: the run's fitted detectors, by model name (``"all"`` or machine type) or by
            machine type; a detector listed several times is recorded once.
    """
    run_dir = Path(run_dir)
    dets = _unique(detectors)
    written = [write_thresholds(run_dir, detectors)]
    modes = list(dict.fromkeys(m for det in dets for m in det.decision_scores_))
    rows = []
    for det in dets:
        cal = det.calibration_
        cols = [cal[c] for c in CALIBRATION_COLUMNS]
        scores = [det.decision_scores_.get(m, np.full(len(cols[0]), np.nan)) for m in modes]
        rows += [[*meta, *(float(s) for s in vals)] for meta, vals in zip(zip(*cols), zip(*scores))]
    written.append(write_csv(run_dir / DECISION_SCORES, rows, header=[*CALIBRATION_COLUMNS, *modes]))
    arrays = [a for det in dets if (a := _train_embeddings(det)) is not None]
    path = run_dir / TRAIN_EMBEDDINGS
    if arrays:
        joined = {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}
        written.append(atomic_write_with(path, lambda fh: np.savez(fh, **joined)))
    else:
        path.unlink(missing_ok=True)  # a re-trained model without embeddings leaves none behind
    return written


def _train_embeddings(det: Detector) -> dict[str, np.ndarray] | None:
    """The training embeddings of ``det``'s last ensemble epoch with machine type and domain per
    row; rows of a model without ``train_machine_of_`` belong to each of its machine types."""
    stored = getattr(det, "train_embeddings_", None)
    if not stored:
        return None
    epoch = max(stored)
    x = np.asarray(stored[epoch])
    domains = list(getattr(det, "train_domains_", None) or [""] * len(x))
    of = getattr(det, "train_machine_of_", None)
    pairs = [(i, m) for i, m in enumerate(of)] if of is not None else \
        [(i, m) for m in det.machines_ for i in range(len(x))]
    idx = np.array([i for i, _ in pairs], dtype=np.int64)
    return {"embeddings": x[idx], "epoch": np.full(len(idx), int(epoch), dtype=np.int64),
            "machine": np.array([m for _, m in pairs], dtype=str),
            "domain": np.array([domains[i] or "" for i in idx], dtype=str)}


def write_tested_run(folder: str | Path, run_dir: str | Path, **facts: Any) -> Path:
    """Record in ``folder`` (an evaluation folder of ``stetho test --out``) which run it
    evaluated: ``tested_run.json`` with the run's absolute path and ``facts`` (data, machines)."""
    record = {"run": os.path.abspath(run_dir), **facts}
    return atomic_write_text(Path(folder) / TESTED_RUN, json.dumps(record, indent=2) + "\n")


# -- reading ------------------------------------------------------------------------------------
def read_thresholds(run_dir: str | Path) -> dict[tuple[str, str], float] | None:
    """``(mode, machine) -> threshold`` the run's last test decided with (``test_thresholds.csv``)
    or else the trained ones (``thresholds.csv``); None when the run recorded neither."""
    for path in (Path(run_dir) / TEST_THRESHOLDS, Path(run_dir) / THRESHOLDS):
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as fh:
                return {(r["mode"], r["machine"]): float(r["threshold"]) for r in csv.DictReader(fh)}
    return None


def read_tested_run(folder: str | Path) -> Path | None:
    """The run an evaluation folder (``stetho test --out``) evaluated; None for a run folder.

    Raises:
        StethoError: ``tested_run.json`` is unreadable or names no run folder.
    """
    path = Path(folder) / TESTED_RUN
    if not path.is_file():
        return None
    try:
        run = Path(json.loads(path.read_text(encoding="utf-8"))["run"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StethoError(f"{path}: not a record of the tested run ({exc})") from None
    if not (run / "config.yaml").is_file():
        raise StethoError(f"{path}: the run it evaluated, {run}, is gone (no config.yaml there)")
    return run


def read_npz(path: Path, required: set[str]) -> dict[str, np.ndarray] | None:
    """The arrays of ``path`` (None when absent, unreadable or lacking a ``required`` key)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            data: dict[str, Any] = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        log.warning("report: %s: %s", path, exc)
        return None
    if not required <= set(data):
        log.warning("report: %s lacks %s", path, "/".join(sorted(required)))
        return None
    return data


def read_train_embeddings(run_dir: str | Path) -> dict[str, np.ndarray] | None:
    """``train_embeddings.npz`` of the run (None when the model stores no embeddings, or the run
    was trained before the file existed)."""
    return read_npz(Path(run_dir) / TRAIN_EMBEDDINGS, {"embeddings", "epoch", "machine", "domain"})
