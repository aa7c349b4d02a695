"""JTT — Just Train Twice (Liu et al., ICML 2021).

Phase 1 trains ERM for ``identification_epochs``; at its end the training examples the model
misclassifies form the *error set*. Phase 2 restarts from the initial weights (``retrain: true``)
and trains with the error set upweighted by ``upweight``, for the remaining ``max_epochs - T``
epochs. No group labels are used. We upweight the loss of error-set examples rather than duplicating
them in the sampler (the paper upsamples); the two agree in expectation.

The error set (a 0/1 tensor over training indices) and, during phase 1, the initial weights are kept
in checkpoints, so a run resumed in either phase continues exactly. Under DDP every rank scores the
whole training set with identical weights, so the error set is identical everywhere.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from robustrep.methods.base import Classifier


class JTT(Classifier):
    """Just Train Twice.

    Args:
        identification_epochs: ``T``, epochs of ERM before the error set is taken (paper: 1-60
            depending on the dataset; short is usually best).
        upweight: ``lambda_up``, loss weight of error-set examples in phase 2 (paper: 6-100).
        retrain: restart phase 2 from the initial weights (the paper) instead of continuing.
        *args, **kwargs: see ``RobustMethod``.
    """

    required_keys = ("image", "label", "index")

    def __init__(
        self,
        *args,
        identification_epochs: int = 1,
        upweight: float = 6.0,
        retrain: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if identification_epochs < 1:
            raise ValueError("identification_epochs must be >= 1")
        self.identification_epochs = identification_epochs
        self.first_selectable_epoch = identification_epochs  # phase 1 is plain ERM: never select it
        self.upweight = upweight
        self.retrain = retrain
        self.error_set: torch.Tensor | None = None  # bool over training indices, set after phase 1
        self._initial_state: dict | None = None

    def on_fit_start(self) -> None:
        if self.error_set is None and self._initial_state is None:  # not when resumed in phase 1
            self._initial_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in self.state_dict().items()}
            )

    def weighted_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy with error-set examples weighted ``upweight`` (plain mean in phase 1)."""
        losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        if self.error_set is None:
            return losses.mean()
        in_error = self.error_set.to(losses.device)[index]
        weights = torch.where(
            in_error, torch.full_like(losses, self.upweight), torch.ones_like(losses)
        )
        return (weights * losses).sum() / weights.sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.check_finite(
            self.weighted_loss(logits, batch["label"], batch["index"]), "JTT loss"
        )
        self.log_train(
            lambda: {
                "train/loss": loss,
                "train/acc": (logits.argmax(1) == batch["label"]).float().mean(),
            },
            len(logits),
        )
        return loss

    @torch.no_grad()
    def identify_errors(self) -> torch.Tensor:
        """Misclassified training examples (bool over indices), scored with the eval transform."""
        loader = self.trainer.datamodule.train_eval_dataloader(shard=False)
        was_training = self.training
        self.eval()
        wrong = torch.zeros(len(loader.dataset), dtype=torch.bool)
        for batch in loader:
            preds = self(batch["image"].to(self.device)).argmax(1).cpu()
            wrong[batch["index"]] = preds != batch["label"]
        self.train(was_training)
        return wrong

    def on_train_epoch_end(self) -> None:
        if self.error_set is None and self.current_epoch + 1 == self.identification_epochs:
            self.error_set = self.identify_errors()
            self.log("jtt/error_set_size", float(self.error_set.sum()))
            if self.retrain and self._initial_state is not None:
                self.load_state_dict(self._initial_state)
                for opt in self.trainer.optimizers:
                    opt.state.clear()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["jtt_error_set"] = self.error_set
        if self.error_set is None and self._initial_state is not None:
            # phase 2 restarts from these weights
            checkpoint["jtt_initial_state"] = self._initial_state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.error_set = checkpoint.get("jtt_error_set")
        self._initial_state = checkpoint.get("jtt_initial_state")
