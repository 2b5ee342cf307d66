"""Rotating machines of the toy synthesiser: fan, pump, gearbox, bearing test rig, induction motor.

Each has a character (fixed per name), a renderer for one clip and its :class:`MachineType`;
faults common to rotating machines are in :mod:`stetho.synth.faults`, a machine's own fault
kinds (cavitation, a chipped tooth, a broken rotor bar) are drawn here by its renderer."""

from __future__ import annotations

from typing import Any

import numpy as np

from stetho.synth.machines.base import Ctx, MachineType, Rendered, common_character
from stetho.synth.signals import (
    TWO_PI,
    band_noise,
    coloured_noise,
    harmonic_tone,
    periodic_times,
    phase_track,
    resonance_kernel,
    smooth_random,
    struck,
    unit_rms,
)

_ROTATING_FAULTS = ("bearing", "imbalance", "rub", "drift")


# ---- fan --------------------------------------------------------------------------------------


def _fan_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (400, 2500))
    c.update(blades=int(rng.choice([5, 7, 9, 11])), airflow_exp=float(rng.uniform(0.3, 0.8)))
    return c


def _render_fan(ctx: Ctx) -> Rendered:
    """Rotation harmonics, blade-pass tone, blade-modulated airflow noise, motor hum."""
    c, v, n, sr = ctx.char, ctx.values, ctx.n, ctx.sr
    spd, load = v["spd"], v["load"]
    rotor = spd * (1.0 - 0.01 * load) * ctx.speed  # back pressure slows the fan a little
    ph, fmax = ctx.spin(rotor)
    rot = harmonic_tone(ph, [0.25, 0.12, 0.08, 0.05], ctx.rand_phases(4), f0_max_hz=fmax, sr=sr)
    b = c["blades"]
    bpf = harmonic_tone(b * ph, [1.0, 0.45, 0.2, 0.1], ctx.rand_phases(4), f0_max_hz=b * fmax, sr=sr)
    # More back pressure: a stronger blade-pass tone and a darker, rougher airflow.
    air = coloured_noise(n, sr, ctx.rng, c["airflow_exp"] + 0.15 * (load - 2.0), 80.0, 7000.0)
    # Turbulence is chopped by each passing blade.
    air *= 1.0 + 0.25 * np.cos(b * ph)
    hum = harmonic_tone(phase_track(100.0, sr, n, ctx.rng.uniform(0, TWO_PI)), [1.0, 0.4], ctx.rand_phases(2))
    y = (0.15 + 0.2 * load) * bpf + 0.5 * rot + (spd / 28.0) ** 2 * air + 0.08 * hum
    return Rendered(y, rotor)


FAN = MachineType(
    name="fan",
    description="axial fan: blade-pass tone and rotation harmonics over airflow noise",
    source_attributes=(("spd", ("20", "24", "28")), ("load", ("1", "2", "3"))),
    target_attributes=(("spd", ("26",)), ("load", ("1", "2", "3"))),
    anomalies=_ROTATING_FAULTS,
    render=_render_fan,
    character=_fan_character,
)


# ---- pump -------------------------------------------------------------------------------------


def _pump_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (300, 2000))
    c.update(
        vanes=int(rng.choice([5, 6, 7])),
        slots=int(rng.integers(28, 41)),
        flow_low=float(rng.uniform(120, 250)),
        flow_high=float(rng.uniform(2000, 3500)),
    )
    return c


def _render_pump(ctx: Ctx) -> Rendered:
    """Vane-pass pulsation (modulated at shaft rate), motor slot whine, mains hum, flow noise."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    spd, pres = v["spd"], v["pres"]
    rotor = spd * ctx.speed
    ph, fmax = ctx.spin(rotor)
    vanes, slots = c["vanes"], c["slots"]
    pulse = harmonic_tone(vanes * ph, [1.0, 0.5, 0.25], ctx.rand_phases(3), f0_max_hz=vanes * fmax, sr=sr)
    pulse *= 1.0 + 0.3 * np.cos(ph + rng.uniform(0, TWO_PI))  # impeller eccentricity
    whine = harmonic_tone(slots * ph, [1.0, 0.3], ctx.rand_phases(2), f0_max_hz=slots * fmax, sr=sr)
    hum = harmonic_tone(phase_track(100.0, sr, n, rng.uniform(0, TWO_PI)), [1.0, 0.5, 0.3], ctx.rand_phases(3))
    # Higher discharge pressure: stronger pulsation and a brighter flow noise.
    flow = band_noise(n, sr, rng, c["flow_low"], c["flow_high"] * (0.8 + 0.15 * pres), order=2)
    flow *= 1.0 + 0.2 * smooth_random(n, sr, rng, 2.0)
    y = (0.2 + 0.3 * pres) * pulse + 0.15 * whine + 0.12 * hum + 0.8 * flow
    fault = None
    if ctx.anomaly == "cavitation":
        # Vapour bubbles collapse as pressure recovers once per vane passage: a crackle of very
        # short high-frequency clicks, clustered at the vane-pass phase.
        times, idx = periodic_times(np.full(n, rng.uniform(300, 700)), sr, rng, jitter=0.5)
        amps = rng.exponential(1.0, times.size) * (0.5 + 0.5 * np.cos(vanes * ph[idx])) ** 2
        modes = [rng.uniform(3000, 5500), rng.uniform(5500, 7000)]
        kernel = resonance_kernel(sr, modes, [3e-4, 2e-4], [1.0, 0.7])
        fault = unit_rms(struck(n, sr, times, amps, kernel))
    return Rendered(y, rotor, fault)


PUMP = MachineType(
    name="pump",
    description="centrifugal pump: vane-pass pulsation, motor whine, flow noise",
    source_attributes=(("spd", ("24", "29")), ("pres", ("1", "2", "3"))),
    target_attributes=(("spd", ("34",)), ("pres", ("1", "2", "3"))),
    anomalies=("bearing", "imbalance", "leak", "cavitation", "drift"),
    render=_render_pump,
    character=_pump_character,
    fault_offset_db=3.0,  # the easy one
)


# ---- gearbox ----------------------------------------------------------------------------------


def _gearbox_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (600, 3500))
    c.update(
        teeth=int(rng.integers(17, 26)),
        ratio=float(rng.uniform(3.0, 5.0)),
        segments=int(rng.choice([3, 5, 7])),
        gear_res_hz=float(rng.uniform(1500, 3500)),
    )
    return c


def _render_gearbox(ctx: Ctx) -> Rendered:
    """Gear mesh (teeth x shaft) with shaft-rate sidebands, DC motor commutation whine, brush noise."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    volt, wt = v["volt"], v["wt"]
    shaft = 9.0 * volt * (1.0 - 0.0006 * wt) * ctx.speed  # a DC motor slows under load
    ph, fmax = ctx.spin(shaft)
    z = c["teeth"]
    mesh = harmonic_tone(z * ph, [1.0, 0.5, 0.3, 0.15], ctx.rand_phases(4), f0_max_hz=z * fmax, sr=sr)
    # Eccentricity and load modulate the mesh once per revolution (sidebands at +-shaft rate).
    mesh *= 1.0 + (0.1 + 0.0008 * wt) * np.cos(ph + rng.uniform(0, TWO_PI))
    motor_ph = c["ratio"] * ph
    comm = 2 * c["segments"]
    whine = harmonic_tone(comm * motor_ph, [1.0, 0.4], ctx.rand_phases(2),
                          f0_max_hz=comm * c["ratio"] * fmax, sr=sr)
    brush = band_noise(n, sr, rng, 2000.0, 6000.0, order=2) * (1.0 + 0.5 * np.cos(comm * motor_ph))
    y = (0.6 + 0.002 * wt) * mesh + 0.3 * whine + 0.25 * brush
    fault = None
    if ctx.anomaly == "tooth":
        # A chipped tooth: one impact per shaft revolution, ringing the gear body.
        times, _ = periodic_times(shaft, sr, rng, jitter=0.002)
        kernel = resonance_kernel(sr, [c["gear_res_hz"], c["gear_res_hz"] * 1.6], [0.004, 0.002], [1.0, 0.5])
        fault = unit_rms(struck(n, sr, times, rng.uniform(0.8, 1.2, times.size), kernel))
    return Rendered(y, shaft, fault)


GEARBOX = MachineType(
    name="gearbox",
    description="DC-motor gearbox: gear-mesh tone with shaft sidebands, commutator whine",
    source_attributes=(("volt", ("1", "1.3")), ("wt", ("0", "100", "200"))),
    target_attributes=(("volt", ("1.15",)), ("wt", ("0", "100", "200"))),
    anomalies=("tooth", "bearing", "imbalance", "drift"),
    render=_render_gearbox,
    character=_gearbox_character,
    fault_offset_db=-4.0,  # the hard one
)


# ---- bearing (test rig) ---------------------------------------------------------------------


def _bearing_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (1500, 5000))
    c.update(roll_hz=float(rng.uniform(2000, 4500)), roll_bw=float(rng.uniform(800, 2000)))
    return c


def _render_bearing(ctx: Ctx) -> Rendered:
    """Bearing test rig: shaft harmonics, rolling noise in the bearing resonance band with cage modulation."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    vel, load = v["vel"], v["load"]
    shaft = vel * ctx.speed
    ph, fmax = ctx.spin(shaft)
    rot = harmonic_tone(ph, [1.0, 0.5, 0.3, 0.2, 0.1], ctx.rand_phases(5), f0_max_hz=fmax, sr=sr)
    lo, hi = c["roll_hz"] - c["roll_bw"] / 2, c["roll_hz"] + c["roll_bw"] / 2
    rolling = band_noise(n, sr, rng, lo, hi, order=2)
    rolling *= 1.0 + 0.15 * np.cos(c["ftf"] * ph)  # the cage carries the balls round
    broad = coloured_noise(n, sr, rng, 1.0, 50.0, 6000.0)
    hum = harmonic_tone(phase_track(100.0, sr, n, rng.uniform(0, TWO_PI)), [1.0, 0.3], ctx.rand_phases(2))
    y = 0.3 * rot + (0.2 + 0.4 * load) * (vel / 15.0) * rolling + 0.5 * broad + 0.15 * hum
    return Rendered(y, shaft)


BEARING = MachineType(
    name="bearing",
    description="bearing test rig: rolling noise in the bearing band, shaft harmonics",
    source_attributes=(("vel", ("10", "14", "18")), ("load", ("1", "2"))),
    target_attributes=(("vel", ("16",)), ("load", ("1", "2"))),
    anomalies=("outer", "inner", "ball", "imbalance"),
    render=_render_bearing,
    character=_bearing_character,
)


# ---- motor ------------------------------------------------------------------------------------


def _motor_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (300, 2500))
    c.update(
        rotor_bars=int(rng.integers(26, 45)),
        fan_blades=int(rng.choice([6, 8, 10, 12])),
        pole_pairs=int(rng.choice([1, 2])),
    )
    return c


def _render_motor(ctx: Ctx) -> Rendered:
    """Induction motor: magnetic hum at twice the mains frequency, rotor-slot whine, cooling fan."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    line, load = v["line"], v["load"]
    slip = 0.01 + 0.012 * load
    shaft = line / c["pole_pairs"] * (1.0 - slip) * ctx.speed
    ph, fmax = ctx.spin(shaft)
    hum_ph = phase_track(2.0 * line, sr, n, rng.uniform(0, TWO_PI))
    hum = harmonic_tone(hum_ph, [1.0, 0.6, 0.35, 0.2, 0.1], ctx.rand_phases(5), f0_max_hz=2 * line, sr=sr)
    bars = c["rotor_bars"]
    slot = harmonic_tone(bars * ph, [1.0, 0.3], ctx.rand_phases(2), f0_max_hz=bars * fmax, sr=sr)
    blades = c["fan_blades"]
    fan = harmonic_tone(blades * ph, [1.0, 0.4], ctx.rand_phases(2), f0_max_hz=blades * fmax, sr=sr)
    air = coloured_noise(n, sr, rng, 0.8, 100.0, 6000.0) * (1.0 + 0.2 * np.cos(blades * ph))
    y = (0.4 + 0.15 * load) * hum + 0.2 * slot + 0.25 * fan + 0.6 * air
    fault = None
    if ctx.anomaly == "rotorbar":
        # A broken rotor bar makes the hum beat at twice the slip frequency (about 1-4 Hz).
        beat = phase_track(2.0 * slip * line * ctx.speed, sr, n, rng.uniform(0, TWO_PI))
        fault = unit_rms(hum * np.cos(beat))
    return Rendered(y, shaft, fault)


MOTOR = MachineType(
    name="motor",
    description="induction motor: twice-mains hum, rotor-slot whine, cooling fan",
    source_attributes=(("line", ("50", "60")), ("load", ("1", "3"))),
    target_attributes=(("line", ("50", "60")), ("load", ("2",))),
    anomalies=("bearing", "imbalance", "rotorbar", "rub"),
    render=_render_motor,
    character=_motor_character,
)
