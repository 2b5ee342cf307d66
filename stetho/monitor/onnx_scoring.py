"""A :class:`~stetho.monitor.scoring.Scorer` whose models are ONNX exports (``stetho serve
--engine onnx``): the same decoding, audio checks and verdicts, with each machine type's scores
computed by onnxruntime from a folder written by ``stetho export --format onnx``
(:class:`stetho.edge.EdgeScorer`) instead of a torch detector.

:class:`OnnxDetector` stands in for a detector where :class:`Scorer` needs one: its
``signal_features`` are the validated samples themselves (the graph computes the log-mel) and its
``score_all`` runs the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stetho.datasets.clip import Clip
from stetho.edge import EdgeError, EdgeScorer
from stetho.errors import ConfigError
from stetho.monitor.scoring import RunInfo, Scorer, _Served


class OnnxDetector:
    """One machine type of an ONNX export, with the part of the detector API :class:`Scorer`
    uses (``signal_spec``, ``channel``, ``score_modes``, ``machines_``, ``signal_features``,
    ``score_all``, ``threshold_for``, ``_mode``, ``name``)."""

    def __init__(self, edge: EdgeScorer, machine_type: str) -> None:
        self.edge = edge
        self.machine_type = machine_type
        self.meta: dict[str, Any] = edge.meta[machine_type]
        self.name = str(self.meta["model"])
        self.score_modes = tuple(self.meta["score_modes"])
        self.machines_ = [machine_type]
        self.channel = int(self.meta.get("channel", 0))
        self.progress = False
        self.threads = edge.threads

    @property
    def signal_spec(self) -> tuple[int, int]:
        """``(sample rate in Hz, fewest samples)`` of the exported graph."""
        return int(self.meta["sample_rate"]), int(self.meta["min_samples"])

    def signal_features(self, y: np.ndarray, path: str | Path = "<signal>") -> np.ndarray:
        """The samples themselves: the graph computes the log-mel."""
        return np.ascontiguousarray(y, dtype=np.float32)

    def score_all(self, clips: Sequence[Clip], features: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Every mode's scores of ``clips`` (their samples in ``features``) by the ONNX graph."""
        rows = []
        for clip, y in zip(clips, features):
            try:
                rows.append(self.edge.scores(y, self.machine_type, clip.section))
            except EdgeError as exc:  # a section the model was not fitted on
                raise ConfigError(str(exc)) from None
        out = np.stack(rows) if rows else np.zeros((0, len(self.score_modes)))
        return {mode: out[:, i] for i, mode in enumerate(self.score_modes)}

    def threshold_for(self, mode: str | None = None, machine: str | None = None) -> float:
        """The exported threshold of ``mode`` (default: the default mode)."""
        return float(self.meta["thresholds"][self._mode(mode)])

    def _mode(self, mode: str | None) -> str:
        mode = mode or self.meta["default_mode"]
        if mode not in self.score_modes:
            raise ConfigError(f"unknown score mode '{mode}' for {self.name}; choose from {', '.join(self.score_modes)}")
        return mode


def load_onnx_scorer(export_dirs: str | Path | Sequence[str | Path], threads: int = 1,
                     resample: bool = True) -> Scorer:
    """A :class:`Scorer` of ONNX export folders (one or several, each from ``stetho export
    --format onnx``); verdicts carry the exported run's id, so they compare with those of the
    torch engine.

    Raises:
        ConfigError: no folder, not an ONNX export folder, or a machine type in two of them.
    """
    dirs = [Path(export_dirs)] if isinstance(export_dirs, (str, Path)) else [Path(d) for d in export_dirs]
    if not dirs:
        raise ConfigError("no export folder to score with; write one with `stetho export RUN --format onnx`")
    served: dict[str, _Served] = {}
    runs: list[RunInfo] = []
    for folder in dirs:
        try:
            edge = EdgeScorer(folder, threads=threads, resample=resample)
        except EdgeError as exc:
            raise ConfigError(str(exc)) from None
        run = edge.index["run"]
        info = RunInfo(path=folder, run_id=str(run["run_id"]), version=run.get("trained_version"),
                       model=",".join(sorted({str(m["model"]) for m in edge.meta.values()})),
                       machine_types=tuple(edge.machine_types))
        runs.append(info)
        for machine in edge.machine_types:
            if machine in served:
                raise ConfigError(f"machine type '{machine}' is served by two exports, {served[machine].run.path} "
                                  f"and {folder}: give only one per machine type")
            served[machine] = _Served(OnnxDetector(edge, machine), info)  # type: ignore[arg-type]
    return Scorer(served, runs, threads, resample)


__all__ = ["OnnxDetector", "load_onnx_scorer"]
