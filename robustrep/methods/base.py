"""The thin base every method shares (DESIGN.md, contract 3).

It builds or accepts the backbone, provides ``embed`` / ``forward``, wires the optimiser and
scheduler given by the CLI, checks losses for NaN, and returns the evaluation outputs (logits,
labels, groups) that the ``GroupMetrics`` callback, which the CLI adds to every run, turns into
``val/acc``, ``test/worst_group_acc`` ....
A method overrides :meth:`RobustMethod.training_step` (and, if it has no plain classifier,
``validation_step``/``test_step``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from robustrep.backbones import build_backbone
from robustrep.distributed import close_spawned_process_group
from robustrep.errors import ConfigError, NonFiniteLossError
from robustrep.randomness import TrainingSeeds


class RobustMethod(pl.LightningModule):
    """Shared base: backbone, linear head, optimiser wiring, evaluation outputs.

    Args:
        backbone: a registry name (``tiny``, ``mlp``, ``cnn``, ``resnet18``, ``resnet50``; see
            :mod:`robustrep.backbones`) or a module given by ``class_path``/``init_args``.
        backbone_kwargs: keyword arguments for a registry backbone (e.g. ``{width: 64}``).
        num_classes, num_groups, group_names, image_shape: the benchmark's metadata; the CLI links
            them from the datamodule, so configs never set them.
        optimizer: optimiser class and arguments; default Adam with its defaults (lr 1e-3). Change
            the rate with ``--model.init_args.optimizer.lr 0.01``, the class with
            ``--model.init_args.optimizer SGD --model.init_args.optimizer.lr 0.1``.
        lr_scheduler: optional scheduler factory.
    """

    #: Batch keys the method reads; checked in ``setup()`` against a real batch.
    required_keys: tuple[str, ...] = ("image", "label")
    #: The validation metric ``--selection auto`` selects on (None: the method has no classifier,
    #: so its test numbers come from the last epoch).
    selection_metric: str | None = "val/worst_group_acc"
    #: The first epoch model selection may choose (JTT: after its identification epochs).
    first_selectable_epoch: int = 0

    def __init__(
        self,
        backbone: str | nn.Module = "cnn",
        backbone_kwargs: dict[str, Any] | None = None,
        num_classes: int = 2,
        num_groups: int | None = None,
        group_names: Sequence[str] | None = None,
        image_shape: Sequence[int] = (3, 32, 32),
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["backbone", "optimizer", "lr_scheduler"]
            if isinstance(backbone, nn.Module)
            else ["optimizer", "lr_scheduler"]
        )
        self.num_classes = num_classes
        self.num_groups = num_groups or num_classes
        self.group_names = list(group_names) if group_names is not None else None
        self.image_shape = tuple(image_shape)
        self.backbone = (
            build_backbone(backbone, self.image_shape, **(backbone_kwargs or {}))
            if isinstance(backbone, str)
            else backbone
        )
        self.feature_dim = (
            self.backbone.out_dim
            if hasattr(self.backbone, "out_dim")
            else self._infer_feature_dim()
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        #: The values that arguments defaulting to None resolved to (e.g. CIM's ``tn_width``), kept
        #: in checkpoints and results.json. Not in ``hparams``: those become the config of a resumed
        #: run.
        self.effective_hparams: dict[str, Any] = {}

    def _infer_feature_dim(self) -> int:
        with torch.no_grad():
            return int(self.backbone(torch.zeros(2, *self.image_shape)).flatten(1).shape[1])

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["effective_hparams"] = dict(self.effective_hparams)

    def variant_name(self) -> str:
        """Which baseline or variant this module runs as (``supcon``, ``uniform``, ``mask+vib``...):
        a W&B tag, ``config.variant`` and results.json's ``variant``. "" = the method itself."""
        return ""

    # ------------------------------------------------------------------ representation
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The representation the evaluation callbacks probe (backbone features, N x D)."""
        return self.backbone(images).flatten(1)

    # ------------------------------------------------------------------ training helpers
    def check_finite(self, loss: torch.Tensor, name: str = "loss") -> torch.Tensor:
        """Stop with a clear message (step, loss name) when a loss is NaN or infinite."""
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"the {name} became {loss.item()} at global step {self.global_step} (epoch "
                f"{self.current_epoch}). Lower the learning rate "
                "(--model.init_args.optimizer.lr), enable gradient clipping "
                "(--trainer.gradient_clip_val 1.0) or use 32-bit precision; the "
                "checkpoints written so far are kept."
            )
        return loss

    def should_log_train(self) -> bool:
        """True on the steps whose training metrics reach the logger (every ``log_every_n_steps``).

        Lightning forwards step-level metrics to the logger only on those steps, so computing and
        logging them on the others is pure overhead (~8% of a small model's step on a CPU).
        """
        if self._trainer is None:
            return True
        every = max(1, self.trainer.log_every_n_steps)
        return (
            self.trainer.fit_loop.epoch_loop._batches_that_stepped + 1
        ) % every == 0 or self.trainer.is_last_batch

    def log_train(
        self, metrics: dict[str, Any] | Callable[[], dict[str, Any]], batch_size: int
    ) -> None:
        """Log step-level training metrics (shown in the progress bar) on logging steps only; pass a
        callable to skip computing them on the other steps."""
        if self.should_log_train():
            self.log_dict(
                metrics() if callable(metrics) else metrics, prog_bar=True, batch_size=batch_size
            )

    def manual_step(self, optimizer, loss: torch.Tensor, params, clip: float | None) -> None:
        """One step of manual optimisation: zero the gradients, backward, clip the gradient norm of
        ``params`` to ``clip`` (None = no clipping), step."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()

    def log_eval(self, values: dict[str, Any], batch_size: int) -> None:
        """Log evaluation metrics under exactly these names, averaged over the epoch and ranks."""
        self.log_dict(values, add_dataloader_idx=False, sync_dist=True, batch_size=batch_size)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "splits") and stage == "fit":
            item = dm.train_dataset()[0]
            missing = [k for k in self.required_keys if k not in item]
            if missing:
                raise ConfigError(
                    f"{type(self).__name__} needs the batch keys {missing}, which "
                    f"{type(dm).__name__} does not provide (it gives {sorted(item)}). Choose a "
                    "benchmark with these annotations."
                )

    def teardown(self, stage: str) -> None:
        """Close a spawned DDP worker's process group (see
        :func:`robustrep.distributed.close_spawned_process_group`).
        """
        if self._trainer is not None:
            close_spawned_process_group(self.trainer)

    def configure_callbacks(self):
        """Training's random streams (see :mod:`robustrep.randomness`); evaluation callbacks such as
        ``GroupMetrics`` are the trainer's (the CLI adds them), not the method's."""
        return [TrainingSeeds()]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    # ------------------------------------------------------------------ evaluation
    def evaluation_step(
        self, batch: dict[str, torch.Tensor], stage: str, dataloader_idx: int = 0
    ) -> dict[str, torch.Tensor]:
        """Logits for the group metrics; the loss is logged for the primary eval set only."""
        logits = self(batch["image"])
        if dataloader_idx == 0:
            loss = nn.functional.cross_entropy(logits.float(), batch["label"])
            self.log_eval({f"{stage}/loss": loss}, len(logits))
        return {"logits": logits.detach(), "label": batch["label"], "group": batch["group"]}

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self.evaluation_step(batch, "val", dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return self.evaluation_step(batch, "test", dataloader_idx)

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        return {"logits": self(batch["image"]), "index": batch["index"]}


class Classifier(RobustMethod):
    """A :class:`RobustMethod` with a linear head on ``embed``: ``forward`` returns logits."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))
