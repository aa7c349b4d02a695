"""Logs accuracy, worst-group, mean-group, train-weighted and per-group accuracy per named eval set.

Metric names follow DESIGN.md: the primary (first) evaluation set of a stage logs
``<stage>/<metric>`` (``val/acc``, ``test/worst_group_acc``, ``test/group_acc/<group>``); every
other named set logs ``<stage>/<set>/<metric>`` (``test/mixed_rand/acc``).

The callback reads only the outputs of the method's ``validation_step`` / ``test_step``: a dict with
``logits`` (N x C), ``label`` and ``group`` tensors and, optionally, ``heads``: further named
classifiers' logits (``{"z1": N x C}``, Chroma-VAE's z1-classifier), each scored the same way under
``<stage>[/<set>]/<head>/<metric>``. The CLI adds this callback to every run.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from robustrep.metrics import GroupAccuracy

STAGES = {"validate": "val", "fit": "val", "test": "test"}


def metric_prefix(stage: str, set_names: list[str], dataloader_idx: int) -> str:
    """``val`` for the primary set, ``test/mixed_rand`` for another named set."""
    if dataloader_idx == 0 or dataloader_idx >= len(set_names):
        return stage if dataloader_idx == 0 else f"{stage}/set{dataloader_idx}"
    return f"{stage}/{set_names[dataloader_idx]}"


class GroupMetrics(pl.Callback):
    """Group-accuracy evaluation for every val/test dataloader of a run."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[GroupAccuracy]] = {}
        # stage -> head -> per loader
        self.head_metrics: dict[str, dict[str, list[GroupAccuracy]]] = {}
        self.set_names: dict[str, list[str]] = {}
        self.last: dict[str, float] = {}
        self._build_args: dict[str, tuple] = {}

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        num_groups = getattr(pl_module, "num_groups", None) or getattr(dm, "num_groups", None)
        names = getattr(pl_module, "group_names", None) or getattr(dm, "group_names", None)
        if num_groups is None:
            raise RuntimeError("GroupMetrics needs num_groups on the model or the datamodule")
        counts = None
        if dm is not None and hasattr(dm, "group_counts"):
            counts = dm.group_counts("train")
        set_names = (
            dm.eval_set_names(stage) if dm is not None and hasattr(dm, "eval_set_names") else []
        )
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        n_loaders = len(loaders) if isinstance(loaders, list | tuple) else 1
        self.set_names[stage] = set_names or [stage]
        self._build_args[stage] = (
            num_groups,
            names if names and len(names) == num_groups else None,
            counts,
            n_loaders,
        )
        self.metrics[stage] = self._new_metrics(stage, pl_module)

    def _new_metrics(self, stage: str, pl_module: pl.LightningModule) -> list[GroupAccuracy]:
        num_groups, names, counts, n_loaders = self._build_args[stage]
        return [
            GroupAccuracy(num_groups, names, counts).to(pl_module.device) for _ in range(n_loaders)
        ]

    def _on_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.metrics:
            self._build(trainer, pl_module, stage)
        for m in [
            *self.metrics[stage],
            *(m for ms in self.head_metrics.get(stage, {}).values() for m in ms),
        ]:
            m.to(pl_module.device)
            m.reset()

    def _on_batch_end(
        self, pl_module: pl.LightningModule, stage: str, outputs: Any, dataloader_idx: int
    ) -> None:
        if not isinstance(outputs, dict):
            return
        if "logits" in outputs:
            self.metrics[stage][dataloader_idx].update(
                outputs["logits"].detach(), outputs["label"], outputs["group"]
            )
        for head, logits in (outputs.get("heads") or {}).items():
            per_loader = self.head_metrics.setdefault(stage, {})
            if head not in per_loader:
                per_loader[head] = self._new_metrics(stage, pl_module)
            per_loader[head][dataloader_idx].update(
                logits.detach(), outputs["label"], outputs["group"]
            )

    def _on_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        values: dict[str, float] = {}
        scored = [
            ("", self.metrics[stage]),
            *((f"/{h}", ms) for h, ms in self.head_metrics.get(stage, {}).items()),
        ]
        for head, metrics in scored:
            for idx, metric in enumerate(metrics):
                if metric.all_total.item() == 0 and not trainer.world_size > 1:
                    continue
                prefix = metric_prefix(stage, self.set_names[stage], idx) + head
                for key, value in metric.compute().items():
                    values[f"{prefix}/{key}"] = float(value)
        for name, value in values.items():
            pl_module.log(
                name,
                value,
                add_dataloader_idx=False,
                sync_dist=False,
                prog_bar=name in (f"{stage}/acc", f"{stage}/worst_group_acc"),
            )
        self.last.update(values)

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_start(self, trainer, pl_module):
        self._on_start(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._on_start(trainer, pl_module, "test")

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        self._on_batch_end(pl_module, "val", outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._on_batch_end(pl_module, "test", outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._on_end(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer, pl_module):
        self._on_end(trainer, pl_module, "test")
