"""ERM: empirical risk minimisation, cross-entropy on the labels (the baseline of every paper)."""

from __future__ import annotations

import torch
from torch import nn

from robustrep.methods.base import Classifier


class ERM(Classifier):
    """Backbone + linear head trained with mean cross-entropy. Arguments: see ``RobustMethod``."""

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.check_finite(
            nn.functional.cross_entropy(logits.float(), batch["label"]), "cross-entropy"
        )
        self.log_train(
            lambda: {
                "train/loss": loss,
                "train/acc": (logits.argmax(1) == batch["label"]).float().mean(),
            },
            len(logits),
        )
        return loss
