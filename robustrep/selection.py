"""Which weights a run's test pass scores (``--selection``), the test pass itself, and the record of
that choice in ``results.json``.

:func:`build_selection` turns the ``--selection`` setting into a
:class:`~robustrep.lifecycle.Selection` callback (or None: test the last epoch) and the reason;
:func:`run_test_pass` runs the test pass on a checkpoint's weights; :func:`selection_record` and
:func:`checkpoint_record` describe the weights the metrics come from.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from robustrep.errors import ConfigError
from robustrep.lifecycle import Selection

SELECTION_HELP = (
    "Which weights the test pass scores. 'auto' (default): the best val/worst_group_acc when the "
    "benchmark has spurious-attribute groups (not strata) and the method has a classifier, else "
    "the last epoch. 'last': the last epoch. A validation metric such as val/worst_group_acc or "
    "val/acc (maximised), or 'min:val/loss'. results.json records the selected epoch; the last "
    "epoch's test metrics are also kept, under last/."
)


def build_selection(
    setting: str, model: Any, datamodule: Any, trainer: pl.Trainer, checkpoint_dir: str
) -> tuple[Selection | None, str]:
    """The :class:`Selection` callback of ``--selection setting`` (None: the last epoch) and why."""
    validating = trainer.limit_val_batches != 0 and trainer.check_val_every_n_epoch is not None
    first_epoch = int(getattr(model, "first_selectable_epoch", 0))
    if setting == "last":
        return None, "configured"
    if setting == "auto":
        metric = getattr(model, "selection_metric", None)
        if metric is None:
            return None, f"auto: {type(model).__name__} has no classifier to select on"
        if getattr(datamodule, "num_attributes", 1) <= 1:
            return None, "auto: the benchmark has no attribute groups"
        # groups are strata: selecting on them would use the fine labels
        if getattr(datamodule, "num_fine_classes", None):
            return None, "auto: the benchmark's groups are its fine labels"
        if not validating:
            return None, "auto: validation is off"
        return Selection(checkpoint_dir, metric, "max", first_epoch), "auto"
    mode, _, metric = setting.rpartition(":")
    mode = mode or "max"
    if mode not in ("max", "min") or not metric.startswith("val/"):
        raise ConfigError(
            f"--selection {setting!r}: use auto, last, or a validation metric such as "
            "val/worst_group_acc (max) or min:val/loss"
        )
    if not validating:
        raise ConfigError(
            f"--selection {metric} needs validation, but it is off "
            "(limit_val_batches 0); use --selection last"
        )
    return Selection(checkpoint_dir, metric, mode, first_epoch), "configured"


def best_score(selection: Selection | None, best: str) -> float | None:
    """The selected checkpoint's metric value (read from the file when this process did not train,
    as the main process of ``ddp_spawn``)."""
    score = selection.best_model_score if selection is not None else None
    if score is None:
        state = torch.load(best, map_location="cpu", weights_only=True, mmap=True)
        callbacks = state.get("callbacks", {}).items()
        score = next(
            (cb.get("best_model_score") for key, cb in callbacks if key.startswith("Selection")),
            None,
        )
    return None if score is None else float(score)


def final_metrics(trainer: pl.Trainer, exclude: tuple[str, ...]) -> dict[str, float]:
    """The scalar metrics the trainer holds, without those starting with ``exclude``."""
    return {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if not k.startswith(exclude) and v.numel() == 1
    }


def run_test_pass(
    trainer: pl.Trainer, model, datamodule, ckpt_path: str | None = None, log: bool = True
) -> dict[str, float]:
    """Run the test pass (on ``ckpt_path``'s weights, else the current ones) and return what it
    logged; ``log=False`` keeps it out of the loggers."""
    loggers = trainer.loggers
    if not log:
        trainer.loggers = []
    try:
        trainer.test(
            model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True, verbose=log
        )
    finally:
        trainer.loggers = loggers
    return final_metrics(trainer, exclude=("train/", "val/"))


def selection_record(
    selection: Selection, best: str, reason: str, run_dir: Path | None, last_epoch: dict[str, int]
) -> dict[str, Any]:
    """``results.json``'s ``selection`` for the checkpoint ``best`` that ``selection`` kept."""
    epoch, step = (int(x) for x in re.search(r"epoch(\d+)-step(\d+)", Path(best).stem).groups())
    return {
        "monitor": selection.monitor,
        "mode": selection.mode,
        "value": best_score(selection, best),
        "epoch": epoch,
        "step": step,
        "checkpoint": os.path.relpath(Path(best).resolve(), run_dir.resolve()) if run_dir else best,
        "first_epoch": selection.first_epoch,
        "reason": reason,
        "last": last_epoch,
    }


def checkpoint_record(ckpt: str | None) -> dict[str, Any]:
    """``results.json``'s ``selection`` of ``robustrep test`` / ``validate``: the given checkpoint
    (and its epoch and step)."""
    out: dict[str, Any] = {"monitor": None, "mode": "checkpoint", "checkpoint": ckpt}
    if ckpt and Path(str(ckpt)).is_file():
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True, mmap=True)
        out.update({"epoch": state.get("epoch"), "step": state.get("global_step")})
    return out
