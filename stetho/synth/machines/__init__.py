"""The toy synthesiser's machine types: :data:`MACHINES` by name, and each type's fixed character.

One module per family: :mod:`~stetho.synth.machines.rotating` (fan, pump, gearbox, bearing, motor)
and :mod:`~stetho.synth.machines.cyclic` (valve, slider), on the types of
:mod:`~stetho.synth.machines.base`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np

from stetho.errors import ConfigError
from stetho.synth.machines.base import Ctx, MachineType, Rendered
from stetho.synth.machines.cyclic import SLIDER, VALVE
from stetho.synth.machines.rotating import BEARING, FAN, GEARBOX, MOTOR, PUMP

__all__ = ["MACHINES", "Ctx", "MachineType", "Rendered", "machine_character", "machine_type"]

#: Machine types by name. Every attribute value is written without ``_`` (it goes in file names).
MACHINES: dict[str, MachineType] = {m.name: m for m in (FAN, PUMP, VALVE, SLIDER, GEARBOX, BEARING, MOTOR)}


@lru_cache(maxsize=None)
def machine_character(machine: str) -> Mapping[str, Any]:
    """The fixed parameters of a machine type, derived from its name only (not from the seed).

    Read-only (shared between threads and calls).
    """
    ss = np.random.SeedSequence([zlib.crc32(b"stetho-toy-character"), zlib.crc32(machine.encode())])
    return MappingProxyType(MACHINES[machine].character(np.random.default_rng(ss)))


def machine_type(machine: str) -> MachineType:
    """The registered type of ``machine``; :class:`~stetho.errors.ConfigError` if there is none."""
    try:
        return MACHINES[machine]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown machine {machine!r}; known machines: {', '.join(MACHINES)}") from None
