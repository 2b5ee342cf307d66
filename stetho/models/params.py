"""Declared hyper-parameter constraints (scikit-learn's ``_parameter_constraints`` idea).

Every detector declares, for each constructor argument, the values it accepts; the base class
checks them before any audio is decoded (``Detector.check_params``), so ``validation_split=1.5``,
``epochs=0`` or an unknown backend name is a one-line :class:`~stetho.errors.ConfigError` naming
the parameter and its allowed values, whether it came from the CLI, a recipe or the Python API.

A constraint list accepts a value when any of its entries does::

    _parameter_constraints = {
        "epochs": [Interval(int, 1, None)],
        "validation_split": [Interval(float, 0, 1, closed="left")],
        "score_mode": [Options("mse", "mahalanobis")],
        "pseudo_label_clusters": [Interval(int, 1, None), None],
        "branches": [SequenceOf(str, min_len=1)],
    }
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stetho.errors import ConfigError


class Constraint:
    """One kind of value a parameter accepts."""

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


@dataclass(frozen=True)
class Interval(Constraint):
    """A number of ``kind`` (``int`` or ``float``; a float parameter also takes ints) in the
    interval from ``low`` to ``high`` (``None``: unbounded); ``closed`` is ``"both"``,
    ``"left"``, ``"right"`` or ``"neither"``. NaN and ±infinity are never inside (an unbounded
    side means any finite number: no hyper-parameter works with ``lr=inf``)."""

    kind: type
    low: float | None
    high: float | None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if self.kind is int:
            if not _is_int(value):
                return False
        elif not _is_real(value):
            return False
        try:
            v = float(value)
        except OverflowError:  # an int beyond float range (10**400): no bound holds it
            return self.low is None and self.high is None
        if not math.isfinite(v):
            return False
        left_closed = self.closed in ("both", "left")
        right_closed = self.closed in ("both", "right")
        if self.low is not None and (v < self.low or (v == self.low and not left_closed)):
            return False
        if self.high is not None and (v > self.high or (v == self.high and not right_closed)):
            return False
        return True

    def describe(self) -> str:
        name = "an integer" if self.kind is int else "a number"
        fmt = (lambda x: str(int(x))) if self.kind is int else (lambda x: f"{x:g}")  # noqa: E731 - exact ints
        if self.low is None and self.high is None:
            return name
        if self.high is None:
            return f"{name} {'>=' if self.closed in ('both', 'left') else '>'} {fmt(self.low)}"
        if self.low is None:
            return f"{name} {'<=' if self.closed in ('both', 'right') else '<'} {fmt(self.high)}"
        lb = "[" if self.closed in ("both", "left") else "("
        rb = "]" if self.closed in ("both", "right") else ")"
        return f"{name} in {lb}{fmt(self.low)}, {fmt(self.high)}{rb}"


class Options(Constraint):
    """One of a fixed set of values (strings are compared exactly)."""

    def __init__(self, *values: Any) -> None:
        self.values = tuple(values)

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (str, bool, numbers.Number)) and any(
            type(value) is type(v) and value == v for v in self.values)

    def describe(self) -> str:
        return "one of " + ", ".join(str(v) for v in self.values)


class Boolean(Constraint):
    """``True`` or ``False``."""

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class String(Constraint):
    """Any non-empty string (a file path, a name ...)."""

    what: str = "a non-empty string"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and bool(value)

    def describe(self) -> str:
        return self.what


@dataclass(frozen=True)
class SequenceOf(Constraint):
    """A list or tuple whose items each satisfy ``item`` (a type or a :class:`Constraint`),
    with at least ``min_len`` and at most ``max_len`` items."""

    item: Any
    min_len: int = 0
    max_len: int | None = None

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            return False
        if len(value) < self.min_len or (self.max_len is not None and len(value) > self.max_len):
            return False
        check = self.item.accepts if isinstance(self.item, Constraint) else (
            lambda v: _is_int(v) if self.item is int else isinstance(v, self.item))
        return all(check(v) for v in value)

    def describe(self) -> str:
        what = self.item.describe() if isinstance(self.item, Constraint) else self.item.__name__
        n = f"{self.min_len}+" if self.max_len is None else f"{self.min_len}-{self.max_len}"
        return f"a list of {n} items, each {what}"


@dataclass(frozen=True)
class Check(Constraint):
    """A value for which ``predicate`` is true; ``description`` says which in words."""

    predicate: Callable[[Any], bool]
    description: str

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except Exception:  # noqa: BLE001 - a predicate failing on a strange value rejects it
            return False

    def describe(self) -> str:
        return self.description


def describe(constraints: Sequence[Constraint | None]) -> str:
    """The allowed values of a constraint list, in words."""
    return " or ".join("null" if c is None else c.describe() for c in constraints)


def validate_params(
    owner: str, params: Mapping[str, Any], constraints: Mapping[str, Sequence[Constraint | None]],
) -> None:
    """Raise :class:`ConfigError` for the first parameter whose value no constraint accepts.

    The message names the owner (model), the parameter, its value and what is allowed, e.g.
    ``ae: params.validation_split=1.5 is not allowed; expected a number in [0, 1)``.
    """
    for name, value in params.items():
        allowed = constraints.get(name)
        if allowed is None:
            continue
        if any((c is None and value is None) or (c is not None and c.accepts(value)) for c in allowed):
            continue
        note = " (a finite one)" if _is_real(value) and not _is_int(value) and not math.isfinite(float(value)) else ""
        raise ConfigError(f"{owner}: params.{name}={value!r} is not allowed; expected {describe(allowed)}{note}")


#: Largest seed: NumPy's legacy ``np.random.seed`` and scikit-learn take seeds in [0, 2**32 - 1];
#: torch's generators overflow beyond 2**64 - 1 (``seed=10**20`` crashed in ``manual_seed``).
MAX_SEED = 2**32 - 1

#: The ``seed`` constraint every detector declares.
SEED = Interval(int, 0, MAX_SEED)

#: The ``device`` constraint: the spelling only; whether CUDA is there is checked by
#: :func:`stetho.models.training.resolve_device` (called by ``Detector.check_params``).
DEVICE = Check(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v) is not None,
               "auto, cpu, cuda or cuda:N")


__all__ = ["DEVICE", "MAX_SEED", "SEED", "Boolean", "Check", "Constraint", "Interval", "Options", "SequenceOf", "String",
           "describe", "validate_params"]
