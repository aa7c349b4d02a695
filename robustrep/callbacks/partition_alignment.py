"""How well each of IP-IRM's partitions matches the known attributes of the training set.

After every maximisation step (a new partition appears in the method's ``partitions``), the
newest partition is compared with each attribute the training set carries: the label, the group,
and every metadata field (e.g. the synthetic benchmark's ``attribute``, the spurious colour, and
``fine_label``, the stratum), with :func:`robustrep.evaluation.partitions.partition_alignment`.
Logged as ``partition/<k>/nmi_<attribute>`` and ``partition/<k>/match_<attribute>`` (``k`` = 1, 2,
... in the order the partitions were made) and printed as one line per partition; repeated at
test time, so they are in ``results.json``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from robustrep.callbacks.protocols import PartitionModel, require
from robustrep.errors import ConfigError
from robustrep.evaluation.partitions import partition_alignment


def training_attributes(dataset: Any) -> dict[str, torch.Tensor]:
    """``{name: N values}`` of the attributes a training set carries by dataset index (``label``,
    ``group``, and its metadata fields), read from the dataset's tensors, not its images."""
    attributes: dict[str, torch.Tensor] = {}
    for name, field in (("label", "labels"), ("group", "groups")):
        values = getattr(dataset, field, None)
        if isinstance(values, torch.Tensor) and bool((values >= 0).any()):
            attributes[name] = values
    for name, values in (getattr(dataset, "metadata", None) or {}).items():
        attributes[name] = torch.as_tensor(values)
    return attributes


class PartitionAlignment(pl.Callback):
    """Log NMI and best-match accuracy of every new partition against the training attributes.

    Args:
        attributes: which attributes to compare with (None = every one the training set has).
        verbose: print one line per new partition.
    """

    def __init__(self, attributes: list[str] | None = None, verbose: bool = True) -> None:
        self.attributes = attributes
        self.verbose = verbose
        self.done = 0  # partitions already scored
        self.scores: list[dict[str, float]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require(PartitionModel, pl_module, "PartitionAlignment")

    def _attributes(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        dm = trainer.datamodule
        found = training_attributes(dm.train_dataset()) if dm is not None else {}
        wanted = self.attributes or list(found)
        missing = [name for name in wanted if name not in found]
        if missing or not found:
            raise ConfigError(
                f"PartitionAlignment: the training set has no attribute {missing or ''} "
                f"(it has {sorted(found) or 'none'}); choose among these with "
                "init_args.attributes"
            )
        return {name: found[name] for name in wanted}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # a partition is made in the method's on_train_epoch_start, which runs after callbacks'
        if batch_idx != 0 or len(pl_module.partition_epochs) <= self.done:
            return
        attributes = self._attributes(trainer)
        for k in range(self.done, len(pl_module.partition_epochs)):
            assignment = pl_module.partitions[k].cpu()
            scores = {}
            for name, values in attributes.items():
                n = min(len(values), len(assignment))
                aligned = partition_alignment(assignment[:n], values[:n].long())
                scores[f"partition/{k + 1}/nmi_{name}"] = aligned["nmi"]
                scores[f"partition/{k + 1}/match_{name}"] = aligned["match"]
            pl_module.log_dict(scores, rank_zero_only=True)
            self.scores.append(scores)
            if self.verbose and trainer.is_global_zero:
                shown = ", ".join(
                    f"{name} NMI {scores[f'partition/{k + 1}/nmi_{name}']:.3f} "
                    f"match {scores[f'partition/{k + 1}/match_{name}']:.3f}"
                    for name in attributes
                )
                epoch = pl_module.partition_epochs[k]
                print(f"IP-IRM partition {k + 1} (epoch {epoch}) vs the training set: {shown}")
        self.done = len(pl_module.partition_epochs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # repeated with the test metrics, so every partition's scores reach results.json and
        # the reports (they are properties of training, the same in every test of the run)
        for scores in self.scores:
            for name, value in scores.items():
                pl_module.log(name, value, add_dataloader_idx=False, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"done": self.done, "scores": self.scores}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = int(state_dict.get("done", 0))
        self.scores = list(state_dict.get("scores", []))


__all__ = ["PartitionAlignment", "training_attributes"]
