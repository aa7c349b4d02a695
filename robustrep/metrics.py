"""Group accuracy as a torchmetrics ``Metric`` (per-group correct/total states, summed across
ranks).

Conventions (``reference/benchmarks.md`` B2-B3):

- ``acc``: plain per-example accuracy.
- ``worst_group_acc``: minimum accuracy over the groups *present* in the evaluated set.
- ``mean_group_acc``: unweighted mean of the present groups' accuracies.
- ``weighted_acc``: group accuracies weighted by the *training* group frequencies (the Waterbirds
  "adjusted average" of group DRO / WILDS); equals ``acc`` when no training counts are given.
- ``group_acc/<name>``: each present group's accuracy.

Examples with ``group = -1`` count for ``acc`` only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric


class GroupAccuracy(Metric):
    """Per-group accuracy; ``compute()`` returns a dict of scalar tensors (names as above).

    Args:
        num_groups: number of groups (``num_classes * num_attributes``).
        group_names: names for ``group_acc/<name>``; default ``g0, g1, ...``.
        train_group_counts: training examples per group, for ``weighted_acc``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        num_groups: int,
        group_names: Sequence[str] | None = None,
        train_group_counts: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.group_names = (
            list(group_names) if group_names is not None else [f"g{g}" for g in range(num_groups)]
        )
        if len(self.group_names) != num_groups:
            raise ValueError(f"{len(self.group_names)} group names for {num_groups} groups")
        weights = (
            None
            if train_group_counts is None
            else torch.as_tensor(train_group_counts, dtype=torch.float64)
        )
        self.train_group_counts = weights
        self.add_state("correct", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(num_groups, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("all_correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("all_total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> None:
        """``preds``: logits (N x C) or predicted labels (N); ``target``, ``groups``: N ints."""
        if preds.dim() == 2:
            preds = preds.argmax(dim=1)
        hit = (preds == target).long()
        self.all_correct += hit.sum()
        self.all_total += hit.numel()
        known = groups >= 0
        if known.any():
            if int(groups[known].max()) >= self.num_groups:
                raise ValueError(f"group index {int(groups.max())} >= num_groups {self.num_groups}")
            self.correct += torch.bincount(
                groups[known], weights=hit[known].double(), minlength=self.num_groups
            ).long()
            self.total += torch.bincount(groups[known], minlength=self.num_groups)

    def compute(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        acc = self.all_correct.double() / self.all_total.clamp(min=1)
        out["acc"] = acc
        present = self.total > 0
        if present.any():
            group_acc = self.correct.double() / self.total.clamp(min=1)
            out["worst_group_acc"] = group_acc[present].min()
            out["mean_group_acc"] = group_acc[present].mean()
            if self.train_group_counts is not None:
                w = self.train_group_counts.to(group_acc.device) * present
                out["weighted_acc"] = (w * group_acc).sum() / w.sum().clamp(min=1e-12)
            else:
                out["weighted_acc"] = acc
            for g in torch.nonzero(present).flatten().tolist():
                out[f"group_acc/{self.group_names[g]}"] = group_acc[g]
        return {k: v.float() for k, v in out.items()}
