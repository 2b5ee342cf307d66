"""Training checkpoints: fingerprints of what makes a training different, the state of every
object a training changes (networks, optimizers, generators, plain dicts) in a form
``torch.load(weights_only=True)`` reads back, and atomic writes of model and checkpoint files.

:meth:`stetho.models.training.Trainer.run` writes and resumes the checkpoints; the names are
importable from :mod:`stetho.models.training` too.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import io
import json
import os
import random
from collections.abc import Iterator
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stetho.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = 1


def fingerprint(*parts: Any) -> str:
    """A hex digest of ``parts``: hyper-parameters, data, anything that makes a training different.

    Understands ``None``, bools, numbers, strings, paths, mappings (key order ignored),
    sequences, dataclasses (e.g. :class:`~stetho.datasets.clip.Clip`), NumPy arrays and torch
    tensors (by dtype, shape and bytes). Anything else is a ``TypeError`` (its ``repr`` might
    hold a memory address and never match).
    """
    h = hashlib.blake2b(digest_size=16)

    def feed(x: Any) -> None:
        if x is None or isinstance(x, (bool, int, float, str, np.generic)):
            h.update(f"{type(x).__name__}:{x!r};".encode())
        elif isinstance(x, Path):
            h.update(f"path:{x};".encode())
        elif isinstance(x, torch.Tensor):
            feed(x.detach().cpu().numpy())
        elif isinstance(x, np.ndarray):
            a = np.ascontiguousarray(x)
            h.update(f"array:{a.dtype.str}:{a.shape};".encode())
            h.update(a.view(np.uint8).reshape(-1).data if a.dtype != object else repr(a.tolist()).encode())
        elif isinstance(x, Mapping):
            h.update(b"{")
            for k in sorted(x, key=repr):
                feed(k)
                feed(x[k])
            h.update(b"}")
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            h.update(f"{type(x).__name__}(".encode())
            for f in dataclasses.fields(x):
                feed(f.name)
                feed(getattr(x, f.name))
            h.update(b")")
        elif isinstance(x, (list, tuple, set, frozenset)):
            items = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
            h.update(b"[")
            for item in items:
                feed(item)
            h.update(b"]")
        else:
            raise TypeError(f"fingerprint: cannot digest a {type(x).__name__} (give its parameters instead)")

    feed(parts)
    return h.hexdigest()


_fingerprint = fingerprint  # Trainer.run's argument of the same name hides the function there

#: Constructor arguments that change how a training runs, not what it learns: left out of a
#: checkpoint's fingerprint by :func:`training_settings` (a resumed run may change them).
RUN_ONLY_PARAMS = frozenset({"progress", "threads", "device", "checkpoint_every", "resume", "keep_checkpoints"})


#: Environment variable: ``1`` keeps every training's checkpoints after it succeeds.
ENV_KEEP_CHECKPOINTS = "STETHO_KEEP_CHECKPOINTS"
_KEEP_CHECKPOINTS: contextvars.ContextVar[bool] = contextvars.ContextVar("stetho_keep_checkpoints", default=False)


@contextlib.contextmanager
def keeping_checkpoints(keep: bool = True) -> Iterator[None]:
    """Inside the block, trainings keep their checkpoint files after they succeed
    (``stetho train --keep-checkpoints``); by default a finished training deletes them and only the
    model files stay. A training that fails or is interrupted keeps its checkpoints either way
    (the same command resumes from them)."""
    token = _KEEP_CHECKPOINTS.set(bool(keep))
    try:
        yield
    finally:
        _KEEP_CHECKPOINTS.reset(token)


def keep_checkpoints_requested() -> bool:
    """True inside :func:`keeping_checkpoints` or with ``$STETHO_KEEP_CHECKPOINTS=1``."""
    env = os.environ.get(ENV_KEEP_CHECKPOINTS, "").strip().lower()
    return _KEEP_CHECKPOINTS.get() or env in ("1", "true", "yes", "on")


def training_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` (e.g. ``detector.get_params()``) without :data:`RUN_ONLY_PARAMS`: the part of
    a checkpoint's fingerprint that the hyper-parameters give."""
    return {k: v for k, v in params.items() if k not in RUN_ONLY_PARAMS}


def _encode(x: Any) -> Any:
    """Plain state → what ``torch.load(weights_only=True)`` reads back (NumPy arrays as tensors)."""
    if isinstance(x, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.array(x))}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Mapping):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_encode(v) for v in x)
    if x is None or isinstance(x, (bool, int, float, str, torch.Tensor)):
        return x
    raise TypeError(f"checkpoint state: cannot store a {type(x).__name__} (use tensors, numbers, strings, "
                    "NumPy arrays, and lists or dicts of them)")


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"__ndarray__"}:
            return x["__ndarray__"].numpy()
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_decode(v) for v in x)
    return x


def _state_kind(name: str, obj: Any) -> str:
    if isinstance(obj, torch.Generator):
        return "torch_generator"
    if isinstance(obj, np.random.Generator):
        return "numpy_generator"
    if isinstance(obj, random.Random):
        return "python_random"
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return "state_dict"
    if callable(getattr(obj, "get_state", None)) and callable(getattr(obj, "set_state", None)):
        return "get_state"
    if isinstance(obj, MutableMapping):
        return "dict"
    raise TypeError(f"checkpoint state '{name}': a {type(obj).__name__} has no state to save (give an object "
                    "with state_dict/load_state_dict or get_state/set_state, a generator, or a dict)")


def _python_state(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _get_state(kind: str, obj: Any) -> Any:
    if kind == "torch_generator":
        return obj.get_state()
    if kind == "numpy_generator":
        return json.dumps(obj.bit_generator.state)  # 128-bit integers: kept exact as JSON text
    if kind == "python_random":
        return _python_state(obj.getstate())
    if kind == "state_dict":
        return obj.state_dict()
    if kind == "get_state":
        return _encode(obj.get_state())
    return _encode(dict(obj))


def _set_state(kind: str, obj: Any, state: Any) -> None:
    if kind == "torch_generator":
        obj.set_state(state)
    elif kind == "numpy_generator":
        obj.bit_generator.state = json.loads(state)
    elif kind == "python_random":
        obj.setstate((state["version"], tuple(state["internal"].tolist()), state["gauss"]))
    elif kind == "state_dict":
        obj.load_state_dict(state)
    elif kind == "get_state":
        obj.set_state(_decode(state))
    else:
        obj.clear()
        obj.update(_decode(state))


def _global_rng_states() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "python": _python_state(random.getstate()),
    }


def _set_global_rng_states(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"].tolist()), p["gauss"]))


def _structure(state: Mapping[str, Any], kinds: Mapping[str, str]) -> list:
    """Names, kinds and (for modules) parameter shapes: a checkpoint of another architecture
    never matches."""
    out = []
    for name in sorted(state):
        obj = state[name]
        shapes = ([(k, list(v.shape)) for k, v in obj.state_dict().items()]
                  if isinstance(obj, torch.nn.Module) else None)
        out.append((name, kinds[name], type(obj).__name__, shapes))
    return out


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` of ``obj`` to ``path`` atomically (:func:`stetho.fileio.atomic_write_bytes`:
    a temporary file, fsync, rename): never a half-written model or checkpoint, and a full or
    read-only disk is a one-line :class:`~stetho.errors.StorageError` ("disk full: ...") with
    the previous file left as it was.

    The object is serialised in memory first (a model file is a few MB): ``torch.save`` to a
    file name writes from C++, where a full disk surfaces as a ``RuntimeError`` without its errno.
    """
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())
