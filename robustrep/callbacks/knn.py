"""Weighted kNN monitor on frozen ``embed`` features (the SSL monitor of InstDisc / IP-IRM).

The training set (evaluation transform, ``datamodule.train_eval_dataloader``) is the memory bank.
Each query is L2-normalised and compared by cosine similarity with every bank feature; its ``k``
nearest neighbours vote for their labels with weight ``exp(similarity / temperature)``, and the
class with the largest summed weight wins. The work runs on the model's device in query chunks
sized so that one chunk's ``chunk x N`` similarity block stays under ``max_block_elements``.

Logged metrics (same convention as :class:`~robustrep.callbacks.LinearProbe`):

- every ``every_n_epochs`` epochs during ``fit``, on the validation sets: ``val/knn/acc`` (primary
  set) and ``val/knn/<set>/acc``;
- at test time: ``knn/acc`` (primary test set) and ``knn/<set>/acc``.

Under DDP every rank computes the same result on the whole sets (no gather needed).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from robustrep.callbacks.frozen import FrozenFeatureEvaluation
from robustrep.errors import ConfigError
from robustrep.evaluation.knn import cosine_knn_scores


class KNNMonitor(FrozenFeatureEvaluation):
    """kNN accuracy of ``embed`` features (see the module docstring).

    Args:
        k: neighbours (InstDisc / IP-IRM: 200).
        temperature: vote temperature ``exp(cos / temperature)`` (IP-IRM: 0.5; 0.2 for its MixUp
            runs).
        every_n_epochs: monitor the validation sets every n training epochs; 0 = only at test time.
        target: the batch key to predict.
        prefix: metric prefix (``knn``).
        max_block_elements: memory bound of one similarity block (2^25 fp32 = 128 MiB).
    """

    def __init__(
        self,
        k: int = 200,
        temperature: float = 0.5,
        every_n_epochs: int = 1,
        target: str = "label",
        prefix: str = "knn",
        max_block_elements: int = 2**25,
    ) -> None:
        if k < 1 or temperature <= 0:
            raise ConfigError(
                "KNNMonitor: k must be >= 1 and temperature > 0, got "
                f"k={k}, temperature={temperature}"
            )
        self.k = k
        self.temperature = temperature
        self.every_n_epochs = every_n_epochs
        self.target = target
        self.prefix = prefix
        self.max_block_elements = max_block_elements
        super().__init__()

    def compute(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str
    ) -> dict[str, float]:
        """kNN accuracy on every evaluation set of ``stage`` with the training set as the bank."""
        dm = trainer.datamodule
        train = self.features(
            trainer, pl_module, "train", lambda: dm.train_eval_dataloader(shard=False)
        )
        bank = train["features"].to(pl_module.device)
        labels = train[self.target]
        num_classes = int(labels.max()) + 1
        base = self.prefix if stage == "test" else f"val/{self.prefix}"
        values: dict[str, float] = {}
        for i, (name, loader) in enumerate(dm.eval_loaders(stage).items()):
            data = self.features(
                trainer, pl_module, f"{stage}/{name}", lambda loader=loader: loader
            )
            y = data[self.target].to(pl_module.device)
            scores = cosine_knn_scores(
                bank,
                labels,
                data["features"],
                self.k,
                self.temperature,
                num_classes,
                self.max_block_elements,
            )
            known = y >= 0
            acc = (
                (scores.argmax(1)[known] == y[known]).float().mean()
                if known.any()
                else torch.tensor(float("nan"))
            )
            values[f"{base}/acc" if i == 0 else f"{base}/{name}/acc"] = float(acc)
        return values


__all__ = ["KNNMonitor"]
