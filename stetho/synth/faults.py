"""Faults the toy synthesiser adds to rotating machines (bearing defects, imbalance, rub, leakage,
speed drift), and the level range of every fault kind (:data:`FAULT_LEVEL_DB`).

A machine's own fault kinds (cavitation, a chipped tooth, stick-slip, a broken rotor bar, the
valve's event faults) are drawn by its renderer in :mod:`stetho.synth.machines`.
"""

from __future__ import annotations

import numpy as np

from stetho.synth.machines.base import Ctx
from stetho.synth.signals import (
    TWO_PI,
    band_noise,
    burst_envelope,
    harmonic_tone,
    periodic_times,
    phase_track,
    poisson_times,
    resonance_kernel,
    smooth_random,
    struck,
    unit_rms,
)

#: Fault level range per kind: RMS of the fault sound (while active) relative to the machine's
#: RMS, in dB. Drift and the valve's event faults change the machine itself and have no level.
FAULT_LEVEL_DB: dict[str, tuple[float, float]] = {
    "bearing": (-30.0, -6.0),
    "outer": (-30.0, -6.0),
    "inner": (-30.0, -6.0),
    "ball": (-30.0, -6.0),
    "imbalance": (-24.0, -6.0),
    "rub": (-26.0, -4.0),
    "leak": (-30.0, -8.0),
    "cavitation": (-28.0, -8.0),
    "tooth": (-28.0, -6.0),
    "stickslip": (-26.0, -6.0),
    "rotorbar": (-20.0, -3.0),
}


def bearing_fault(ctx: Ctx, rotor_hz: np.ndarray, kind: str) -> np.ndarray:
    """Bearing defect: short resonant impacts at a defect frequency (outer race = BPFO, inner race
    = BPFI modulated by the load zone at shaft rate, ball = 2 x BSF modulated at the cage rate),
    with about 1 % slip jitter."""
    c, n, sr, rng = ctx.char, ctx.n, ctx.sr, ctx.rng
    ratio = {"bearing": c["bpfo"], "outer": c["bpfo"], "inner": c["bpfi"], "ball": 2 * c["bsf"]}[kind]
    times, idx = periodic_times(ratio * rotor_hz, sr, rng, jitter=0.01)
    amps = 1.0 + 0.15 * rng.standard_normal(times.size)
    if kind in ("inner", "ball"):
        mod_rate = rotor_hz if kind == "inner" else c["ftf"] * rotor_hz
        mod_ph = phase_track(mod_rate, sr, n, rng.uniform(0, TWO_PI))
        amps = amps * (0.6 + 0.4 * np.cos(mod_ph[idx]))
    f0 = c["bearing_res_hz"] * rng.uniform(0.95, 1.05)
    kernel = resonance_kernel(sr, [f0, 1.4 * f0], [rng.uniform(8e-4, 2e-3), 6e-4], [1.0, 0.5])
    return unit_rms(struck(n, sr, times, amps, kernel))


def imbalance_fault(ctx: Ctx, machine: np.ndarray, rotor_hz: np.ndarray) -> np.ndarray:
    """Imbalance: the whole machine sound is modulated once per revolution, and the structure
    radiates a low tone at the rotation rate (1x) and a weaker 2x."""
    n, sr, rng = ctx.n, ctx.sr, ctx.rng
    ph = phase_track(rotor_hz, sr, n, rng.uniform(0, TWO_PI))
    am = unit_rms(machine * np.cos(ph))
    tone = unit_rms(harmonic_tone(ph, [1.0, 0.3], ctx.rand_phases(2), f0_max_hz=float(rotor_hz.max()), sr=sr))
    return unit_rms(am + 0.6 * tone)


def rub_fault(ctx: Ctx, rotor_hz: np.ndarray | None) -> np.ndarray:
    """Rub: intermittent band-passed friction noise bursts, pulsing once per revolution while the
    rotor touches; the level is that of the bursts while they sound."""
    n, sr, rng = ctx.n, ctx.sr, ctx.rng
    fc = rng.uniform(800, 4000)
    noise = band_noise(n, sr, rng, 0.75 * fc, 1.25 * fc, order=2)
    starts = poisson_times(ctx.duration, rng.uniform(0.8, 2.5), rng)
    if starts.size == 0:
        starts = rng.uniform(0.0, ctx.duration, 1)
    env = burst_envelope(n, sr, starts, rng.uniform(0.05, 0.4, starts.size), 0.01)
    if rotor_hz is not None:
        contact = 0.5 + 0.5 * np.cos(phase_track(rotor_hz, sr, n, rng.uniform(0, TWO_PI)))
        noise = unit_rms(noise * (0.3 + 0.7 * contact**4))
    return noise * env


def leak_fault(ctx: Ctx) -> np.ndarray:
    """Leakage: high-frequency hiss, steady or coming and going; level of the hiss while present."""
    n, sr, rng = ctx.n, ctx.sr, ctx.rng
    low = rng.uniform(2500, 4500)
    hiss = band_noise(n, sr, rng, low, rng.uniform(low + 1500, 7800), order=3)
    wobble = smooth_random(n, sr, rng, 0.5)
    if rng.random() < 0.5:
        return hiss * (1.0 + 0.2 * wobble)
    gate = np.clip((wobble - rng.uniform(-0.5, 0.5)) * 3.0, 0.0, 1.0)  # intermittent
    if gate.max() <= 0.0:
        gate[:] = 1.0
    return hiss * gate


def speed_drift(ctx: Ctx) -> np.ndarray:
    """Speed drift: a slow wobble (0.2-1 Hz) or a ramp of 1-6 % in the rotation rate, shape (n,)."""
    rng, t = ctx.rng, ctx.t()
    depth = rng.uniform(0.01, 0.06)
    if rng.random() < 0.5:
        return 1.0 + depth * np.sin(TWO_PI * rng.uniform(0.2, 1.0) * t + rng.uniform(0, TWO_PI))
    return 1.0 + depth * rng.choice([-1.0, 1.0]) * (t / max(ctx.duration, 1e-9) - 0.5) * 2.0

