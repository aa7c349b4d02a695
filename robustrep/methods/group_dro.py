"""Group DRO (Sagawa et al., ICLR 2020): minimise the worst group's loss via exponentiated weights.

Each step the group weights ``q`` are multiplied by ``exp(step_size * loss_g)`` for the groups in
the batch and renormalised; the training loss is ``sum_g q_g * loss_g``. Needs group labels (or
pseudo-groups from the strata-recovery analysis). Under DDP the group losses used to update ``q``
are summed across ranks, so ``q`` stays identical on every rank.
"""

from __future__ import annotations

import torch
from torch import nn

from robustrep.distributed import all_reduce_sum
from robustrep.methods.base import Classifier


class GroupDRO(Classifier):
    """Group DRO with the online exponentiated-gradient update of the group weights.

    Args:
        step_size: ``eta`` of the weight update. Sagawa et al. use 0.01; larger reacts faster but
            is noisier.
        adjustment: generalisation adjustment ``C``: adds ``C / sqrt(n_g)`` (training group size) to
            each group's loss in the weight update. 0 = off (the paper tunes C in [0, 5]).
        *args, **kwargs: see ``RobustMethod``.
    """

    required_keys = ("image", "label", "group")

    def __init__(self, *args, step_size: float = 0.01, adjustment: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.step_size = step_size
        self.adjustment = adjustment
        self.register_buffer("group_weights", torch.full((self.num_groups,), 1.0 / self.num_groups))
        self.register_buffer("adjust_term", torch.zeros(self.num_groups))

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.adjustment > 0 and dm is not None:
            counts = dm.group_counts("train").float().to(self.device)
            self.adjust_term = self.adjustment / counts.clamp(min=1).sqrt()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        groups = batch["group"]
        if (groups < 0).any():
            raise ValueError("GroupDRO needs a group for every training example (got group = -1)")
        losses = nn.functional.cross_entropy(logits.float(), batch["label"], reduction="none")
        sums = torch.zeros(self.num_groups, device=losses.device).index_add(0, groups, losses)
        counts = torch.bincount(groups, minlength=self.num_groups).float()
        with torch.no_grad():
            g_sums, g_counts = all_reduce_sum(sums.detach().clone()), all_reduce_sum(counts.clone())
            present = g_counts > 0
            update = (g_sums / g_counts.clamp(min=1) + self.adjust_term) * present
            self.group_weights = self.group_weights * torch.exp(self.step_size * update)
            self.group_weights = self.group_weights / self.group_weights.sum()
        # Group means over the *global* batch: each rank contributes its share of every group's
        # sum, scaled by the world size because DDP averages the ranks' gradients.
        world = self.trainer.world_size if self._trainer is not None else 1
        group_loss = sums / g_counts.clamp(min=1) * world
        loss = self.check_finite((self.group_weights * group_loss).sum(), "group DRO loss")
        self.log_train(
            lambda: {
                "train/loss": (self.group_weights * g_sums / g_counts.clamp(min=1)).sum(),
                "train/acc": (logits.argmax(1) == batch["label"]).float().mean(),
                "train/max_group_weight": self.group_weights.max(),
            },
            len(logits),
        )
        return loss
