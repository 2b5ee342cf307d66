"""Deterministic synthetic machine sounds in the DCASE2023 Task 2 layout.

This is stetho's built-in data: the demo and the end-to-end tests run on it, so it has to be
fast, reproducible byte for byte, physically plausible and *realistically difficult* (a working
detector lands well above chance, not at 1.0, and the target domain is harder than the source).

Layout written by :func:`make_toy_dataset` (one section, ``00``, per machine type)::

    OUT/<machine>/train/section_00_{source|target}_train_normal_NNNN_<attrs>.wav
    OUT/<machine>/test/section_00_{source|target}_test_{normal|anomaly}_NNNN_<attrs>.wav
    OUT/<machine>/attributes_00.csv      # file_name,d1p,d1v,d2p,d2v,...

How a clip is made (:func:`synthesize_clip`):

1. every machine type has a fixed *character* derived from its name only (blade/tooth/vane
   counts, bearing geometry, body resonances), so a seed changes the recordings, never the machine;
2. its attributes (speed, load, pattern, ...) set the operating point; the target domain runs
   at operating points the source domain never uses (mostly between the source ones, as a new
   production setting would be), with few training clips;
3. normal variation per clip: speed jitter (about +-1.5 %) and slow wander, random phases, level
   +-2 dB, fresh noise;
4. an anomaly (test split only) adds a subtle fault sound a few dB to tens of dB below the machine
   (bearing impulse trains, imbalance modulation, rub bursts, leakage hiss, speed drift, broken
   tooth, cavitation, stick-slip squeal, rotor-bar beating) or, for valves, changes the event
   sequence (missing, extra, mistimed, sluggish events);
5. coloured background noise whose colour and level depend on the domain (the target site is a
   little louder and browner and has a faint distant tonal source; ``domain_shift="strong"``
   makes it much more so, ``"factory"`` adds impacts, vehicles and other machines that come and
   go at both sites, see :data:`DOMAIN_SHIFTS`).

Difficulty was calibrated with a simple proxy detector (per machine: 5 stacked log-mel frames,
PCA reconstruction error; 100 source + 10 target training clips of 10 s, 20 test clips per
group): source AUC about 0.7-0.95 depending on the machine, target AUC lower on average but
above chance. Fault levels are drawn per clip over a wide range, so some anomalies are obvious
and some inaudible, as in real data. :func:`plan_toy_dataset` tells which fault each anomalous
file has (the file names, as in DCASE, do not).

Every clip draws from its own generator, seeded from ``(seed, machine, split, domain, label,
index)`` through :class:`numpy.random.SeedSequence` with names hashed by ``zlib.crc32`` (stable
across processes, unlike ``hash()``), so a machine generated alone is identical to the same
machine generated next to others, and clips can be synthesised in parallel threads.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from numbers import Real
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.fft as sfft
from scipy import signal as sps

from stetho.audio.io import write_wav
from stetho.datasets.clip import ANOMALY, DOMAINS, NORMAL, SOURCE, TARGET, Clip
from stetho.errors import ConfigError
from stetho.fileio import atomic_write_text, csv_text

log = logging.getLogger(__name__)

SECTION = "00"
TWO_PI = 2.0 * np.pi
#: Highest frequency any component is placed at, as a fraction of the sample rate (below Nyquist
#: with a margin, so nothing aliases).
_MAX_FREQ_FRACTION = 0.45

#: DCASE2023 Task 2 development file names, e.g.
#: ``section_00_source_train_normal_0000_spd_28_load_3.wav``.
FILE_NAME_RE = re.compile(
    r"^section_(?P<section>\d{2})_(?P<domain>source|target)_(?P<split>train|test)_"
    r"(?P<label>normal|anomaly)_(?P<index>\d{4})(?P<attrs>(?:_[^_/]+_[^_/]+)*)\.wav$"
)


# --------------------------------------------------------------------------------------------
# Small signal helpers (pure functions of their arguments; randomness only through ``rng``)
# --------------------------------------------------------------------------------------------


def db_to_gain(db: float) -> float:
    """Amplitude ratio of a level difference in dB (``-6`` -> about ``0.5``)."""
    return float(10.0 ** (db / 20.0))


def rms(y: np.ndarray) -> float:
    """Root mean square of a signal (0 for an empty one)."""
    return float(np.sqrt(np.mean(np.square(y)))) if y.size else 0.0


def _unit_rms(y: np.ndarray) -> np.ndarray:
    r = rms(y)
    return y / r if r > 1e-12 else y  # an all-zero signal (e.g. no events) stays zero


def _lowpass_gain(f: np.ndarray, cutoff_hz: float, order: int) -> np.ndarray:
    """Butterworth low-pass magnitude at frequencies ``f`` (Hz)."""
    return 1.0 / np.sqrt(1.0 + (f / cutoff_hz) ** (2 * order))


def _highpass_gain(f: np.ndarray, cutoff_hz: float, order: int) -> np.ndarray:
    """Butterworth high-pass magnitude at frequencies ``f`` (Hz); 0 at DC."""
    with np.errstate(divide="ignore", over="ignore"):
        return 1.0 / np.sqrt(1.0 + (cutoff_hz / f) ** (2 * order))


def _clamp_band(low_hz: float, high_hz: float, sr: int) -> tuple[float, float]:
    """Keep a pass band below the anti-aliasing limit (matters only for low sample rates)."""
    top = _MAX_FREQ_FRACTION * sr
    high = min(high_hz, top)
    return min(low_hz, 0.7 * high), high


def shaped_noise(
    n: int, sr: int, rng: np.random.Generator, gain: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Stationary Gaussian noise with a given amplitude spectrum, normalised to unit RMS.

    Built directly in the frequency domain (complex Gaussian bins times ``gain``, one inverse
    FFT), which is cheaper than filtering white noise and allows any spectral shape.

    Args:
        n: length in samples.
        sr: sample rate in Hz.
        rng: random generator.
        gain: maps bin frequencies in Hz, shape ``(n // 2 + 1,)``, to amplitude gains (same shape).

    Returns:
        float32 array of shape ``(n,)``.
    """
    f = np.fft.rfftfreq(n, 1.0 / sr)
    g = np.asarray(gain(f), dtype=np.float32)
    # float32 throughout: the output is 16-bit, and half the memory traffic is half the time.
    spec = np.empty(f.size, np.complex64)  # filled in place: mixing 1j * array is slow
    spec.real = rng.standard_normal(f.size, dtype=np.float32)
    spec.imag = rng.standard_normal(f.size, dtype=np.float32)
    spec *= g
    return _unit_rms(sfft.irfft(spec, n))


def coloured_noise(
    n: int,
    sr: int,
    rng: np.random.Generator,
    exponent: float,
    low_hz: float = 20.0,
    high_hz: float | None = None,
) -> np.ndarray:
    """Noise with power spectrum ~ ``1 / f**exponent`` (0 white, 1 pink, 2 brown), unit RMS.

    Args:
        n: length in samples.
        sr: sample rate in Hz.
        rng: random generator.
        exponent: spectral slope of the power spectrum.
        low_hz: high-pass corner in Hz (removes DC and keeps brown noise bounded).
        high_hz: optional low-pass corner in Hz.

    Returns:
        float64 array of shape ``(n,)``.
    """

    def gain(f: np.ndarray) -> np.ndarray:
        g = _highpass_gain(f, low_hz, 2) * np.maximum(f, low_hz) ** (-exponent / 2.0)
        if high_hz is not None:
            g = g * _lowpass_gain(f, min(high_hz, _MAX_FREQ_FRACTION * sr), 4)
        return g

    return shaped_noise(n, sr, rng, gain)


def band_noise(
    n: int, sr: int, rng: np.random.Generator, low_hz: float, high_hz: float, order: int = 4
) -> np.ndarray:
    """Band-passed white noise (Butterworth-shaped skirts of ``order``), unit RMS, shape ``(n,)``.

    Args:
        low_hz: lower corner in Hz.
        high_hz: upper corner in Hz (clamped below Nyquist).
    """
    low, high = _clamp_band(low_hz, high_hz, sr)
    return shaped_noise(
        n, sr, rng, lambda f: _highpass_gain(f, low, order) * _lowpass_gain(f, high, order)
    )


def smooth_random(n: int, sr: int, rng: np.random.Generator, cutoff_hz: float) -> np.ndarray:
    """Slowly varying zero-mean random curve (Gaussian, unit RMS), shape ``(n,)``.

    Used for speed wander, level fluctuation and intermittency. Generated at a control rate of
    ``8 * cutoff_hz`` and linearly interpolated: a 0.5 Hz wander over 10 s needs 40 points, not
    160,000, so this costs almost nothing.

    Args:
        cutoff_hz: low-pass corner in Hz (roughly the fastest variation).
    """
    rate = 8.0 * cutoff_hz
    m = max(4, int(math.ceil(n / sr * rate)) + 2)
    ctrl = shaped_noise(m, rate, rng, lambda f: _lowpass_gain(f, cutoff_hz, 2))
    ctrl -= ctrl.mean()
    return _unit_rms(np.interp(np.arange(n) / sr * rate, np.arange(m), ctrl))


def phase_track(freq_hz: np.ndarray | float, sr: int, n: int, phase0: float = 0.0) -> np.ndarray:
    """Running phase in radians of an oscillator with instantaneous frequency ``freq_hz``.

    Args:
        freq_hz: frequency in Hz, scalar or shape ``(n,)``.
        sr: sample rate in Hz.
        n: length in samples.
        phase0: phase at sample 0, radians.

    Returns:
        float64 array of shape ``(n,)``; ``phase[i] = phase0 + 2*pi/sr * sum(freq[:i])``.
    """
    f = np.broadcast_to(np.asarray(freq_hz, dtype=np.float64), (n,))
    ph = np.empty(n)
    if n:
        ph[0] = 0.0
        np.cumsum(f[:-1], out=ph[1:])
    return ph * (TWO_PI / sr) + phase0


def harmonic_tone(
    phase: np.ndarray,
    amps: Sequence[float],
    phases: Sequence[float] | None = None,
    *,
    f0_max_hz: float | None = None,
    sr: int | None = None,
) -> np.ndarray:
    """Sum of harmonics ``sum_k amps[k] * sin((k + 1) * phase + phases[k])``.

    Uses the complex recursion ``z**k = z**(k-1) * z`` with ``z = exp(i * phase)``, so K harmonics
    cost one float32 sin/cos pair plus K complex64 products instead of K float64 sines (about 30x
    faster here; the rounding error grows like ``K * 1e-7``, far below 16-bit resolution).

    Args:
        phase: fundamental phase in radians, shape ``(n,)`` (see :func:`phase_track`).
        amps: linear amplitude of harmonic 1, 2, ...; 0 skips one.
        phases: starting phase of each harmonic in radians (default all 0).
        f0_max_hz, sr: when both are given, harmonics that would reach 0.45 * sr at the highest
            fundamental ``f0_max_hz`` (Hz) are dropped, so nothing aliases.

    Returns:
        float32 array of shape ``(n,)``.
    """
    amps = list(amps)
    if f0_max_hz is not None and sr is not None and f0_max_hz > 0:
        top = _MAX_FREQ_FRACTION * sr
        amps = [a if (k + 1) * f0_max_hz < top else 0.0 for k, a in enumerate(amps)]
    phases = list(phases) if phases is not None else [0.0] * len(amps)
    # Wrap in float64 first: float32 cannot hold thousands of radians accurately.
    wrapped = (phase - TWO_PI * np.rint(phase / TWO_PI)).astype(np.float32)
    z1 = np.empty(phase.shape, np.complex64)  # filled in place: mixing 1j * array is slow
    z1.real = np.cos(wrapped)
    z1.imag = np.sin(wrapped)
    # a * sin(k theta + phi) = Im(a * exp(i phi) * z**k): accumulate complex, take Im once
    # (contiguous complex products are much faster than arithmetic on strided .real/.imag views).
    acc = np.zeros(phase.shape, np.complex64)
    tmp = np.empty_like(acc)
    zk = z1.copy()
    last = max((k for k, a in enumerate(amps) if a), default=-1)
    for k in range(last + 1):
        if amps[k]:
            np.multiply(zk, amps[k] * complex(math.cos(phases[k]), math.sin(phases[k])), out=tmp)
            acc += tmp
        if k < last:
            zk *= z1
    return np.ascontiguousarray(acc.imag)


def resonance_kernel(
    sr: int, freqs_hz: Sequence[float], decays_s: Sequence[float], amps: Sequence[float]
) -> np.ndarray:
    """Impulse response of a few damped modes: ``sum a * exp(-t / tau) * sin(2 pi f t)``.

    Args:
        sr: sample rate in Hz.
        freqs_hz: mode frequencies in Hz (clamped below Nyquist).
        decays_s: amplitude time constants tau in seconds.
        amps: linear amplitudes.

    Returns:
        float64 array, ``5 * max(tau)`` seconds long (at least 2 samples).
    """
    length = max(2, int(math.ceil(5.0 * max(decays_s) * sr)))
    t = np.arange(length) / sr
    k = np.zeros(length)
    top = _MAX_FREQ_FRACTION * sr
    for f, tau, a in zip(freqs_hz, decays_s, amps, strict=True):
        k += a * np.exp(-t / tau) * np.sin(TWO_PI * min(f, top) * t)
    return k


def decay_kernel(sr: int, decay_s: float, attack_s: float = 0.002) -> np.ndarray:
    """Non-oscillating envelope kernel: short linear attack, exponential decay (tau in seconds)."""
    length = max(2, int(math.ceil(5.0 * decay_s * sr)))
    t = np.arange(length) / sr
    return np.minimum(1.0, t / max(attack_s, 1.0 / sr)) * np.exp(-t / decay_s)


def struck(
    n: int, sr: int, times_s: np.ndarray, amps: np.ndarray | float, kernel: np.ndarray
) -> np.ndarray:
    """Excite ``kernel`` at each time in ``times_s`` (seconds) with the matching amplitude.

    Times may be negative, so a clip can start in the ring-down of an earlier event; times past
    the end are ignored. Implemented as a sparse pulse train convolved with the kernel (one
    overlap-add FFT convolution, no Python loop over events).

    Returns:
        float64 array of shape ``(n,)``.
    """
    k = kernel.size
    times_s = np.atleast_1d(np.asarray(times_s, dtype=np.float64))
    amps = np.broadcast_to(np.asarray(amps, dtype=np.float64), times_s.shape)
    idx = np.rint(times_s * sr).astype(np.int64) + k
    keep = (idx >= 0) & (idx < n + k)
    if n == 0 or not keep.any():
        return np.zeros(n)
    pulses = np.zeros(n + k)
    np.add.at(pulses, idx[keep], amps[keep])
    return sps.oaconvolve(pulses, kernel)[k : k + n]


def burst_envelope(
    n: int, sr: int, starts_s: np.ndarray, durations_s: np.ndarray, ramp_s: float = 0.01
) -> np.ndarray:
    """0/1 gate that is open during each burst, with raised-cosine ramps of ``ramp_s`` seconds.

    Args:
        starts_s, durations_s: burst starts and lengths in seconds (same shape).

    Returns:
        float64 array of shape ``(n,)`` with values in [0, 1].
    """
    edges = np.zeros(n + 1)
    s = np.clip(np.rint(np.asarray(starts_s) * sr), 0, n).astype(np.int64)
    e = np.clip(np.rint((np.asarray(starts_s) + np.asarray(durations_s)) * sr), 0, n).astype(np.int64)
    np.add.at(edges, s, 1.0)
    np.add.at(edges, e, -1.0)
    gate = np.minimum(np.cumsum(edges)[:n], 1.0)
    width = max(3, int(ramp_s * sr))
    if n < width:
        return gate
    win = np.hanning(width)
    return np.clip(sps.oaconvolve(gate, win / win.sum(), mode="same"), 0.0, 1.0)


def poisson_times(duration_s: float, rate_hz: float, rng: np.random.Generator) -> np.ndarray:
    """Sorted event times (seconds) of a Poisson process with ``rate_hz`` events per second."""
    count = rng.poisson(max(rate_hz, 0.0) * duration_s)
    return np.sort(rng.uniform(0.0, duration_s, count))


def periodic_times(
    rate_hz: np.ndarray, sr: int, rng: np.random.Generator, jitter: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Times of a (possibly speed-varying) periodic process, e.g. balls hitting a spall.

    Args:
        rate_hz: events per second at each sample, shape ``(n,)``; 0 pauses the process.
        sr: sample rate in Hz.
        rng: random generator (random starting phase and timing jitter).
        jitter: standard deviation of the timing error as a fraction of the local period.

    Returns:
        ``(times_s, sample_index)``: event times in seconds (with jitter) and the sample index of
        each event's nominal time, both of shape ``(events,)``.
    """
    cycles = np.cumsum(rate_hz) / sr
    total = float(cycles[-1]) if cycles.size else 0.0
    nominal = np.arange(rng.uniform(0.0, 1.0), total, 1.0)
    idx = np.minimum(np.searchsorted(cycles, nominal), rate_hz.size - 1)
    period = 1.0 / np.maximum(rate_hz[idx], 1e-3)
    times = idx / sr + rng.normal(0.0, 1.0, idx.size) * jitter * period
    return times, idx


def swept_band_noise(
    n: int, sr: int, rng: np.random.Generator, centre_hz: np.ndarray, bandwidth_hz: float
) -> np.ndarray:
    """Noise band whose centre frequency follows ``centre_hz`` (Hz, shape ``(n,)``), unit RMS.

    Heterodyne construction: low-pass noise of half the bandwidth times a carrier that follows
    the centre frequency, one noise draw however the centre moves.
    """
    base = shaped_noise(n, sr, rng, lambda f: _lowpass_gain(f, bandwidth_hz / 2.0, 4))
    carrier = np.cos(phase_track(np.minimum(centre_hz, _MAX_FREQ_FRACTION * sr), sr, n, rng.uniform(0, TWO_PI)))
    return _unit_rms(base * carrier)


def body_gain(f: np.ndarray, resonances: Sequence[tuple[float, float, float]], floor: float) -> np.ndarray:
    """Amplitude response of a machine housing: a floor plus Lorentzian resonance peaks.

    Args:
        f: frequencies in Hz.
        resonances: ``(centre_hz, bandwidth_hz, peak_gain)`` triples.
        floor: gain away from resonances.
    """
    g = np.full(f.shape, floor)
    for fc, bw, peak in resonances:
        g += peak / (1.0 + ((f - fc) / bw) ** 2)
    # Microphone/air absorption: gentle roll-off at the top of the band.
    return g * _lowpass_gain(f, 6500.0, 2)


def apply_gain(y: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter ``y`` (shape ``(n,)``) by a zero-phase amplitude response ``gain(f_hz)`` via the FFT."""
    n = y.size
    f = np.fft.rfftfreq(n, 1.0 / sr)
    return sfft.irfft(sfft.rfft(y) * gain(f), n)


# --------------------------------------------------------------------------------------------
# Machine types
# --------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
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
        return list(self.rng.uniform(0.0, TWO_PI, k))


@dataclass
class _Rendered:
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
        fault_offset_db: added to every fault level of this machine (:data:`FAULT_LEVEL_DB`), to
            spread the difficulty over the machine types as in DCASE (some easy, some hard).
    """

    name: str
    description: str
    source_attributes: tuple[tuple[str, tuple[str, ...]], ...]
    target_attributes: tuple[tuple[str, tuple[str, ...]], ...]
    anomalies: tuple[str, ...]
    render: Callable[[_Ctx], _Rendered] = field(repr=False)
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


def _common_character(rng: np.random.Generator, res_range: tuple[float, float]) -> dict[str, Any]:
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


# ---- fan --------------------------------------------------------------------------------------


def _fan_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (400, 2500))
    c.update(blades=int(rng.choice([5, 7, 9, 11])), airflow_exp=float(rng.uniform(0.3, 0.8)))
    return c


def _render_fan(ctx: _Ctx) -> _Rendered:
    """Rotation harmonics, blade-pass tone, blade-modulated airflow noise, motor hum."""
    c, v, n, sr = ctx.char, ctx.values, ctx.n, ctx.sr
    spd, load = v["spd"], v["load"]
    rotor = spd * (1.0 - 0.01 * load) * ctx.speed  # back pressure slows the fan a little
    ph = phase_track(rotor, sr, n, ctx.rng.uniform(0, TWO_PI))
    fmax = float(rotor.max())
    rot = harmonic_tone(ph, [0.25, 0.12, 0.08, 0.05], ctx.rand_phases(4), f0_max_hz=fmax, sr=sr)
    b = c["blades"]
    bpf = harmonic_tone(b * ph, [1.0, 0.45, 0.2, 0.1], ctx.rand_phases(4), f0_max_hz=b * fmax, sr=sr)
    # More back pressure: a stronger blade-pass tone and a darker, rougher airflow.
    air = coloured_noise(n, sr, ctx.rng, c["airflow_exp"] + 0.15 * (load - 2.0), 80.0, 7000.0)
    # Turbulence is chopped by each passing blade.
    air *= 1.0 + 0.25 * np.cos(b * ph)
    hum = harmonic_tone(phase_track(100.0, sr, n, ctx.rng.uniform(0, TWO_PI)), [1.0, 0.4], ctx.rand_phases(2))
    y = (0.15 + 0.2 * load) * bpf + 0.5 * rot + (spd / 28.0) ** 2 * air + 0.08 * hum
    return _Rendered(y, rotor)


# ---- pump -------------------------------------------------------------------------------------


def _pump_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (300, 2000))
    c.update(
        vanes=int(rng.choice([5, 6, 7])),
        slots=int(rng.integers(28, 41)),
        flow_low=float(rng.uniform(120, 250)),
        flow_high=float(rng.uniform(2000, 3500)),
    )
    return c


def _render_pump(ctx: _Ctx) -> _Rendered:
    """Vane-pass pulsation (modulated at shaft rate), motor slot whine, mains hum, flow noise."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    spd, pres = v["spd"], v["pres"]
    rotor = spd * ctx.speed
    ph = phase_track(rotor, sr, n, rng.uniform(0, TWO_PI))
    fmax = float(rotor.max())
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
        fault = _unit_rms(struck(n, sr, times, amps, kernel))
    return _Rendered(y, rotor, fault)


# ---- valve ------------------------------------------------------------------------------------

#: Event patterns of one valve cycle: (fraction of the cycle period, "o"pen or "c"lose).
_VALVE_PATTERNS: dict[int, tuple[tuple[float, str], ...]] = {
    0: ((0.0, "o"), (0.5, "c")),
    1: ((0.0, "o"), (0.25, "c"), (0.5, "o"), (0.75, "c")),
    2: ((0.0, "o"), (0.15, "c"), (0.6, "o"), (0.7, "c")),
    3: ((0.0, "o"), (0.3, "c"), (0.45, "o"), (0.55, "c"), (0.7, "o"), (0.9, "c")),
    4: ((0.0, "o"), (0.8, "c")),
}


def _valve_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (800, 4000))
    c.update(
        open_modes=sorted(float(f) for f in rng.uniform(1500, 5000, 3)),
        close_modes=sorted(float(f) for f in rng.uniform(600, 3500, 3)),
        open_decays=[float(d) for d in rng.uniform(0.004, 0.015, 3)],
        close_decays=[float(d) for d in rng.uniform(0.006, 0.02, 3)],
        thud_hz=float(rng.uniform(150, 350)),
        air_low=float(rng.uniform(1500, 2500)),
    )
    return c


def _valve_events(ctx: _Ctx) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Event times (s), kinds (True = open) and amplitudes; applies the valve's own faults."""
    rng, dur = ctx.rng, ctx.duration
    pattern = _VALVE_PATTERNS[int(ctx.values["pat"])]
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
    ctx: _Ctx,
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


def _render_valve(ctx: _Ctx) -> _Rendered:
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
    return _Rendered(y, None)


# ---- slider -----------------------------------------------------------------------------------


def _slider_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (500, 3000))
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


def _render_slider(ctx: _Ctx) -> _Rendered:
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
    return _Rendered(y, rotor, fault)


# ---- gearbox ----------------------------------------------------------------------------------


def _gearbox_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (600, 3500))
    c.update(
        teeth=int(rng.integers(17, 26)),
        ratio=float(rng.uniform(3.0, 5.0)),
        segments=int(rng.choice([3, 5, 7])),
        gear_res_hz=float(rng.uniform(1500, 3500)),
    )
    return c


def _render_gearbox(ctx: _Ctx) -> _Rendered:
    """Gear mesh (teeth x shaft) with shaft-rate sidebands, DC motor commutation whine, brush noise."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    volt, wt = v["volt"], v["wt"]
    shaft = 9.0 * volt * (1.0 - 0.0006 * wt) * ctx.speed  # a DC motor slows under load
    ph = phase_track(shaft, sr, n, rng.uniform(0, TWO_PI))
    fmax = float(shaft.max())
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
        fault = _unit_rms(struck(n, sr, times, rng.uniform(0.8, 1.2, times.size), kernel))
    return _Rendered(y, shaft, fault)


# ---- bearing (test rig) ---------------------------------------------------------------------


def _bearing_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (1500, 5000))
    c.update(roll_hz=float(rng.uniform(2000, 4500)), roll_bw=float(rng.uniform(800, 2000)))
    return c


def _render_bearing(ctx: _Ctx) -> _Rendered:
    """Bearing test rig: shaft harmonics, rolling noise in the bearing resonance band with cage modulation."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    vel, load = v["vel"], v["load"]
    shaft = vel * ctx.speed
    ph = phase_track(shaft, sr, n, rng.uniform(0, TWO_PI))
    fmax = float(shaft.max())
    rot = harmonic_tone(ph, [1.0, 0.5, 0.3, 0.2, 0.1], ctx.rand_phases(5), f0_max_hz=fmax, sr=sr)
    lo, hi = c["roll_hz"] - c["roll_bw"] / 2, c["roll_hz"] + c["roll_bw"] / 2
    rolling = band_noise(n, sr, rng, lo, hi, order=2)
    rolling *= 1.0 + 0.15 * np.cos(c["ftf"] * ph)  # the cage carries the balls round
    broad = coloured_noise(n, sr, rng, 1.0, 50.0, 6000.0)
    hum = harmonic_tone(phase_track(100.0, sr, n, rng.uniform(0, TWO_PI)), [1.0, 0.3], ctx.rand_phases(2))
    y = 0.3 * rot + (0.2 + 0.4 * load) * (vel / 15.0) * rolling + 0.5 * broad + 0.15 * hum
    return _Rendered(y, shaft)


# ---- motor ------------------------------------------------------------------------------------


def _motor_character(rng: np.random.Generator) -> dict[str, Any]:
    c = _common_character(rng, (300, 2500))
    c.update(
        rotor_bars=int(rng.integers(26, 45)),
        fan_blades=int(rng.choice([6, 8, 10, 12])),
        pole_pairs=int(rng.choice([1, 2])),
    )
    return c


def _render_motor(ctx: _Ctx) -> _Rendered:
    """Induction motor: magnetic hum at twice the mains frequency, rotor-slot whine, cooling fan."""
    c, v, n, sr, rng = ctx.char, ctx.values, ctx.n, ctx.sr, ctx.rng
    line, load = v["line"], v["load"]
    slip = 0.01 + 0.012 * load
    shaft = line / c["pole_pairs"] * (1.0 - slip) * ctx.speed
    ph = phase_track(shaft, sr, n, rng.uniform(0, TWO_PI))
    fmax = float(shaft.max())
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
        fault = _unit_rms(hum * np.cos(beat))
    return _Rendered(y, shaft, fault)


# ---- registry ---------------------------------------------------------------------------------

_ROTATING_FAULTS = ("bearing", "imbalance", "rub", "drift")

#: Machine types by name. Every attribute value is written without ``_`` (it goes in file names).
MACHINES: dict[str, MachineType] = {
    m.name: m
    for m in (
        MachineType(
            name="fan",
            description="axial fan: blade-pass tone and rotation harmonics over airflow noise",
            source_attributes=(("spd", ("20", "24", "28")), ("load", ("1", "2", "3"))),
            target_attributes=(("spd", ("26",)), ("load", ("1", "2", "3"))),
            anomalies=_ROTATING_FAULTS,
            render=_render_fan,
            character=_fan_character,
        ),
        MachineType(
            name="pump",
            description="centrifugal pump: vane-pass pulsation, motor whine, flow noise",
            source_attributes=(("spd", ("24", "29")), ("pres", ("1", "2", "3"))),
            target_attributes=(("spd", ("34",)), ("pres", ("1", "2", "3"))),
            anomalies=("bearing", "imbalance", "leak", "cavitation", "drift"),
            render=_render_pump,
            character=_pump_character,
            fault_offset_db=3.0,  # the easy one
        ),
        MachineType(
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
        ),
        MachineType(
            name="slider",
            description="linear slide: friction noise sweeping with position, servo whine, end stops",
            source_attributes=(("vel", ("20", "30")), ("ac", ("1", "2"))),
            target_attributes=(("vel", ("25",)), ("ac", ("1", "2"))),
            anomalies=("rub", "stickslip", "bearing", "drift"),
            render=_render_slider,
            character=_slider_character,
        ),
        MachineType(
            name="gearbox",
            description="DC-motor gearbox: gear-mesh tone with shaft sidebands, commutator whine",
            source_attributes=(("volt", ("1", "1.3")), ("wt", ("0", "100", "200"))),
            target_attributes=(("volt", ("1.15",)), ("wt", ("0", "100", "200"))),
            anomalies=("tooth", "bearing", "imbalance", "drift"),
            render=_render_gearbox,
            character=_gearbox_character,
            fault_offset_db=-4.0,  # the hard one
        ),
        MachineType(
            name="bearing",
            description="bearing test rig: rolling noise in the bearing band, shaft harmonics",
            source_attributes=(("vel", ("10", "14", "18")), ("load", ("1", "2"))),
            target_attributes=(("vel", ("16",)), ("load", ("1", "2"))),
            anomalies=("outer", "inner", "ball", "imbalance"),
            render=_render_bearing,
            character=_bearing_character,
        ),
        MachineType(
            name="motor",
            description="induction motor: twice-mains hum, rotor-slot whine, cooling fan",
            source_attributes=(("line", ("50", "60")), ("load", ("1", "3"))),
            target_attributes=(("line", ("50", "60")), ("load", ("2",))),
            anomalies=("bearing", "imbalance", "rotorbar", "rub"),
            render=_render_motor,
            character=_motor_character,
        ),
    )
}

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


@lru_cache(maxsize=None)
def machine_character(machine: str) -> Mapping[str, Any]:
    """The fixed parameters of a machine type, derived from its name only (not from the seed).

    Read-only (shared between threads and calls).
    """
    ss = np.random.SeedSequence([zlib.crc32(b"stetho-toy-character"), zlib.crc32(machine.encode())])
    return MappingProxyType(MACHINES[machine].character(np.random.default_rng(ss)))


# --------------------------------------------------------------------------------------------
# Faults shared by rotating machines
# --------------------------------------------------------------------------------------------


def _bearing_fault(ctx: _Ctx, rotor_hz: np.ndarray, kind: str) -> np.ndarray:
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
    return _unit_rms(struck(n, sr, times, amps, kernel))


def _imbalance_fault(ctx: _Ctx, machine: np.ndarray, rotor_hz: np.ndarray) -> np.ndarray:
    """Imbalance: the whole machine sound is modulated once per revolution, and the structure
    radiates a low tone at the rotation rate (1x) and a weaker 2x."""
    n, sr, rng = ctx.n, ctx.sr, ctx.rng
    ph = phase_track(rotor_hz, sr, n, rng.uniform(0, TWO_PI))
    am = _unit_rms(machine * np.cos(ph))
    tone = _unit_rms(harmonic_tone(ph, [1.0, 0.3], ctx.rand_phases(2), f0_max_hz=float(rotor_hz.max()), sr=sr))
    return _unit_rms(am + 0.6 * tone)


def _rub_fault(ctx: _Ctx, rotor_hz: np.ndarray | None) -> np.ndarray:
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
        noise = _unit_rms(noise * (0.3 + 0.7 * contact**4))
    return noise * env


def _leak_fault(ctx: _Ctx) -> np.ndarray:
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


def _drift(ctx: _Ctx) -> np.ndarray:
    """Speed drift: a slow wobble (0.2-1 Hz) or a ramp of 1-6 % in the rotation rate, shape (n,)."""
    rng, t = ctx.rng, ctx.t()
    depth = rng.uniform(0.01, 0.06)
    if rng.random() < 0.5:
        return 1.0 + depth * np.sin(TWO_PI * rng.uniform(0.2, 1.0) * t + rng.uniform(0, TWO_PI))
    return 1.0 + depth * rng.choice([-1.0, 1.0]) * (t / max(ctx.duration, 1e-9) - 0.5) * 2.0


# --------------------------------------------------------------------------------------------
# One clip
# --------------------------------------------------------------------------------------------


#: How the target site's background differs: a browner slope (added to the power-spectrum
#: exponent) and a faint distant tonal source (amplitude relative to the noise). Kept mild on
#: purpose: with few target training clips a strong background change alone makes every target
#: clip look anomalous to a detector, which swamps the effect of the faults.
_TARGET_BG_TILT = 0.25
_TARGET_BG_TONE = 0.1
@dataclass(frozen=True)
class DomainShift:
    """How the target site differs from the source site, and how busy both factories are.

    Attributes:
        tilt: added to the background's power-spectrum exponent at the target site (browner).
        tone: amplitude of a distant tonal source at the target site, relative to its noise.
        extra_db: extra background level at the target site, relative to the machine, in dB.
        events_db: ``None`` for a steady background; else the range ``(low, high)`` in dB,
            relative to the machine, of non-stationary factory events (impacts, a passing
            vehicle, another machine switching on and off) drawn per clip at both sites, the
            target site with a different mix (:func:`factory_events`).
    """

    tilt: float
    tone: float
    extra_db: float
    events_db: tuple[float, float] | None = None


#: ``domain_shift`` settings. "mild" (default) is a little browner and has a faint hum at the
#: target site. "strong" is the DCASE situation the mild default avoids: the target site's
#: background alone makes its normal clips look anomalous to a detector of the source domain
#: (a third louder relative to the machine, much browner, an audible hum), so only a method that
#: adapts to the few target training clips keeps its target AUC. "factory" is "strong" plus what
#: DCASE 2021-2025 recordings have (they were mixed with noise recorded in real factories):
#: non-stationary events at both sites that vary from clip to clip, unrelated to the machine's
#: condition, which a detector has to learn to ignore.
DOMAIN_SHIFTS: dict[str, DomainShift] = {
    "mild": DomainShift(_TARGET_BG_TILT, _TARGET_BG_TONE, 0.0),
    "strong": DomainShift(0.8, 0.6, 6.0),
    "factory": DomainShift(0.8, 0.6, 6.0, events_db=(-20.0, -4.0)),
}


def _check_shift(domain_shift: str) -> DomainShift:
    try:
        return DOMAIN_SHIFTS[domain_shift]
    except KeyError:
        raise ConfigError(f"domain_shift must be one of {', '.join(DOMAIN_SHIFTS)}, got {domain_shift!r}") from None


def _background(
    n: int, sr: int, rng: np.random.Generator, char: Mapping[str, Any], domain: str, domain_shift: str = "mild",
) -> np.ndarray:
    """Factory background, unit RMS. The target site is browner and has a distant tonal source."""
    shift = _check_shift(domain_shift)
    if domain == SOURCE:
        exponent = char["bg_exponent"] + rng.uniform(-0.1, 0.1)
        y = coloured_noise(n, sr, rng, exponent, 30.0, 7500.0)
    else:
        exponent = char["bg_exponent"] + shift.tilt + rng.uniform(-0.1, 0.1)
        y = coloured_noise(n, sr, rng, exponent, 30.0, 7500.0)
        f = char["bg_hum_hz"] * rng.uniform(0.98, 1.02)
        ph = phase_track(f, sr, n, rng.uniform(0, TWO_PI))
        tone = harmonic_tone(ph, [1.0, 0.5, 0.25], f0_max_hz=f, sr=sr)
        y = y + shift.tone * _unit_rms(tone)
    y *= 1.0 + 0.1 * smooth_random(n, sr, rng, 0.3)  # slow level changes of the surroundings
    return _unit_rms(y)


def factory_events(n: int, sr: int, rng: np.random.Generator, domain: str) -> np.ndarray:
    """Non-stationary factory noise, unit RMS while anything happens, shape ``(n,)``.

    A random selection, per clip, of: metal impacts (damped modes at random times), a vehicle
    passing by (a noise band whose pitch falls as it passes, with a rise-and-fall envelope) and
    another machine running for part of the clip (a harmonic tone of random pitch, gated). Each
    is present with some probability and has its own level, so some clips are quiet and some
    busy. The target site has more impacts, a lower-pitched vehicle and a higher-pitched
    neighbouring machine. Nothing here depends on the machine or its condition.
    """
    dur = n / sr
    tgt = domain != SOURCE
    parts = []
    if rng.random() < 0.7:  # impacts: dropped parts, hammering, a press
        times = poisson_times(dur, rng.uniform(0.3, 1.5) * (2.0 if tgt else 1.0), rng)
        modes = rng.uniform(600, 5000, 3)
        kernel = resonance_kernel(sr, modes, rng.uniform(0.01, 0.06, 3), rng.uniform(0.3, 1.0, 3))
        parts.append(struck(n, sr, times, rng.lognormal(0.0, 0.6, times.size), kernel))
    if rng.random() < 0.5:  # a vehicle passing by
        t = np.arange(n) / sr
        t0, width = rng.uniform(0.0, dur), rng.uniform(0.5, 2.0)
        centre = (350.0 if tgt else 900.0) * rng.uniform(0.8, 1.25) * (1.0 - 0.15 * np.tanh((t - t0) / width))
        env = np.exp(-0.5 * ((t - t0) / width) ** 2)
        parts.append(swept_band_noise(n, sr, rng, centre, 300.0) * env)
    if rng.random() < 0.5:  # another machine switching on and off
        f0 = rng.uniform(150, 400) if tgt else rng.uniform(60, 150)
        ph = phase_track(f0 * (1.0 + 0.002 * smooth_random(n, sr, rng, 0.5)), sr, n, rng.uniform(0, TWO_PI))
        tone = harmonic_tone(ph, list(rng.uniform(0.2, 1.0, 6)), _rand_phases(rng, 6), f0_max_hz=f0, sr=sr)
        start, length = rng.uniform(-0.5 * dur, dur), rng.uniform(0.2, 1.0) * dur
        parts.append(tone * burst_envelope(n, sr, np.array([start]), np.array([length]), 0.05))
    if not parts:
        return np.zeros(n)
    levels = [db_to_gain(rng.uniform(-10.0, 0.0)) for _ in parts]
    return _unit_rms(sum(g * _unit_rms(p) for g, p in zip(levels, parts)))


def _rand_phases(rng: np.random.Generator, k: int) -> list[float]:
    """``k`` random starting phases in radians."""
    return list(rng.uniform(0.0, TWO_PI, k))


def synthesize_clip(
    machine: str,
    domain: str,
    anomaly: str | None,
    attributes: Mapping[str, Any],
    duration: float,
    sr: int,
    rng: np.random.Generator,
    domain_shift: str = "mild",
) -> np.ndarray:
    """Synthesise one recording of a machine.

    Args:
        machine: a key of :data:`MACHINES`.
        domain: ``"source"`` or ``"target"`` (sets the background noise).
        anomaly: ``None`` for a normal clip, else one of ``MACHINES[machine].anomalies``.
        attributes: value of every attribute of the machine, e.g. ``{"spd": "28", "load": "3"}``
            (strings or numbers; values outside the registered ones are allowed).
        duration: length in seconds.
        sr: sample rate in Hz (designed for 16 kHz; components are kept below 0.45 * sr).
        rng: the clip's random generator; the same generator state gives the same samples.
        domain_shift: how different the target site sounds: ``"mild"``, ``"strong"`` or
            ``"factory"`` (:data:`DOMAIN_SHIFTS`).

    Returns:
        float32 array of shape ``(round(duration * sr),)`` with values in [-1, 1].

    Raises:
        ConfigError: unknown machine, domain, anomaly kind or attribute, or bad duration/sr.
    """
    mtype = _machine_type(machine)
    if domain not in DOMAINS:
        raise ConfigError(f"unknown domain {domain!r}; expected one of {list(DOMAINS)}")
    if anomaly is not None and anomaly not in mtype.anomalies:
        raise ConfigError(f"unknown anomaly {anomaly!r} for {machine}; expected one of {list(mtype.anomalies)}")
    _check_duration_sr(duration, sr)
    missing = [a for a in mtype.attribute_names if a not in attributes]
    extra = [a for a in attributes if a not in mtype.attribute_names]
    if missing or extra:
        raise ConfigError(
            f"attributes of {machine} must be exactly {list(mtype.attribute_names)}; "
            f"missing {missing}, unexpected {extra}"
        )
    try:
        values = {a: float(attributes[a]) for a in mtype.attribute_names}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"attribute values of {machine} must be numbers: {dict(attributes)}") from exc
    if machine == "valve" and int(values["pat"]) not in _VALVE_PATTERNS:
        raise ConfigError(f"valve pattern must be one of {sorted(_VALVE_PATTERNS)}, got {attributes['pat']!r}")

    n = int(round(duration * sr))
    char = machine_character(machine)
    ctx = _Ctx(n=n, sr=sr, rng=rng, values=values, char=char, anomaly=anomaly, speed=np.ones(n))
    # Normal variation: each run is a little faster or slower, and the speed wanders slowly.
    ctx.speed = (1.0 + rng.uniform(-0.015, 0.015)) * (1.0 + 0.003 * smooth_random(n, sr, rng, 0.3))
    if anomaly == "drift":
        ctx.speed = ctx.speed * _drift(ctx)

    rendered = mtype.render(ctx)
    body = housing_response(char)
    y = _unit_rms(apply_gain(rendered.machine, sr, body))

    fault = rendered.fault
    rotor = rendered.rotor_hz
    if anomaly in ("bearing", "outer", "inner", "ball") and rotor is not None:
        fault = _bearing_fault(ctx, rotor, anomaly)
    elif anomaly == "imbalance" and rotor is not None:
        fault = _imbalance_fault(ctx, y, rotor)
    elif anomaly == "rub":
        fault = _rub_fault(ctx, rotor)
    elif anomaly == "leak":
        fault = _leak_fault(ctx)
    if fault is not None:
        lo, hi = FAULT_LEVEL_DB[anomaly]
        y = y + db_to_gain(rng.uniform(lo, hi) + mtype.fault_offset_db) * fault

    level = db_to_gain(mtype.level_dbfs + rng.uniform(-2.0, 2.0))  # +-2 dB from run to run
    bg_db = mtype.background_db[0 if domain == SOURCE else 1]
    if domain != SOURCE:
        bg_db += _check_shift(domain_shift).extra_db
    bg_gain = db_to_gain(bg_db + rng.uniform(-1.5, 1.5))
    out = y + bg_gain * _background(n, sr, rng, char, domain, domain_shift)
    events_db = _check_shift(domain_shift).events_db
    if events_db is not None:  # drawn last, so the other settings' files are unchanged
        out = out + db_to_gain(rng.uniform(*events_db)) * factory_events(n, sr, rng, domain)
    out = level * out
    peak = float(np.max(np.abs(out))) if n else 0.0
    if peak > 0.98:  # keep rare loud peaks (valve clicks) from clipping
        out *= 0.98 / peak
    return out.astype(np.float32)


def housing_response(char: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The housing response of a machine character, as a function of frequency in Hz."""
    return lambda f: body_gain(f, char["resonances"], char["floor"])


def _machine_type(machine: str) -> MachineType:
    try:
        return MACHINES[machine]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown machine {machine!r}; known machines: {', '.join(MACHINES)}") from None


def _check_duration_sr(duration: float, sr: int) -> None:
    if isinstance(duration, bool) or not isinstance(duration, Real) or not math.isfinite(duration) or duration <= 0:
        raise ConfigError(f"duration must be a positive number of seconds, got {duration!r}")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr < 8000:
        raise ConfigError(f"sr must be an integer sample rate of at least 8000 Hz, got {sr!r}")
    if int(round(duration * sr)) < 1:
        raise ConfigError(f"duration {duration!r} s is shorter than one sample at {sr} Hz")


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToyClipPlan:
    """What one file of the toy dataset will contain (known before any audio is made).

    Attributes:
        machine, split, domain: as in :class:`~stetho.datasets.clip.Clip`.
        label: 0 normal, 1 anomaly.
        index: the per-(domain, split, label) counter in the file name.
        attributes: ``(name, value)`` pairs in file-name order.
        anomaly: the fault kind of an anomalous clip (never written in the file name), else None.
        seed: the dataset seed.
    """

    machine: str
    split: str
    domain: str
    label: int
    index: int
    attributes: tuple[tuple[str, str], ...]
    anomaly: str | None
    seed: int

    @property
    def file_name(self) -> str:
        state = "anomaly" if self.label == ANOMALY else "normal"
        attrs = "".join(f"_{k}_{v}" for k, v in self.attributes)
        return f"section_{SECTION}_{self.domain}_{self.split}_{state}_{self.index:04d}{attrs}.wav"

    @property
    def relative_path(self) -> str:
        """``<machine>/<split>/<file name>``, as in ``attributes_00.csv``."""
        return f"{self.machine}/{self.split}/{self.file_name}"

    def rngs(self) -> tuple[np.random.Generator, np.random.Generator]:
        """(generator that picks the fault kind, generator that synthesises the audio)."""
        return _clip_rngs(self.seed, self.machine, self.split, self.domain, self.label, self.index)


def _crc(s: str) -> int:
    return zlib.crc32(s.encode("utf-8"))


def _clip_rngs(seed: int, machine: str, split: str, domain: str, label: int, index: int):
    ss = np.random.SeedSequence([seed, _crc(machine), _crc(split), _crc(domain), label, index])
    pick, audio = ss.spawn(2)
    return np.random.default_rng(pick), np.random.default_rng(audio)


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    if value > 9999:
        raise ConfigError(f"{name} must be at most 9999 (4-digit file counter), got {value!r}")
    return int(value)


def _resolve_machines(machines: Sequence[str] | None) -> list[str]:
    if machines is None:
        return list(MACHINES)
    if isinstance(machines, str):  # a lone name, not a sequence of characters
        machines = [machines]
    names: list[str] = []
    for m in machines:
        _machine_type(m)
        if m not in names:
            names.append(m)
    if not names:
        raise ConfigError(f"no machines given; known machines: {', '.join(MACHINES)}")
    return names


def plan_toy_dataset(
    machines: Sequence[str] | None = None,
    train_clips: int = 100,
    target_train_clips: int = 10,
    test_clips: int = 20,
    seed: int = 0,
) -> list[ToyClipPlan]:
    """The files :func:`make_toy_dataset` writes for these arguments, with each anomaly's kind.

    Attribute combinations are assigned round-robin per (domain, split, label), so every
    combination is covered evenly; anomaly kinds are drawn per clip from its own generator.
    Arguments as in :func:`make_toy_dataset`. Returns plans sorted by relative path.
    """
    names = _resolve_machines(machines)
    counts = {
        ("train", SOURCE, NORMAL): _check_count("train_clips", train_clips),
        ("train", TARGET, NORMAL): _check_count("target_train_clips", target_train_clips),
    }
    tc = _check_count("test_clips", test_clips)
    for dom in DOMAINS:
        for lab in (NORMAL, ANOMALY):
            counts[("test", dom, lab)] = tc
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    plans = []
    for m in names:
        mtype = MACHINES[m]
        for (split, dom, lab), count in counts.items():
            combos = mtype.combinations(dom)
            for i in range(count):
                kind = None
                if lab == ANOMALY:
                    pick, _ = _clip_rngs(int(seed), m, split, dom, lab, i)
                    kind = str(pick.choice(mtype.anomalies))
                plans.append(ToyClipPlan(m, split, dom, lab, i, combos[i % len(combos)], kind, int(seed)))
    return sorted(plans, key=lambda p: p.relative_path)


def render_plan(plan: ToyClipPlan, duration: float, sr: int, domain_shift: str = "mild") -> np.ndarray:
    """The audio of one planned file: float32, shape ``(round(duration * sr),)``."""
    _, audio_rng = plan.rngs()
    attrs = dict(plan.attributes)
    return synthesize_clip(plan.machine, plan.domain, plan.anomaly, attrs, duration, sr, audio_rng, domain_shift)


def make_toy_dataset(
    out: str | Path,
    machines: Sequence[str] | None = None,
    train_clips: int = 100,
    target_train_clips: int = 10,
    test_clips: int = 20,
    duration: float = 10.0,
    seed: int = 0,
    sr: int = 16000,
    progress: bool = False,
    domain_shift: str = "mild",
) -> list[Clip]:
    """Write a synthetic dataset in the DCASE2023 Task 2 development layout.

    Per machine type: ``train_clips`` source and ``target_train_clips`` target normal training
    clips, and ``test_clips`` clips for each of source-normal, source-anomaly, target-normal and
    target-anomaly in the test split, as 16-bit mono WAV, plus ``attributes_00.csv``. Files are
    identical byte for byte for the same arguments, and a machine's files do not depend on which
    other machines are generated with it. Toy-named WAV files already in ``OUT/<machine>/train``
    or ``test`` that are not part of this dataset (left from a bigger run) are deleted, so the
    folder always holds exactly this dataset.

    Args:
        out: output folder (created).
        machines: machine types (keys of :data:`MACHINES`); ``None`` means all.
        train_clips: source-domain normal training clips per machine.
        target_train_clips: target-domain normal training clips per machine.
        test_clips: test clips per (domain, label) per machine.
        duration: clip length in seconds.
        seed: dataset seed (non-negative integer).
        sr: sample rate in Hz.
        progress: show a progress bar (tqdm) on stderr.
        domain_shift: ``"mild"`` (default), ``"strong"`` or ``"factory"``: how much louder,
            browner and more humming the target site is, and whether factory events come and go
            at both sites (:data:`DOMAIN_SHIFTS`).

    Returns:
        The written clips, sorted by path.

    Raises:
        ConfigError: unknown machine, negative count, non-positive duration, bad seed or sr.
    """
    _check_duration_sr(duration, sr)
    _check_shift(domain_shift)
    plans = plan_toy_dataset(machines, train_clips, target_train_clips, test_clips, seed)
    out = Path(out)
    names = _resolve_machines(machines)
    for m in names:
        _remove_stale(out / m, {p.relative_path for p in plans if p.machine == m})
    log.info("writing %d toy clips (%s) to %s", len(plans), ", ".join(names), out)

    def work(plan: ToyClipPlan) -> None:
        write_wav(out / plan.relative_path, render_plan(plan, duration, sr, domain_shift), sr)

    # numpy and scipy release the GIL in the heavy parts, so threads use the cores; every clip has
    # its own generator, so the result does not depend on scheduling.
    workers = max(1, min(4, os.cpu_count() or 1))
    from tqdm import tqdm

    with ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(plans), disable=None if progress else True, desc="toy dataset", unit="clip"
    ) as bar:
        for _ in pool.map(work, plans):
            bar.update(1)

    for m in names:
        _write_attributes(out / m, [p for p in plans if p.machine == m])
    return sorted(
        (
            Clip(out / p.relative_path, p.machine, SECTION, p.split, p.domain, p.label, p.attributes)
            for p in plans
        ),
        key=lambda c: c.path,
    )


def _remove_stale(machine_dir: Path, keep: set[str]) -> None:
    """Delete toy-named WAVs of an earlier, different run from ``machine_dir/{train,test}``."""
    stale = []
    for split in ("train", "test"):
        folder = machine_dir / split
        if folder.is_dir():
            stale += [
                f
                for f in folder.iterdir()
                if FILE_NAME_RE.match(f.name) and f"{machine_dir.name}/{split}/{f.name}" not in keep
            ]
    for f in stale:
        f.unlink()
    if stale:
        log.info("removed %d toy file(s) of an earlier run from %s", len(stale), machine_dir)


def _write_attributes(machine_dir: Path, plans: Sequence[ToyClipPlan]) -> None:
    """Write ``attributes_00.csv`` (DCASE2023: ``file_name,d1p,d1v,d2p,d2v,...``), atomically."""
    width = max((len(p.attributes) for p in plans), default=len(MACHINES[machine_dir.name].attribute_names))
    header = ["file_name"] + [f"d{i}{s}" for i in range(1, width + 1) for s in ("p", "v")]
    rows = []
    for p in sorted(plans, key=lambda p: p.relative_path):
        cells = [x for kv in p.attributes for x in kv]
        rows.append([p.relative_path, *cells, *[""] * (2 * width - len(cells))])
    atomic_write_text(machine_dir / f"attributes_{SECTION}.csv", csv_text(rows, header=header))
