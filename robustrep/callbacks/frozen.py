"""The base of the callbacks that evaluate frozen ``embed`` features (linear probe, coarse-to-fine,
kNN): a shared schedule, and a feature cache the callbacks own (one per trainer, freed after each
evaluation), so several of them embed each set once."""

from __future__ import annotations

import inspect
import weakref
from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch

from robustrep.callbacks.schedule import validation_due
from robustrep.errors import ConfigError
from robustrep.evaluation.features import extract_features

#: The per-example keys kept beside the features.
FEATURE_KEYS = ("label", "group", "fine_label", "attribute")
#: trainer -> {"stamp": (stage, step, epoch), set name: features}
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class FrozenFeatureEvaluation(pl.Callback, ABC):
    """Shared schedule of the callbacks that evaluate frozen ``embed`` features (probe, kNN, c2f).

    Subclasses implement ``compute(trainer, pl_module, stage) -> {metric name: value}``; this base
    checks the model and datamodule in ``setup``, runs ``compute`` on the validation sets every
    ``every_n_epochs`` epochs and at test time, logs the values and keeps the last ones in
    checkpoints.
    """

    every_n_epochs: int = 0

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        """The class name, plus the metric prefix where it is not the default one, so several
        evaluations of one kind (e.g. a label probe and a colour probe) keep separate states."""
        prefix = getattr(self, "prefix", None)
        default = inspect.signature(type(self)).parameters.get("prefix")
        if prefix is None or default is None or prefix == default.default:
            return super().state_key
        return self._generate_state_key(prefix=prefix)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "embed", None)):
            raise ConfigError(
                f"{type(self).__name__} needs a model with an `embed(images)` method; "
                f"{type(pl_module).__name__} has none"
            )
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_eval_dataloader"):
            raise ConfigError(
                f"{type(self).__name__} needs a robustrep datamodule (with train_eval_dataloader)"
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not validation_due(trainer, self.every_n_epochs):
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _CACHES.pop(trainer, None)  # free the features shared by these callbacks

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _CACHES.pop(trainer, None)

    def features(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, make_loader
    ) -> dict[str, torch.Tensor]:
        """``extract_features`` of the set ``name`` (``train``, ``test/original``, ...), shared by
        every frozen-feature callback of this trainer at this point of training: the linear probe
        and the coarse-to-fine probe embed the training set once, not twice."""
        stamp = (trainer.state.stage, trainer.global_step, trainer.current_epoch)
        cache = _CACHES.setdefault(trainer, {})
        if cache.get("stamp") != stamp:
            cache.clear()
            cache["stamp"] = stamp
        if name not in cache:
            cache[name] = extract_features(pl_module, make_loader(), FEATURE_KEYS)
        return cache[name]

    @abstractmethod
    def compute(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> dict[str, float]:
        """The metrics of ``stage`` (``val`` or ``test``), ``{name: value}``."""

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        values = self.compute(trainer, pl_module, stage)
        for name, value in values.items():
            pl_module.log(
                name, value, add_dataloader_idx=False, sync_dist=False, rank_zero_only=False
            )
        self.last.update(values)

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last = dict(state_dict.get("last", {}))
