"""Where the toy machines are recorded: the background of the source and the target site
(:func:`background_noise`), how different the target site is (:data:`DOMAIN_SHIFTS`) and the
non-stationary factory events of ``domain_shift="factory"`` (:func:`factory_events`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stetho.datasets.clip import SOURCE
from stetho.errors import ConfigError
from stetho.synth.signals import (
    TWO_PI,
    burst_envelope,
    coloured_noise,
    db_to_gain,
    harmonic_tone,
    phase_track,
    poisson_times,
    rand_phases,
    resonance_kernel,
    smooth_random,
    struck,
    swept_band_noise,
    unit_rms,
)

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


def check_shift(domain_shift: str) -> DomainShift:
    """The :class:`DomainShift` named ``domain_shift``; :class:`~stetho.errors.ConfigError` if unknown."""
    try:
        return DOMAIN_SHIFTS[domain_shift]
    except KeyError:
        raise ConfigError(f"domain_shift must be one of {', '.join(DOMAIN_SHIFTS)}, got {domain_shift!r}") from None


def background_noise(
    n: int, sr: int, rng: np.random.Generator, char: Mapping[str, Any], domain: str, domain_shift: str = "mild",
) -> np.ndarray:
    """Factory background, unit RMS. The target site is browner and has a distant tonal source."""
    shift = check_shift(domain_shift)
    if domain == SOURCE:
        exponent = char["bg_exponent"] + rng.uniform(-0.1, 0.1)
        y = coloured_noise(n, sr, rng, exponent, 30.0, 7500.0)
    else:
        exponent = char["bg_exponent"] + shift.tilt + rng.uniform(-0.1, 0.1)
        y = coloured_noise(n, sr, rng, exponent, 30.0, 7500.0)
        f = char["bg_hum_hz"] * rng.uniform(0.98, 1.02)
        ph = phase_track(f, sr, n, rng.uniform(0, TWO_PI))
        tone = harmonic_tone(ph, [1.0, 0.5, 0.25], f0_max_hz=f, sr=sr)
        y = y + shift.tone * unit_rms(tone)
    y *= 1.0 + 0.1 * smooth_random(n, sr, rng, 0.3)  # slow level changes of the surroundings
    return unit_rms(y)


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
        tone = harmonic_tone(ph, list(rng.uniform(0.2, 1.0, 6)), rand_phases(rng, 6), f0_max_hz=f0, sr=sr)
        start, length = rng.uniform(-0.5 * dur, dur), rng.uniform(0.2, 1.0) * dur
        parts.append(tone * burst_envelope(n, sr, np.array([start]), np.array([length]), 0.05))
    if not parts:
        return np.zeros(n)
    levels = [db_to_gain(rng.uniform(-10.0, 0.0)) for _ in parts]
    return unit_rms(sum(g * unit_rms(p) for g, p in zip(levels, parts)))
