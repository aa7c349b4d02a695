"""Frozen features and the linear probe fitted on them (used by callbacks, analyses and methods)."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch

from robustrep.distributed import first_occurrences, gather_no_grad


@torch.no_grad()
def extract_features(
    module: pl.LightningModule | torch.nn.Module, loader, keys: tuple[str, ...] = ("label", "group")
) -> dict[str, torch.Tensor]:
    """``embed`` every batch of ``loader`` in eval mode; returns
    ``{"features": N x D (fp32, CPU), key: N}``.
    """
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device
    feats: list[torch.Tensor] = []
    extra: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for batch in loader:
        feats.append(module.embed(batch["image"].to(device)).float().flatten(1).cpu())
        for k in keys:
            extra[k].append(
                torch.as_tensor(batch[k])
                if k in batch
                else torch.full((len(batch["image"]),), -1, dtype=torch.long)
            )
    module.train(was_training)
    out = {"features": torch.cat(feats)}
    out.update({k: torch.cat(v) for k, v in extra.items()})
    return out


@torch.no_grad()
def encode_all(
    module: torch.nn.Module, loader, encode: Callable[[torch.Tensor], torch.Tensor], device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``encode(images)`` (fp32) and the ``label`` of every batch of ``loader``, on ``device``, with
    ``module`` in eval mode (its mode is restored)."""
    was_training = module.training
    module.eval()
    outputs, labels = [], []
    for batch in loader:
        outputs.append(encode(batch["image"].to(device)).float())
        labels.append(batch["label"].to(device))
    module.train(was_training)
    return torch.cat(outputs), torch.cat(labels)


@torch.no_grad()
def gathered_view_features(
    module: torch.nn.Module, loader, project: Callable[[torch.Tensor], torch.Tensor], device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index, f1, f2)``: the dataset indices and ``project`` of the first two ``views`` of every
    batch of ``loader`` (``module`` in eval mode), gathered from every DDP rank; the repeats of
    padded shards are dropped (the first occurrence of each index is kept)."""
    was_training = module.training
    module.eval()
    idx, f1, f2 = [], [], []
    for batch in loader:
        views = batch["views"]
        b = views[0].shape[0]
        z = project(torch.cat([views[0], views[1]]).to(device))
        idx.append(gather_no_grad(batch["index"].to(device)))
        f1.append(gather_no_grad(z[:b].contiguous()))
        f2.append(gather_no_grad(z[b:].contiguous()))
    module.train(was_training)
    index, f1_all, f2_all = torch.cat(idx), torch.cat(f1), torch.cat(f2)
    keep = first_occurrences(index)
    return index[keep], f1_all[keep], f2_all[keep]


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
    """Fit multinomial logistic regression on standardised features; returns
    ``predict(x) -> labels``.

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
            return classes[
                torch.as_tensor(clf.predict_proba(((z.double() - mean) / std).numpy()).argmax(1))
            ]

        return predict

    # Lightning evaluates under inference mode; the solver needs autograd, on ordinary tensors
    with torch.inference_mode(False), torch.enable_grad():
        xs = ((x - mean) / std).float().to(device).clone()
        yd = y.to(device).clone()
        torch.manual_seed(seed)
        linear = torch.nn.Linear(xs.shape[1], k).to(device)
        opt = torch.optim.LBFGS(
            linear.parameters(),
            lr=1.0,
            max_iter=max_iter,
            history_size=20,
            line_search_fn="strong_wolfe",
        )
        l2 = 1.0 / (2.0 * C * xs.shape[0])

        def closure():
            opt.zero_grad()
            logits = linear(xs)
            loss = torch.nn.functional.cross_entropy(logits, yd) + l2 * linear.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    linear = linear.cpu()

    @torch.no_grad()
    def predict_large(z: torch.Tensor) -> torch.Tensor:
        return linear(((z.double() - mean) / std).float()).argmax(1)

    return predict_large
