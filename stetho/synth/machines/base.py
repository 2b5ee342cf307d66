"""What a synthetic machine type is (:class:`MachineType`), what its renderer gets for one clip
(:class:`Ctx`) and returns (:class:`Rendered`), and the character every rotating machine shares."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stetho.datasets.clip import SOURCE
from stetho.synth.signals import TWO_PI, phase_track, rand_phases


@dataclass
class Ctx:
    """Everything a machine renderer needs for one clip."""

    n: int  # samples
    sr: int  # Hz
    rng: np.random.Generator
    values: dict[str, float]  # attribute name -> numeric value
    char: Mapping[str, Any]  # machine character (fixed per machine name)
    anomaly: str | None
    speed: np.ndarray  # per-sample speed factor around 1 (jitter, wander, drift), shape (n,)

    @property
    def duration(self) -> float:
        return self.n / self.sr

    def t(self) -> np.ndarray:
        return np.arange(self.n) / self.sr

    def rand_phases(self, k: int) -> list[float]:
        return rand_phases(self.rng, k)

    def spin(self, rate_hz: np.ndarray) -> tuple[np.ndarray, float]:
        """A shaft turning at ``rate_hz`` (Hz, shape ``(n,)``) from a random angle: its running phase
        in radians (shape ``(n,)``, :func:`~stetho.synth.signals.phase_track`) and its top rate in Hz."""
        return phase_track(rate_hz, self.sr, self.n, self.rng.uniform(0, TWO_PI)), float(rate_hz.max())


@dataclass
class Rendered:
    """A rendered machine: its sound, its rotating-part rate, and a machine-specific fault."""

    machine: np.ndarray  # shape (n,)
    rotor_hz: np.ndarray | None  # rotation rate of the main shaft in Hz, shape (n,); None = none
    fault: np.ndarray | None = None  # additive fault sound for machine-specific anomaly kinds


@dataclass(frozen=True)
class MachineType:
    """One synthetic machine type.

    Attributes:
        name: machine type, the folder name.
        description: one line on what it sounds like.
        source_attributes: ``(name, values)`` pairs used in the source domain, in file-name order.
        target_attributes: same names, values for the target domain; every combination differs
            from every source combination.
        anomalies: fault kinds a test anomaly of this machine can have.
        render: draws the machine sound (and its own fault kinds) for one clip.
        character: draws the fixed per-name parameters from a generator seeded by the name.
        level_dbfs: RMS level of the machine sound in dBFS (impulsive machines sit lower to
            leave headroom for their peaks).
        background_db: level of the background relative to the machine in dB, in the source and
            in the target domain (the target site is noisier).
        fault_offset_db: added to every fault level of this machine (:data:`~stetho.synth.faults.FAULT_LEVEL_DB`), to
            spread the difficulty over the machine types as in DCASE (some easy, some hard).
    """

    name: str
    description: str
    source_attributes: tuple[tuple[str, tuple[str, ...]], ...]
    target_attributes: tuple[tuple[str, tuple[str, ...]], ...]
    anomalies: tuple[str, ...]
    render: Callable[[Ctx], Rendered] = field(repr=False)
    character: Callable[[np.random.Generator], dict[str, Any]] = field(repr=False)
    level_dbfs: float = -26.0
    background_db: tuple[float, float] = (-10.0, -9.0)
    fault_offset_db: float = 0.0

    @property
    def attribute_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.source_attributes)

    def combinations(self, domain: str) -> list[tuple[tuple[str, str], ...]]:
        """All attribute combinations of a domain, as ``((name, value), ...)`` in file-name order."""
        attrs = self.source_attributes if domain == SOURCE else self.target_attributes
        names = [a for a, _ in attrs]
        return [tuple(zip(names, combo)) for combo in itertools.product(*(v for _, v in attrs))]


def common_character(rng: np.random.Generator, res_range: tuple[float, float]) -> dict[str, Any]:
    """Housing resonances and bearing geometry every rotating machine has."""
    lo, hi = res_range
    resonances = [
        (float(rng.uniform(lo, hi)), float(rng.uniform(80, 400)), float(rng.uniform(0.6, 2.0)))
        for _ in range(3)
    ]
    balls = int(rng.integers(7, 13))
    ratio = float(rng.uniform(0.18, 0.32))  # ball diameter / pitch diameter
    return {
        "resonances": resonances,
        "floor": float(rng.uniform(0.4, 0.8)),
        # Standard bearing fault frequencies per shaft revolution (contact angle 0).
        "bpfo": balls / 2.0 * (1.0 - ratio),
        "bpfi": balls / 2.0 * (1.0 + ratio),
        "bsf": (1.0 - ratio**2) / (2.0 * ratio),
        "ftf": 0.5 * (1.0 - ratio),
        "bearing_res_hz": float(rng.uniform(2500, 5000)),
        "bg_exponent": float(rng.uniform(0.8, 1.2)),
        "bg_hum_hz": float(rng.uniform(150, 400)),
    }

