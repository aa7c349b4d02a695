"""Linear probe on frozen features: the accuracy of any method's ``embed`` representation.

At test time (``robustrep fit`` runs a test pass after training; ``robustrep test`` too) the probe
embeds the training set (``datamodule.train_eval_dataloader``, evaluation transform, no
augmentation) and every named test set, fits a multinomial logistic regression on the standardised
training features and logs

- ``probe/acc``, ``probe/worst_group_acc``, ``probe/mean_group_acc``, ``probe/weighted_acc`` and
  ``probe/group_acc/<group>`` on the primary test set (group metrics where the benchmark has
  groups);
- ``probe/<set>/...`` on the other named test sets.

Every ``every_n_epochs`` epochs during ``fit`` it does the same on the validation sets and logs
``val/probe/acc`` ... (never the test sets, so model selection stays clean).

Solver: scikit-learn's L-BFGS logistic regression for up to ``sklearn_max_examples`` training
examples, otherwise the same objective (mean cross-entropy + ``||W||^2 / (2 C N)``) minimised by
full-batch L-BFGS on the model's device. :class:`CoarseToFine` is this probe fitted on
``fine_label``. Under DDP every rank computes the same probe on the whole sets (identical results,
no gather).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from robustrep.callbacks.frozen import FrozenFeatureEvaluation
from robustrep.errors import ConfigError
from robustrep.evaluation.features import fit_linear_probe
from robustrep.metrics import GroupAccuracy


class LinearProbe(FrozenFeatureEvaluation):
    """Logistic-regression probe on frozen ``embed`` features (see the module docstring).

    Args:
        every_n_epochs: also probe the validation sets every n training epochs (``val/probe/...``);
            0 = only at test time.
        target: the batch key to predict (``label``; ``fine_label`` for coarse-to-fine).
        prefix: metric prefix (``probe``).
        C: inverse L2 strength of the logistic regression (scikit-learn convention).
        max_iter: solver iterations.
        sklearn_max_examples: training-set size above which the on-device L-BFGS solver is used.
        group_metrics: also log worst/mean/per-group accuracy where the benchmark has groups.
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        target: str = "label",
        prefix: str = "probe",
        C: float = 1.0,
        max_iter: int = 500,
        sklearn_max_examples: int = 20000,
        group_metrics: bool = True,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.prefix = prefix
        self.C = C
        self.max_iter = max_iter
        self.sklearn_max_examples = sklearn_max_examples
        self.group_metrics = group_metrics
        super().__init__()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        dm = trainer.datamodule
        item = dm.train_eval_dataset()[0]
        if self.target not in item:
            raise ConfigError(
                f"{type(self).__name__} predicts the batch key {self.target!r}, which "
                f"{type(dm).__name__} does not provide (it gives {sorted(item)}). Use a benchmark "
                "with that annotation (e.g. a coarse-label benchmark for fine_label)."
            )

    def compute(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> dict[str, float]:
        """Fit the probe on the training features and score every eval set of ``stage``; returns the
        metrics.
        """
        dm = trainer.datamodule
        train = self.features(
            trainer, pl_module, "train", lambda: dm.train_eval_dataloader(shard=False)
        )
        num_classes = int(train[self.target].max()) + 1
        predict = fit_linear_probe(
            train["features"],
            train[self.target],
            num_classes,
            self.C,
            self.max_iter,
            self.sklearn_max_examples,
            pl_module.device,
            seed=0,
        )
        base = self.prefix if stage == "test" else f"val/{self.prefix}"
        train_counts = dm.group_counts("train") if hasattr(dm, "group_counts") else None
        values: dict[str, float] = {}
        for i, (name, loader) in enumerate(dm.eval_loaders(stage).items()):
            data = self.features(
                trainer, pl_module, f"{stage}/{name}", lambda loader=loader: loader
            )
            preds = predict(data["features"])
            prefix = base if i == 0 else f"{base}/{name}"
            use_groups = (
                self.group_metrics and self.target == "label" and (data["group"] >= 0).any()
            )
            groups = data["group"] if use_groups else torch.full_like(data["group"], -1)
            num_groups = getattr(dm, "num_groups", 1) if use_groups else 1
            names = getattr(dm, "group_names", None) if use_groups else None
            metric = GroupAccuracy(
                num_groups,
                names if names and len(names) == num_groups else None,
                train_counts if use_groups else None,
            )
            metric.update(preds.cpu(), data[self.target].cpu(), groups.cpu())
            for key, value in metric.compute().items():
                values[f"{prefix}/{key}"] = float(value)
        return values
