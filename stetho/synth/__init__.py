"""Deterministic synthetic machine sounds in the DCASE2023 Task 2 layout: stetho's toy data.

This is stetho's built-in data: the demo and the end-to-end tests run on it, so it has to be
fast, reproducible byte for byte, physically plausible and *realistically difficult* (a working
detector lands well above chance, not at 1.0, and the target domain is harder than the source).
It is a sound source, not a dataset layout: it writes files that :mod:`stetho.datasets` reads
like any DCASE2023 development set (:mod:`~stetho.synth.dataset` has the layout).

How a clip is made (:func:`synthesize_clip`, :mod:`~stetho.synth.recording`):

1. every machine type has a fixed *character* derived from its name only (blade/tooth/vane
   counts, bearing geometry, body resonances), so a seed changes the recordings, never the machine
   (:mod:`~stetho.synth.machines`);
2. its attributes (speed, load, pattern, ...) set the operating point; the target domain runs
   at operating points the source domain never uses (mostly between the source ones, as a new
   production setting would be), with few training clips;
3. normal variation per clip: speed jitter (about +-1.5 %) and slow wander, random phases, level
   +-2 dB, fresh noise;
4. an anomaly (test split only) adds a subtle fault sound a few dB to tens of dB below the machine
   (bearing impulse trains, imbalance modulation, rub bursts, leakage hiss, speed drift, broken
   tooth, cavitation, stick-slip squeal, rotor-bar beating) or, for valves, changes the event
   sequence (missing, extra, mistimed, sluggish events) (:mod:`~stetho.synth.faults`);
5. coloured background noise whose colour and level depend on the domain (the target site is a
   little louder and browner and has a faint distant tonal source; ``domain_shift="strong"``
   makes it much more so, ``"factory"`` adds impacts, vehicles and other machines that come and
   go at both sites, see :data:`DOMAIN_SHIFTS`, :mod:`~stetho.synth.domain_shift`).

The building blocks (noise, oscillators, impacts, envelopes) are in :mod:`~stetho.synth.signals`.

Difficulty was calibrated with a simple proxy detector (per machine: 5 stacked log-mel frames,
PCA reconstruction error; 100 source + 10 target training clips of 10 s, 20 test clips per
group): source AUC about 0.7-0.95 depending on the machine, target AUC lower on average but
above chance. Fault levels are drawn per clip over a wide range, so some anomalies are obvious
and some inaudible, as in real data. :func:`plan_toy_dataset` tells which fault each anomalous
file has (the file names, as in DCASE, do not).
"""

from __future__ import annotations

from stetho.synth.dataset import FILE_NAME_RE, SECTION, ToyClipPlan, make_toy_dataset, plan_toy_dataset, render_plan
from stetho.synth.domain_shift import DOMAIN_SHIFTS, DomainShift, factory_events
from stetho.synth.faults import FAULT_LEVEL_DB
from stetho.synth.machines import MACHINES, MachineType, machine_character
from stetho.synth.recording import housing_response, synthesize_clip
from stetho.synth.signals import db_to_gain, rms

__all__ = [
    "DOMAIN_SHIFTS", "FAULT_LEVEL_DB", "FILE_NAME_RE", "MACHINES", "SECTION", "DomainShift", "MachineType",
    "ToyClipPlan", "db_to_gain", "factory_events", "housing_response", "machine_character", "make_toy_dataset",
    "plan_toy_dataset", "render_plan", "rms", "synthesize_clip",
]
