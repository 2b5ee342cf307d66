"""Machines of the toy synthesiser that work in cycles: a solenoid valve (patterns of open/close
clicks) and a linear slide (back-and-forth strokes). Each has a character (fixed per name), a
renderer for one clip, which also draws the machine's own fault kinds, and its :class:`MachineType`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stetho.synth.machines.base import Ctx, MachineType, Rendered, common_character
from stetho.synth.signals import (
    TWO_PI,
    band_noise,
    burst_envelope,
    coloured_noise,
    db_to_gain,
    decay_kernel,
    harmonic_tone,
    phase_track,
    poisson_times,
    resonance_kernel,
    struck,
    swept_band_noise,
)

# ---- valve ------------------------------------------------------------------------------------

#: Event patterns of one valve cycle: (fraction of the cycle period, "o"pen or "c"lose).
VALVE_PATTERNS: dict[int, tuple[tuple[float, str], ...]] = {
    0: ((0.0, "o"), (0.5, "c")),
    1: ((0.0, "o"), (0.25, "c"), (0.5, "o"), (0.75, "c")),
    2: ((0.0, "o"), (0.15, "c"), (0.6, "o"), (0.7, "c")),
    3: ((0.0, "o"), (0.3, "c"), (0.45, "o"), (0.55, "c"), (0.7, "o"), (0.9, "c")),
    4: ((0.0, "o"), (0.8, "c")),
}


def _valve_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (800, 4000))
    c.update(
        open_modes=sorted(float(f) for f in rng.uniform(1500, 5000, 3)),
        close_modes=sorted(float(f) for f in rng.uniform(600, 3500, 3)),
        open_decays=[float(d) for d in rng.uniform(0.004, 0.015, 3)],
        close_decays=[float(d) for d in rng.uniform(0.006, 0.02, 3)],
        thud_hz=float(rng.uniform(150, 350)),
        air_low=float(rng.uniform(1500, 2500)),
    )
    return c


def _valve_events(ctx: Ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event times (s), kinds (True = open) and amplitudes; applies the valve's own faults."""
    rng, dur = ctx.rng, ctx.duration
    pattern = VALVE_PATTERNS[int(ctx.values["pat"])]
    period = ctx.values["per"] * float(ctx.speed.mean())
    cycles = np.arange(-1, int(math.ceil(dur / period)) + 1)
    start = -rng.uniform(0.0, period)
    fracs = np.array([f for f, _ in pattern])
    opens = np.array([k == "o" for k, _ in pattern])
    times = (start + cycles[:, None] * period + fracs[None, :] * period).ravel()
    is_open = np.tile(opens, cycles.size)
    times = times + rng.normal(0.0, 0.003, times.size)  # actuation timing scatter
    amps = db_to_gain(1.0) ** rng.normal(0.0, 1.0, times.size)  # +-1 dB per event
    inside = np.flatnonzero((times > 0.0) & (times < dur))
    kind = ctx.anomaly
    if kind == "missing" and inside.size:
        drop = rng.random(inside.size) < rng.uniform(0.3, 0.7)
        drop[rng.integers(inside.size)] = True  # at least one event is missing
        keep = np.ones(times.size, bool)
        keep[inside[drop]] = False
        times, is_open, amps = times[keep], is_open[keep], amps[keep]
    elif kind == "extra":
        m = max(1, int(rng.poisson(rng.uniform(0.2, 0.8) * dur)))
        times = np.concatenate([times, rng.uniform(0.0, dur, m)])
        is_open = np.concatenate([is_open, rng.random(m) < 0.5])
        amps = np.concatenate([amps, rng.uniform(0.6, 1.1, m)])
    elif kind == "mistimed" and inside.size:
        moved = inside[rng.random(inside.size) < rng.uniform(0.3, 0.6)]
        if moved.size == 0:
            moved = inside[:1]
        times = times.copy()
        times[moved] += rng.choice([-1.0, 1.0], moved.size) * rng.uniform(0.05, 0.15, moved.size) * period
    return times, is_open, amps


def _struck_modes(
    ctx: Ctx,
    times: np.ndarray,
    amps: np.ndarray,
    freqs: Sequence[float],
    decays: Sequence[float],
    gains: Sequence[float],
) -> np.ndarray:
    """Impacts at ``times`` (s) exciting each mode with its own random strength (+-3 dB per
    event and mode): real impacts never ring exactly alike."""
    y = np.zeros(ctx.n)
    for f, d, g in zip(freqs, decays, gains, strict=True):
        spread = db_to_gain(3.0) ** ctx.rng.normal(0.0, 1.0, times.size)
        y += struck(ctx.n, ctx.sr, times, g * amps * spread, resonance_kernel(ctx.sr, [f], [d], [1.0]))
    return y


def _render_valve(ctx: Ctx) -> Rendered:
    """Solenoid valve: open clicks with an air-release burst, close clicks with a thud, quiet between."""
    c, n, sr, rng = ctx.char, ctx.n, ctx.sr, ctx.rng
    times, is_open, amps = _valve_events(ctx)
    close_times, close_amps = times[~is_open], amps[~is_open]
    close_freqs = [c["thud_hz"], *c["close_modes"]]
    close_gains = [0.8, 1.0, 0.6, 0.4]
    clicks = _struck_modes(ctx, times[is_open], amps[is_open], c["open_modes"], c["open_decays"], [1.0, 0.7, 0.5])
    if ctx.anomaly == "sticky":
        # A sluggish valve: now and then the closing stroke is late and its impact duller.
        slow = rng.random(close_times.size) < rng.uniform(0.4, 1.0)
        if close_times.size and not slow.any():
            slow[rng.integers(close_times.size)] = True
        decays = [d * rng.uniform(1.3, 2.0) for d in c["close_decays"]]
        soft = db_to_gain(-rng.uniform(2.0, 6.0))
        late = close_times[slow] + rng.uniform(0.015, 0.05)
        clicks += _struck_modes(ctx, late, soft * close_amps[slow], close_freqs, [0.03, *decays], close_gains)
        close_times, close_amps = close_times[~slow], close_amps[~slow]
    clicks += _struck_modes(ctx, close_times, close_amps, close_freqs, [0.03, *c["close_decays"]], close_gains)
    air_env = struck(n, sr, times[is_open], amps[is_open], decay_kernel(sr, 0.04))
    air = band_noise(n, sr, rng, c["air_low"], 7000.0, order=2) * air_env
    # Between events only a faint pneumatic hiss: the clip is mostly quiet.
    hiss = 0.02 * coloured_noise(n, sr, rng, 0.5, 500.0, 6000.0)
    y = clicks + 0.25 * air + hiss
    return Rendered(y, None)


VALVE = MachineType(
    name="valve",
    description="solenoid valve: patterns of open/close clicks, quiet in between",
    source_attributes=(("pat", ("0", "1", "2")), ("per", ("1", "1.5"))),
    target_attributes=(("pat", ("0", "1", "2")), ("per", ("1.25",))),
    anomalies=("missing", "extra", "mistimed", "sticky", "leak"),
    render=_render_valve,
    character=_valve_character,
    level_dbfs=-30.0,
    # Its energy sits in short clicks, so the background is set lower than for the
    # continuous machines, or it would be all one hears between clicks.
    background_db=(-22.0, -21.0),
)


# ---- slider -----------------------------------------------------------------------------------


def _slider_character(rng: np.random.Generator) -> dict[str, Any]:
    c = common_character(rng, (500, 3000))
    c.update(
        stroke_m=float(rng.uniform(0.12, 0.2)),
        dwell_s=float(rng.uniform(0.08, 0.2)),
        rail_low=float(rng.uniform(500, 900)),
        rail_span=float(rng.uniform(1500, 3000)),
        screw_lead_m=float(rng.uniform(0.004, 0.01)),
        whine_base=float(rng.uniform(150, 300)),
        whine_span=float(rng.uniform(600, 1200)),
        stop_modes=[float(f) for f in rng.uniform(700, 4000, 2)],
    )
    return c


def _slider_cycle(vmax: float, accel: float, stroke_m: float, dwell_s: float, points: int = 2048):
    """One back-and-forth cycle: (period in s, velocity in m/s and position in [0, 1] at
    ``points`` equally spaced cycle phases).

    Each stroke has a trapezoidal velocity profile; ``accel`` (m/s^2) sets the ramps.
    """
    ramp_t = vmax / accel
    if vmax * ramp_t >= stroke_m:  # never reaches vmax: triangular profile
        ramp_t = math.sqrt(stroke_m / accel)
        vmax = accel * ramp_t
    stroke_t = 2 * ramp_t + (stroke_m - vmax * ramp_t) / vmax
    period = 2 * (stroke_t + dwell_s)
    t = np.linspace(0.0, period, points, endpoint=False)
    tau = np.mod(t, stroke_t + dwell_s)  # time within the half cycle
    speed = np.clip(np.minimum(tau, stroke_t - tau) * accel, 0.0, vmax)
    speed[tau >= stroke_t] = 0.0
    direction = np.where(t < stroke_t + dwell_s, 1.0, -1.0)
    vel = speed * direction
    pos = np.cumsum(vel) * (period / points)
    pos = (pos - pos.min()) / max(np.ptp(pos), 1e-9)
    return period, vel, pos


def _render_slider(ctx: Ctx) -> Rendered:
    """Linear slide: rail friction band sweeping with position, screw/servo whine, end stops."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    vmax = v["vel"] / 100.0  # attribute in cm/s
    period, vel_tab, pos_tab = _slider_cycle(vmax, v["ac"], c["stroke_m"], c["dwell_s"])
    # Cycle phase advances at the (jittered) cycle rate, so jitter and drift apply to motion too.
    cyc = phase_track(ctx.speed / period, sr, n, 0.0) / TWO_PI + rng.uniform(0.0, 1.0)
    frac = np.mod(cyc, 1.0)
    grid = np.arange(vel_tab.size) / vel_tab.size
    vel = np.interp(frac, grid, vel_tab, period=1.0) * ctx.speed
    pos = np.interp(frac, grid, pos_tab, period=1.0)
    motion = np.abs(vel) / vmax
    # The rail's friction band rises with position and (more weakly) with speed; the servo whine
    # follows the absolute speed.
    speed_ratio = np.abs(vel) / 0.3
    friction_fc = c["rail_low"] * (0.7 + 0.3 * speed_ratio) + c["rail_span"] * pos
    friction = swept_band_noise(n, sr, rng, friction_fc, 500.0) * motion
    whine_f = c["whine_base"] + c["whine_span"] * speed_ratio
    # The servo strains (draws more current, whines louder) while it accelerates or brakes.
    strain = np.abs(np.gradient(vel)) * sr if n > 1 else np.zeros(n)  # m/s^2
    whine = harmonic_tone(phase_track(whine_f, sr, n), [1.0, 0.5, 0.3], ctx.rand_phases(3),
                          f0_max_hz=float(whine_f.max()), sr=sr) * (0.2 + 0.8 * motion + 0.6 * strain)
    rumble = band_noise(n, sr, rng, 60.0, 400.0, order=2) * motion
    # End stops: the carriage settles at each reversal (start of a dwell).
    n_cycles = int(math.ceil(cyc[-1])) + 1 if n else 0
    starts = np.arange(n_cycles)[:, None] + np.array([0.0, 0.5])[None, :]
    stop_idx = np.searchsorted(cyc, starts.ravel() - 1e-9)
    stop_idx = stop_idx[(stop_idx > 0) & (stop_idx < n)]
    kernel = resonance_kernel(sr, c["stop_modes"], [0.01, 0.006], [1.0, 0.6])
    stops = struck(n, sr, stop_idx / sr, 0.4 * v["ac"], kernel)  # harder braking, louder stop
    y = friction + 0.15 * whine + 0.5 * rumble + stops
    # The ball screw turns at v / lead revolutions per second: the slider's "shaft".
    rotor = np.abs(vel) / c["screw_lead_m"]
    fault = None
    if ctx.anomaly == "stickslip":
        # Stick-slip: squeal bursts while the carriage moves (dry friction on the rail).
        f0 = rng.uniform(1200, 2800)
        vib = 1.0 + 0.02 * np.sin(TWO_PI * rng.uniform(4, 8) * ctx.t())
        squeal = harmonic_tone(phase_track(f0 * vib, sr, n), [1.0, 0.4, 0.2], ctx.rand_phases(3),
                               f0_max_hz=f0 * 1.02, sr=sr)
        starts_s = poisson_times(ctx.duration, rng.uniform(1.0, 2.5), rng)
        env = burst_envelope(n, sr, starts_s, rng.uniform(0.1, 0.4, starts_s.size), 0.02)
        fault = squeal * env * (motion > 0.3)
    return Rendered(y, rotor, fault)


SLIDER = MachineType(
    name="slider",
    description="linear slide: friction noise sweeping with position, servo whine, end stops",
    source_attributes=(("vel", ("20", "30")), ("ac", ("1", "2"))),
    target_attributes=(("vel", ("25",)), ("ac", ("1", "2"))),
    anomalies=("rub", "stickslip", "bearing", "drift"),
    render=_render_slider,
    character=_slider_character,
)
