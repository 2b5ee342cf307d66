"""One recording of a toy machine (:func:`synthesize_clip`): the machine at its operating point,
normal run-to-run variation, an optional fault, the site's background and level."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

import numpy as np

from stetho.datasets.clip import DOMAINS, SOURCE
from stetho.errors import ConfigError
from stetho.synth.domain_shift import background_noise, check_shift, factory_events
from stetho.synth.faults import FAULT_LEVEL_DB, bearing_fault, imbalance_fault, leak_fault, rub_fault, speed_drift
from stetho.synth.machines import machine_character, machine_type
from stetho.synth.machines.base import Ctx
from stetho.synth.machines.cyclic import VALVE_PATTERNS
from stetho.synth.signals import apply_gain, body_gain, db_to_gain, smooth_random, unit_rms


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
        machine: a key of :data:`~stetho.synth.machines.MACHINES`.
        domain: ``"source"`` or ``"target"`` (sets the background noise).
        anomaly: ``None`` for a normal clip, else one of ``MACHINES[machine].anomalies``.
        attributes: value of every attribute of the machine, e.g. ``{"spd": "28", "load": "3"}``
            (strings or numbers; values outside the registered ones are allowed).
        duration: length in seconds.
        sr: sample rate in Hz (designed for 16 kHz; components are kept below 0.45 * sr).
        rng: the clip's random generator; the same generator state gives the same samples.
        domain_shift: how different the target site sounds: ``"mild"``, ``"strong"`` or
            ``"factory"`` (:data:`~stetho.synth.domain_shift.DOMAIN_SHIFTS`).

    Returns:
        float32 array of shape ``(round(duration * sr),)`` with values in [-1, 1].

    Raises:
        ConfigError: unknown machine, domain, anomaly kind or attribute, or bad duration/sr.
    """
    mtype = machine_type(machine)
    if domain not in DOMAINS:
        raise ConfigError(f"unknown domain {domain!r}; expected one of {list(DOMAINS)}")
    if anomaly is not None and anomaly not in mtype.anomalies:
        raise ConfigError(f"unknown anomaly {anomaly!r} for {machine}; expected one of {list(mtype.anomalies)}")
    check_duration_sr(duration, sr)
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
    if machine == "valve" and int(values["pat"]) not in VALVE_PATTERNS:
        raise ConfigError(f"valve pattern must be one of {sorted(VALVE_PATTERNS)}, got {attributes['pat']!r}")

    n = int(round(duration * sr))
    char = machine_character(machine)
    ctx = Ctx(n=n, sr=sr, rng=rng, values=values, char=char, anomaly=anomaly, speed=np.ones(n))
    # Normal variation: each run is a little faster or slower, and the speed wanders slowly.
    ctx.speed = (1.0 + rng.uniform(-0.015, 0.015)) * (1.0 + 0.003 * smooth_random(n, sr, rng, 0.3))
    if anomaly == "drift":
        ctx.speed = ctx.speed * speed_drift(ctx)

    rendered = mtype.render(ctx)
    body = housing_response(char)
    y = unit_rms(apply_gain(rendered.machine, sr, body))

    fault = rendered.fault
    rotor = rendered.rotor_hz
    if anomaly in ("bearing", "outer", "inner", "ball") and rotor is not None:
        fault = bearing_fault(ctx, rotor, anomaly)
    elif anomaly == "imbalance" and rotor is not None:
        fault = imbalance_fault(ctx, y, rotor)
    elif anomaly == "rub":
        fault = rub_fault(ctx, rotor)
    elif anomaly == "leak":
        fault = leak_fault(ctx)
    if fault is not None:
        lo, hi = FAULT_LEVEL_DB[anomaly]
        y = y + db_to_gain(rng.uniform(lo, hi) + mtype.fault_offset_db) * fault

    level = db_to_gain(mtype.level_dbfs + rng.uniform(-2.0, 2.0))  # +-2 dB from run to run
    bg_db = mtype.background_db[0 if domain == SOURCE else 1]
    if domain != SOURCE:
        bg_db += check_shift(domain_shift).extra_db
    bg_gain = db_to_gain(bg_db + rng.uniform(-1.5, 1.5))
    out = y + bg_gain * background_noise(n, sr, rng, char, domain, domain_shift)
    events_db = check_shift(domain_shift).events_db
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



def check_duration_sr(duration: float, sr: int) -> None:
    """:class:`~stetho.errors.ConfigError` unless ``duration`` (s) and ``sr`` (Hz) make at least one sample."""
    if isinstance(duration, bool) or not isinstance(duration, Real) or not math.isfinite(duration) or duration <= 0:
        raise ConfigError(f"duration must be a positive number of seconds, got {duration!r}")
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr < 8000:
        raise ConfigError(f"sr must be an integer sample rate of at least 8000 Hz, got {sr!r}")
    if int(round(duration * sr)) < 1:
        raise ConfigError(f"duration {duration!r} s is shorter than one sample at {sr} Hz")

