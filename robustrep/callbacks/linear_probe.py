"""Linear probe on frozen features: the accuracy of any method's ``embed`` representation.

At test time (``robustrep fit`` runs a test pass after training; ``robustrep test`` too) the probe
embeds the training set (``datamodule.train_eval_dataloader``, evaluation transform, no
augmentation) and every named test set, fits a multinomial logistic regression on the standardised
training features and logs

- ``probe/acc``, ``probe/worst_group_acc``, ``probe/mean_group_acc``, ``probe/weighted_acc`` and
  ``probe/group_acc/<group>`` on the primary test set (group metrics where the benchmark has groups);
- ``probe/<set>/...`` on the other named test sets.

Every ``every_n_epochs`` epochs during ``fit`` it does the same on the validation sets and logs
``val/probe/acc`` ... (never the test sets, so model selection stays clean).

Solver: scikit-learn's L-BFGS logistic regression for up to ``sklearn_max_examples`` training
examples, otherwise the same objective (mean cross-entropy + ``||W||^2 / (2 C N)``) minimised by
full-batch L-BFGS on the model's device. :class:`CoarseToFine` is this probe fitted on ``fine_label``.
Under DDP every rank computes the same probe on the whole sets (identical results, no gather).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from robustrep.callbacks.schedule import validation_due
from robustrep.errors import ConfigError
from robustrep.metrics import GroupAccuracy


@torch.no_grad()
def extract_features(module: pl.LightningModule | torch.nn.Module, loader, keys: tuple[str, ...] = ("label", "group")) -> dict[str, torch.Tensor]:
    """``embed`` every batch of ``loader`` in eval mode; returns ``{"features": N x D (fp32, CPU), key: N}``."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    feats: list[torch.Tensor] = []
    extra: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in loader:
        feats.append(module.embed(batch["image"].to(device)).float().flatten(1).cpu())
        for k in keys:
            extra[k].append(torch.as_tensor(batch[k]) if k in batch else torch.full((len(batch["image"]),), -1, dtype=torch.long))
    module.train(was_training)
    out = {"features": torch.cat(feats)}
    out.update({k: torch.cat(v) for k, v in extra.items()})
    return out


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int | None = None,
    C: float = 1.0,
    max_iter: int = 500,
    sklearn_max_examples: int = 20000,
    device: torch.device | str = "cpu",
    seed: int = 0,
):
    """Fit multinomial logistic regression on standardised features; returns ``predict(x) -> labels``.

    Args:
        train_x: N x D features; train_y: N labels (examples with label < 0 are dropped).
        num_classes: number of classes (default: ``max(label) + 1``).
        C: inverse L2 strength, as in scikit-learn (larger = weaker regularisation).
        max_iter: L-BFGS iterations.
        sklearn_max_examples: above this many examples use the on-device L-BFGS solver.
        device: device of the on-device solver.
        seed: random state of the solver.
    """
    keep = train_y >= 0
    x, y = train_x[keep].double(), train_y[keep].long()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    k = num_classes or int(y.max()) + 1
    if x.shape[0] <= sklearn_max_examples:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        clf.fit(((x - mean) / std).numpy(), y.numpy())
        classes = torch.as_tensor(clf.classes_)

        def predict(z: torch.Tensor) -> torch.Tensor:
            return classes[torch.as_tensor(clf.predict_proba(((z.double() - mean) / std).numpy()).argmax(1))]

        return predict

    xs = ((x - mean) / std).float().to(device)
    yd = y.to(device)
    torch.manual_seed(seed)
    linear = torch.nn.Linear(xs.shape[1], k).to(device)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")
    l2 = 1.0 / (2.0 * C * xs.shape[0])

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(xs), yd) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    linear = linear.cpu()

    @torch.no_grad()
    def predict_large(z: torch.Tensor) -> torch.Tensor:
        return linear(((z.double() - mean) / std).float()).argmax(1)

    return predict_large


class FrozenFeatureEvaluation(pl.Callback, ABC):
    """Shared schedule of the callbacks that evaluate frozen ``embed`` features (probe, kNN, c2f).

    Subclasses implement ``compute(trainer, pl_module, stage) -> {metric name: value}``; this base
    checks the model and datamodule in ``setup``, runs ``compute`` on the validation sets every
    ``every_n_epochs`` epochs and at test time, logs the values and keeps the last ones in checkpoints.
    """

    every_n_epochs: int = 0

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "embed", None)):
            raise ConfigError(f"{type(self).__name__} needs a model with an `embed(images)` method; {type(pl_module).__name__} has none")
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "train_eval_dataloader"):
            raise ConfigError(f"{type(self).__name__} needs a robustrep datamodule (with train_eval_dataloader)")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not validation_due(trainer, self.every_n_epochs):
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.__dict__.pop("_probe_feature_cache", None)  # free the features shared by these callbacks

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.__dict__.pop("_probe_feature_cache", None)

    @abstractmethod
    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """The metrics of ``stage`` (``val`` or ``test``), ``{name: value}``."""

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        values = self.compute(trainer, pl_module, stage)
        for name, value in values.items():
            pl_module.log(name, value, add_dataloader_idx=False, sync_dist=False, rank_zero_only=False)
        self.last.update(values)

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last = dict(state_dict.get("last", {}))


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
                f"{type(self).__name__} predicts the batch key {self.target!r}, which {type(dm).__name__} does not provide "
                f"(it gives {sorted(item)}). Use a benchmark with that annotation (e.g. a coarse-label benchmark for fine_label)."
            )

    # ------------------------------------------------------------------ work
    def _loaders(self, dm, stage: str) -> dict[str, DataLoader]:
        from robustrep.data.base import _with_transform

        sets = dm.splits.val if stage == "val" else dm.splits.test
        return {
            name: DataLoader(_with_transform(ds, dm.eval_transform(), 1), batch_size=dm.eval_batch_size, shuffle=False, num_workers=dm.num_workers)
            for name, ds in sets.items()
        }

    def compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> dict[str, float]:
        """Fit the probe on the training features and score every eval set of ``stage``; returns the metrics."""
        dm = trainer.datamodule
        train = _features(trainer, pl_module, "train", lambda: dm.train_eval_dataloader(shard=False))
        num_classes = int(train[self.target].max()) + 1
        predict = fit_linear_probe(
            train["features"], train[self.target], num_classes, self.C, self.max_iter, self.sklearn_max_examples, pl_module.device, seed=0
        )
        base = self.prefix if stage == "test" else f"val/{self.prefix}"
        train_counts = dm.group_counts("train") if hasattr(dm, "group_counts") else None
        values: dict[str, float] = {}
        for i, (name, loader) in enumerate(self._loaders(dm, stage).items()):
            data = _features(trainer, pl_module, f"{stage}/{name}", lambda loader=loader: loader)
            preds = predict(data["features"])
            prefix = base if i == 0 else f"{base}/{name}"
            use_groups = self.group_metrics and self.target == "label" and (data["group"] >= 0).any()
            groups = data["group"] if use_groups else torch.full_like(data["group"], -1)
            num_groups = getattr(dm, "num_groups", 1) if use_groups else 1
            names = getattr(dm, "group_names", None) if use_groups else None
            metric = GroupAccuracy(num_groups, names if names and len(names) == num_groups else None, train_counts if use_groups else None)
            metric.update(preds.cpu(), data[self.target].cpu(), groups.cpu())
            for key, value in metric.compute().items():
                values[f"{prefix}/{key}"] = float(value)
        return values


_FEATURE_KEYS = ("label", "group", "fine_label")


def _features(trainer: pl.Trainer, pl_module: pl.LightningModule, name: str, make_loader) -> dict[str, torch.Tensor]:
    """Features of one set, shared by every probe callback at the same point of training (the
    linear probe and the coarse-to-fine probe embed the training set once, not twice)."""
    stamp = (trainer.state.stage, trainer.global_step, trainer.current_epoch)
    cache = pl_module.__dict__.setdefault("_probe_feature_cache", {})
    if cache.get("stamp") != stamp:
        cache.clear()
        cache["stamp"] = stamp
    if name not in cache:
        cache[name] = extract_features(pl_module, make_loader(), _FEATURE_KEYS)
    return cache[name]
