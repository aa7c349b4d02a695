"""Loading checkpoints and trained methods safely: tensors and plain data only
(``torch.load(weights_only=True)``).

A checkpoint is a pickle, and unpickling can run any code the file names. Every checkpoint robustrep
reads (``--ckpt_path``, ``analyze --ckpt``, ``Distill(init_from=...)``) goes through
:func:`load_checkpoint` or Lightning with ``weights_only=True``; a file holding anything else is
refused with :class:`UnsafeCheckpointError` instead of being executed.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import torch

from robustrep.errors import ConfigError, RobustRepError


class UnsafeCheckpointError(RobustRepError):
    """A checkpoint holds Python objects that are not tensors or plain data."""


def refused_message(path: str | Path, err: BaseException | None = None) -> str:
    detail = ""
    if err is not None:
        lines = [
            ln.strip()
            for ln in str(err).splitlines()
            if "Unsupported global" in ln or "GLOBAL" in ln
        ]
        detail = f" ({lines[0]})" if lines else ""
    return (
        f"refused to load {path}: it contains Python objects other than tensors and plain "
        f"data{detail}, and unpickling them could run code. robustrep reads checkpoints with "
        "torch.load(weights_only=True); use checkpoints written by robustrep / Lightning, or "
        "re-save a trusted file's state_dict with torch.save."
    )


def is_unsafe_load_error(err: BaseException) -> bool:
    """True when ``err`` (or its cause) is torch's refusal of a non-weights pickle."""
    while err is not None:
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors for a missing or unsafe file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if is_unsafe_load_error(err):
            raise UnsafeCheckpointError(refused_message(path, err)) from err
        raise ConfigError(f"{path} is not a readable checkpoint ({err})") from err


def import_class(path: str) -> type:
    """The class a dotted path names (``robustrep.methods.ERM``; a bare name is looked up in
    ``robustrep.methods``, ``robustrep.data`` and ``robustrep.callbacks``)."""
    module, _, name = path.rpartition(".")
    if not module:
        for package in ("robustrep.methods", "robustrep.data", "robustrep.callbacks"):
            mod = importlib.import_module(package)
            if hasattr(mod, name):
                return getattr(mod, name)
        raise ConfigError(f"cannot resolve the class {path!r}; give its full class_path")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {path!r}: {err}") from err


def load_model(ckpt: str | Path, cls: type | str | None = None) -> Any:
    """A trained method (in eval mode) from a Lightning checkpoint, loaded with
    ``weights_only=True``.

    Args:
        ckpt: the checkpoint file.
        cls: the LightningModule class (or its dotted path); None = the class ``robustrep fit``
            recorded in the checkpoint's hyperparameters.
    """
    meta = load_checkpoint(ckpt)
    if cls is None:
        cls = (meta.get("hyper_parameters") or {}).get("_class_path")
        if cls is None:
            raise ConfigError(
                f"{ckpt} does not record its model class (hyper_parameters._class_path); was "
                "it written by `robustrep fit`?"
            )
    model_class = import_class(cls) if isinstance(cls, str) else cls
    model = model_class.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    model.eval()
    return model
