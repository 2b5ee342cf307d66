"""Model files: :meth:`~stetho.models.base.Detector.save` and ``load`` (format version 2), and
moving a loaded detector's networks to a device.

A file is a ``torch.save`` of ``{"format", "version", "model", "params", "base", "state"}``:
the registry name, the constructor parameters, the base class's learnt state (machine types,
thresholds, decision scores, calibration clips) and the method's own (``_get_state``). It is
written atomically, never with NaN/inf, and read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stetho.errors import ConfigError, StethoError
from stetho.models.checkpoints import atomic_torch_save
from stetho.models.runtime import resolve_device

if TYPE_CHECKING:
    from stetho.models.base import Detector

log = logging.getLogger(__name__)

FORMAT = "stetho-detector"
#: Version 2: base-owned decision scores and ``thresholds_[mode][machine]`` (stetho 0.2.0).
FORMAT_VERSION = 2
FORMAT_SINCE = "0.2.0"



def cpu_weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``net`` on the CPU, as a model file stores them (``_get_state``)."""
    return {k: v.cpu() for k, v in net.state_dict().items()}


def plain_history(history: Mapping[str, Sequence]) -> dict[str, list]:
    """A training history ``{column: values per epoch}`` as plain lists (saved and loaded)."""
    return {k: list(v) for k, v in history.items()}


class Persistence:
    """Saving, loading and moving a fitted detector (a base of :class:`~stetho.models.base.Detector`,
    which supplies ``name``, ``get_params``, ``check_params``, ``_check_fitted`` and the
    method's ``_get_state`` / ``_set_state``)."""

    def _restore_net(self, net: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> torch.nn.Module:
        """``net`` with the saved ``weights`` loaded, on the detector's device, in eval mode
        (``_set_state``)."""
        net.load_state_dict(weights)
        return net.to(resolve_device(self.device)).eval()

    def _base_state(self) -> dict[str, Any]:
        return {
            "machines": list(self.machines_),
            "thresholds": {m: dict(v) for m, v in self.thresholds_.items()},
            "decision_scores": {m: torch.from_numpy(np.asarray(s, dtype=np.float64))
                                for m, s in self.decision_scores_.items()},
            "calibration": {k: list(v) for k, v in self.calibration_.items()},
        }

    def save(self, path: str | Path) -> None:
        """Write the detector (parameters + learnt state) to ``path`` atomically.

        A detector with a non-finite threshold, decision score or weight is never written
        (:class:`~stetho.errors.StethoError`); a full or read-only disk is a
        :class:`~stetho.errors.StorageError` and leaves the previous file as it was.
        """
        self._check_fitted()
        base, state = self._base_state(), self._get_state()
        bad = _non_finite({"thresholds": base["thresholds"], "decision_scores": base["decision_scores"],
                           "state": state})
        if bad:
            raise StethoError(f"{self.name}: not saved to {path}: {', '.join(bad[:3])} hold NaN/inf "
                              "(the training diverged)")
        atomic_torch_save(
            {"format": FORMAT, "version": FORMAT_VERSION, "model": self.name,
             "params": self.get_params(), "base": base, "state": state},
            path,
        )

    @classmethod
    def load(cls, path: str | Path, device: str | None = None) -> "Detector":
        """Read a detector written by :meth:`save` (any registered kind when called on the base).

        Args:
            path: the model file. ``torch.load`` reads it with ``weights_only=True`` (no code in
                a crafted file runs) and ``map_location="cpu"`` (a file written on a GPU loads on
                a machine without one); the networks are then moved to ``device``.
            device: where the networks score: ``None`` keeps the device the model was trained
                with when it is usable here and falls back to the CPU otherwise (a model trained
                on CUDA loads on a machine without CUDA); ``"auto"``, ``"cpu"``, ``"cuda"``,
                ``"cuda:N"`` use that one (:class:`~stetho.errors.ConfigError` when it is not
                there). :meth:`set_device` moves a loaded detector later.

        Raises:
            StethoError: one line naming ``path`` for a missing, truncated, foreign, damaged or
                crafted file: not a torch file, another format or version, a missing entry,
                an unknown or invalid parameter, NaN/inf weights, a state that does not fit.
        """
        path = Path(path)
        if device is not None:
            resolve_device(device)  # an unusable --device: its own one-line error, before reading
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise StethoError(f"{path}: model file does not exist") from None
        except IsADirectoryError:
            raise StethoError(f"{path}: is a folder, not a model file") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds
            raise StethoError(f"{path}: not a stetho model file, or a truncated or damaged one "
                              f"({_one_line(exc)})") from None
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise StethoError(f"{path}: not a stetho model file")
        version = blob.get("version")
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise StethoError(f"{path}: written by an older stetho (model format {version}, before the "
                              f"calibrated thresholds); re-train with stetho >= {FORMAT_SINCE}")
        if version != FORMAT_VERSION:
            raise StethoError(f"{path}: model format version {version!r}, this stetho reads {FORMAT_VERSION}; "
                              "upgrade stetho")
        try:
            return cls._from_blob(blob, path, device)
        except StethoError as exc:
            text = str(exc)
            raise StethoError(text if text.startswith(str(path)) else f"{path}: {text}") from None
        except Exception as exc:  # noqa: BLE001 - a crafted or damaged file fails anywhere in _set_state
            what = (f"the entry {exc.args[0]!r} is missing" if isinstance(exc, KeyError) and exc.args
                    else _one_line(exc))
            raise StethoError(f"{path}: damaged or foreign model file ({what}); re-train") from None

    @classmethod
    def _from_blob(cls, blob: dict, path: Path, device: str | None) -> "Detector":
        """The detector of a loaded file's ``blob`` (see :meth:`load`)."""
        from stetho.models import get_model  # registry lives in the package

        name = blob["model"]
        if not isinstance(name, str):
            raise StethoError(f"its model name is a {type(name).__name__}, not a name")
        kind = get_model(name)
        if not issubclass(kind, cls):  # Detector.load reads every registered kind
            raise StethoError(f"holds a '{name}' model, not '{cls.name}'")
        params = blob["params"]
        if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
            raise StethoError("its parameters are not a table of names and values")
        unknown = sorted(set(params) - set(kind.param_defaults()))
        if unknown:
            raise StethoError(f"parameter(s) {', '.join(unknown)} unknown to this stetho's '{name}' (written by "
                              "another version, or edited); re-train")
        params = dict(params)
        if "device" in params:
            params["device"] = _load_device(params["device"], device, path)
        det = kind(**params)
        det.check_params()  # a crafted value (lr="x", epochs=-3) is named like a recipe's
        bad = _non_finite({"state": blob["state"], "base": blob["base"]})
        if bad:
            raise StethoError(f"weights contain NaN/inf ({', '.join(bad[:3])}): the file is damaged or the "
                              "training diverged; re-train")
        base = blob["base"]
        det.machines_ = list(base["machines"])  # before _set_state: a method may use it
        det._set_state(blob["state"])
        det.thresholds_ = {m: {k: float(v) for k, v in per.items()} for m, per in base["thresholds"].items()}
        det.decision_scores_ = {m: s.numpy() for m, s in base["decision_scores"].items()}
        det.calibration_ = {k: list(v) for k, v in base["calibration"].items()}
        missing = [m for m in det.score_modes if m not in det.thresholds_]
        if missing:  # a score mode added to the method after this file was written
            raise StethoError(f"no thresholds for score mode(s) {', '.join(missing)} (added to "
                              f"'{det.name}' after this model was trained); re-train")
        return det

    def set_device(self, device: str) -> "Detector":
        """Score on ``device`` from now on (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``): sets
        :attr:`device` and moves every network of the fitted detector there. An unusable device
        is a :class:`~stetho.errors.ConfigError` (see :func:`~stetho.models.training.resolve_device`)."""
        target = resolve_device(device)
        self.device = device

        def move(x: Any) -> None:  # modules move in place; containers are walked
            if isinstance(x, torch.nn.Module):
                x.to(target)
            elif isinstance(x, (list, tuple)):
                for v in x:
                    move(v)
            elif isinstance(x, dict):
                for v in x.values():
                    move(v)

        for attr, value in vars(self).items():
            if attr.endswith("_") and not attr.startswith("_"):
                move(value)
        return self



def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (torch's unpickler messages run over many lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _non_finite(tree: Any, prefix: str = "") -> list[str]:
    """Names (``state.net.encoder.0.weight``) of the floating tensors and arrays in ``tree``
    (nested dicts and lists) that hold NaN or inf, and of the thresholds that are NaN or inf."""
    out: list[str] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _non_finite(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(tree, (list, tuple)):
        if tree and all(isinstance(v, (int, float)) for v in tree):
            return out  # histories: NaN marks epochs without validation
        for i, v in enumerate(tree):
            out += _non_finite(v, f"{prefix}[{i}]")
    elif isinstance(tree, torch.Tensor):
        if tree.is_floating_point() and not bool(torch.isfinite(tree).all()):
            out.append(prefix)
    elif isinstance(tree, np.ndarray):
        if np.issubdtype(tree.dtype, np.floating) and not np.isfinite(tree).all():
            out.append(prefix)
    elif isinstance(tree, float) and prefix.startswith(("thresholds", "base.thresholds")) and not np.isfinite(tree):
        out.append(prefix)  # other plain numbers may be inf by design (BiGAN's diversity of constant data)
    return out


def _load_device(stored: Any, asked: str | None, path: Path) -> Any:
    """The device a loaded detector scores on: ``asked`` when given, else the one it was trained
    with when it is usable here, else the CPU (with a log line)."""
    if asked is not None:
        return asked
    if not isinstance(stored, str):
        return stored  # check_params names it
    try:
        resolve_device(stored)
    except ConfigError:
        log.info("%s: trained on device %s, which is not available here: scoring on the CPU", path, stored)
        return "cpu"
    return stored
