"""Minimal coresets from partial-training difficulty (L_spread paper, section 5.3 and App. E.3).

1. Train the configured method on random ``t``% subsets of the training set (``t`` in
   ``fractions``, ``repeats`` seeds each).
2. After each run record which training points (all of them, not only the subset) the model
   classifies correctly: with its classifier when it has one (the paper's CE head), otherwise with
   a logistic-regression probe fitted on the subset's frozen features. Which labels that head
   learns from is the protocol (``labelled_fraction``):

   - paper (``labelled_fraction=0.01``, the default of ``robustrep analyze coreset``): App. E.3,
     "we train the cross entropy head with 1% labeled data". We read 1% as of the full training
     set (as in App. F.2, where the contrastive head's data varies and the CE head keeps 1%):
     ``round(0.01 * N)`` examples, drawn (seeded, uniformly) from the run's subset, whose clean
     labels the CE head sees (SpreadSupCon's ``ce_labelled_fraction`` set to that count over the
     subset size) or the probe is fitted on; the contrastive loss sees the whole subset.
   - full-labels (``labelled_fraction=None``): the head learns every label of the subset (the
     first-shipped variant).
3. Bucket the points by how many runs got them right. To build a coreset of ``target`` times the
   training set, remove points - per class, one at a time - from the currently largest bucket
   (ties: the easier bucket) until the class has its share; which points of a bucket go is random
   (seeded). Large coresets lose easy points first; small ones keep a set of easy points.
4. Train a fresh model (``ERM`` with the config's backbone unless told otherwise) on the coreset
   and on a random subset of the same size, and report both test accuracies.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.utils.data import Subset

from robustrep.analysis.common import build_datamodule, build_model, embed_splits, quiet_trainer
from robustrep.checkpoints import import_class
from robustrep.errors import ConfigError
from robustrep.evaluation.features import extract_features, fit_linear_probe
from robustrep.evaluation.labels import labelled_subset


def bucket_prune(
    counts: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int = 0
) -> torch.Tensor:
    """Indices of the coreset (sorted) keeping ``round(fraction * n_c)`` points of every class
    ``c``.

    ``counts``: per point, how many partial-training runs classified it correctly.
    """
    gen = torch.Generator().manual_seed(seed)
    keep: list[torch.Tensor] = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        target = round(fraction * len(idx))
        values = torch.unique(counts[idx])
        buckets = [idx[counts[idx] == v] for v in values.tolist()]
        sizes = [len(b) for b in buckets]
        # remove one point from the largest bucket (ties: easiest)
        for _ in range(sum(sizes) - target):
            k = max(range(len(sizes)), key=lambda j: (sizes[j], values[j].item()))
            sizes[k] -= 1
        for bucket, size in zip(buckets, sizes):
            keep.append(bucket[torch.randperm(len(bucket), generator=gen)[:size]])
    return torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.long)


def random_subset(
    n: int, fraction: float, labels: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """A seeded random subset of ``round(fraction * n)`` indices (class-stratified when ``labels``
    given).
    """
    gen = torch.Generator().manual_seed(seed)
    if labels is None:
        return torch.randperm(n, generator=gen)[: round(fraction * n)].sort().values
    parts = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        parts.append(idx[torch.randperm(len(idx), generator=gen)[: round(fraction * len(idx))]])
    return torch.cat(parts).sort().values


def _restrict(dm, positions: torch.Tensor):
    """Restrict the datamodule's training split to ``positions`` (dataset ``index`` keys stay
    global).
    """
    dm.splits.train = Subset(dm.splits.train, positions.tolist())
    return dm


@dataclass
class CoresetResult:
    target: float
    size: int
    runs: int
    bucket_sizes: dict[int, int]
    test_acc: dict[str, float] = field(default_factory=dict)
    protocol: str = "full-labels"
    #: per partial-training run: how many training examples' labels its head learnt from
    labelled_per_run: list[int] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"coreset: {self.size} points ({self.target:.0%} of the training set) from "
            f"{self.runs} partial-training runs (protocol {self.protocol}; labelled examples per "
            f"run: {', '.join(map(str, self.labelled_per_run))})",
            "points per correctness count: "
            + ", ".join(f"{k}: {v}" for k, v in self.bucket_sizes.items()),
            f"{'fresh model trained on':<28} {'test acc':>9}",
        ]
        lines += [f"{k:<28} {v:>9.4f}" for k, v in self.test_acc.items()]
        return "\n".join(lines)


def correctness_counts(
    config: dict,
    fractions: Sequence[float],
    repeats: int,
    max_epochs: int,
    data_overrides: dict | None = None,
    seed: int = 0,
    trainer_kwargs: dict | None = None,
    labelled_fraction: float | None = None,
    labelled_per_run: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train on random subsets; returns ``(counts N, labels N)`` over the full training set (by
    position).

    ``labelled_fraction``: the paper's protocol (see the module docstring); None = every label of
    the subset. ``labelled_per_run``, if given, receives the number of labelled examples of each
    run as the trained model recorded it (or as the probe used it).
    """
    base = build_datamodule(config, data_overrides)
    labels = torch.cat([b["label"] for b in base.train_eval_dataloader(shard=False)])
    n = labels.shape[0]
    counts = torch.zeros(n, dtype=torch.long)
    cls = import_class(config["model"]["class_path"])
    has_head = bool((config["model"].get("init_args") or {}).get("ce_head", True))
    has_head = has_head and "ce_labelled_fraction" in inspect.signature(cls.__init__).parameters
    k = None if labelled_fraction is None else round(labelled_fraction * n)
    if k is not None and k < 1:
        raise ConfigError(
            f"coreset: --labelled-fraction {labelled_fraction} of {n} training examples labels "
            "none of them"
        )
    for t in fractions:
        for r in range(repeats):
            run_seed = seed + 1000 * r + int(round(100 * t))
            positions = random_subset(n, t, seed=run_seed)
            if k is not None and k > len(positions):
                raise ConfigError(
                    f"coreset: {k} labelled examples do not fit in a {t:.0%} subset "
                    f"({len(positions)} examples)"
                )
            dm = _restrict(build_datamodule(config, data_overrides), positions)
            overrides = None
            if k is not None and has_head:
                overrides = {"ce_labelled_fraction": k / len(positions), "labelled_seed": run_seed}
            # seeds first: the model's initial weights come from the run seed, not from whatever
            # the process drew before
            trainer = quiet_trainer(max_epochs, run_seed, **(trainer_kwargs or {}))
            model = build_model(config, dm, overrides)
            if k is not None and overrides is None and getattr(model, "has_classifier", False):
                raise ConfigError(
                    f"coreset --protocol paper: {cls.__name__} has a classifier but no "
                    "ce_labelled_fraction to train it on a labelled fraction; use --protocol "
                    "full-labels"
                )
            trainer.fit(model, dm)
            full = extract_features(model, base.train_eval_dataloader(shard=False), ("label",))
            if getattr(model, "has_classifier", hasattr(model, "head")):
                seen = getattr(model, "ce_labelled", None)
                used = len(positions) if seen is None else int(seen.sum())
                with torch.no_grad():
                    model.eval()
                    preds = model.head(full["features"].to(model.device)).argmax(1).cpu()
            else:
                fit_on = positions
                if k is not None:
                    fit_on = positions[
                        labelled_subset(len(positions), k / len(positions), run_seed)
                    ]
                used = len(fit_on)
                predict = fit_linear_probe(
                    full["features"][fit_on],
                    full["label"][fit_on],
                    int(labels.max()) + 1,
                    seed=run_seed,
                )
                preds = predict(full["features"])
            if labelled_per_run is not None:
                labelled_per_run.append(used)
            counts += (preds == labels).long()
    return counts, labels


def evaluate_subset(
    config: dict,
    positions: torch.Tensor,
    max_epochs: int,
    eval_model: dict | None,
    data_overrides: dict | None,
    seed: int,
    trainer_kwargs: dict | None,
) -> float:
    """Test accuracy of a fresh model trained on the training points at ``positions``."""
    dm = _restrict(build_datamodule(config, data_overrides), positions)
    spec = dict(config)
    if eval_model is not None:
        spec = {**config, "model": eval_model}
    trainer = quiet_trainer(max_epochs, seed, **(trainer_kwargs or {}))  # seeds the model's init
    model = build_model(spec, dm)
    trainer.fit(model, dm)
    test = embed_splits(model, dm, ("test",))["test"]
    with torch.no_grad():
        model.eval()
        preds = model.head(test["features"].to(model.device)).argmax(1).cpu()
    return (preds == test["label"]).double().mean().item()


def run_coreset(
    config: dict,
    target: float,
    fractions: Sequence[float] = (0.1, 0.2, 0.5),
    repeats: int = 3,
    max_epochs: int = 10,
    eval_epochs: int | None = None,
    eval_model: dict | None = None,
    eval_data_overrides: dict | None = None,
    data_overrides: dict | None = None,
    seed: int = 0,
    trainer_kwargs: dict | None = None,
    labelled_fraction: float | None = None,
) -> CoresetResult:
    """The whole coreset pipeline; ``eval_model`` is a ``{class_path, init_args}`` spec for the
    fresh model (default: ERM with the config's backbone), trained with ``eval_data_overrides``
    (default: one view, ``standard`` augmentation). ``labelled_fraction``: the partial-training
    runs' label protocol (0.01 = the paper's; None = every label of each subset)."""
    used: list[int] = []
    counts, labels = correctness_counts(
        config,
        fractions,
        repeats,
        max_epochs,
        data_overrides,
        seed,
        trainer_kwargs,
        labelled_fraction,
        used,
    )
    coreset = bucket_prune(counts, labels, target, seed)
    baseline = random_subset(len(labels), target, labels, seed)
    if eval_model is None:
        init = config["model"].get("init_args") or {}
        eval_model = {
            "class_path": "robustrep.methods.ERM",
            "init_args": {
                k: init[k]
                for k in ("backbone", "backbone_kwargs", "optimizer", "lr_scheduler")
                if k in init
            },
        }
    eval_overrides = {
        **(data_overrides or {}),
        "num_views": 1,
        "augment": "standard",
        **(eval_data_overrides or {}),
    }
    epochs = eval_epochs or max_epochs
    values, sizes = torch.unique(counts, return_counts=True)
    result = CoresetResult(
        target,
        len(coreset),
        len(fractions) * repeats,
        {int(v): int(s) for v, s in zip(values, sizes)},
        protocol="full-labels" if labelled_fraction is None else "paper",
        labelled_per_run=used,
    )
    result.test_acc["coreset (bucket pruning)"] = evaluate_subset(
        config, coreset, epochs, eval_model, eval_overrides, seed, trainer_kwargs
    )
    result.test_acc["random subset, same size"] = evaluate_subset(
        config, baseline, epochs, eval_model, eval_overrides, seed, trainer_kwargs
    )
    return result
