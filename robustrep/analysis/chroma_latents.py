"""What do a Chroma-VAE's z1 and z2 carry? kNN read-outs of the label, the fine label and the
attribute.

Chroma-VAE works when z1 holds the shortcut and little else, and z2 holds the task features without
the shortcut. This analysis reads each part of the posterior mean ``mu`` with the kNN of the
method's stage 2 (:func:`~robustrep.evaluation.knn.knn_indices`, k = sqrt(N), the training images as
the bank) and scores it on every
test set, for three targets: the label, the fine label (e.g. the digit, i.e. the shape) and the
attribute (e.g. the colour; the first one when a benchmark has several). Targets a benchmark lacks
are skipped. It also counts the active units of each part (dimensions whose mean
varies over the training images, Var > 0.01). Signs of trouble: a high fine-label accuracy from z1
(z1 is not a bottleneck - lower ``z_p``), an attribute accuracy from z2 far from chance, a low
fine-label accuracy from z2 (z2 lost the shape).

With ``--pixel-baseline`` the same kNN also reads the grey image (channels averaged, so a colour
coded by the channel - red/green Colored MNIST - is gone): what a shape-only kNN on this data can
reach, the practical ceiling of the z2-kNN. It stores every training image, so keep it to small
benchmarks.

    robustrep analyze chroma-latents --ckpt runs/chroma_colored_mnist/<run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from robustrep.errors import ConfigError

PARTS = ("z1", "z2", "z")
GREY = "grey pixels"
TARGETS = ("label", "fine_label", "attribute")


@dataclass
class LatentReadout:
    k: int
    train_images: int
    active: dict[str, int]
    dims: dict[str, int]
    #: accuracy[eval set][part][target]; a target the benchmark does not have is left out
    accuracy: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"Chroma-VAE latents: kNN (k = {self.k}) fitted on {self.train_images} training images"
        ]
        lines.append(
            "active units: " + ", ".join(f"{p} {self.active[p]}/{self.dims[p]}" for p in PARTS)
        )
        for name, parts in self.accuracy.items():
            targets = [t for t in TARGETS if t in parts["z"]]
            lines.append(f"{name:<18}" + "".join(f"{t:>12}" for t in targets))
            lines += [
                f"  from {p:<12}" + "".join(f"{parts[p][t]:>12.3f}" for t in targets) for p in parts
            ]
        return "\n".join(lines)


@torch.no_grad()
def _encode(model, loader, pixels: bool = False) -> dict[str, torch.Tensor]:
    mus, grey, targets = [], [], {t: [] for t in TARGETS}
    for batch in loader:
        mus.append(model.encode(batch["image"].to(model.device))[0].float().cpu())
        if pixels:
            grey.append(batch["image"].float().mean(1).flatten(1))
        for t in TARGETS:
            if t in batch:
                value = batch[t]
                targets[t].append((value[:, 0] if value.dim() > 1 else value).long().cpu())
    out = {"mu": torch.cat(mus)}
    if pixels:
        out[GREY] = torch.cat(grey)
    out.update({t: torch.cat(v) for t, v in targets.items() if v})
    return out


def latent_readout(model, dm, pixel_baseline: bool = False) -> LatentReadout:
    """kNN accuracies of label / fine label / attribute from z1, z2 and all of ``mu`` (and, with
    ``pixel_baseline``, from the grey image) on every test set."""
    from robustrep.callbacks.chroma_diagnostics import ChromaDiagnostics
    from robustrep.evaluation.knn import knn_indices, knn_votes

    if not (hasattr(model, "encode") and hasattr(model, "dim_z1")):
        raise ConfigError(
            f"{type(model).__name__} is not a Chroma-VAE; chroma-latents "
            "analyses ChromaVAE checkpoints"
        )
    model.eval()
    train = _encode(model, dm.train_eval_dataloader(shard=False), pixel_baseline)
    n, d1 = train["mu"].shape[0], model.dim_z1
    k = max(1, round(math.sqrt(n)))
    parts = {"z1": slice(0, d1), "z2": slice(d1, None), "z": slice(None)}
    active = ChromaDiagnostics.active_units(train["mu"])
    result = LatentReadout(
        k,
        n,
        {p: int(active[s].sum()) for p, s in parts.items()},
        {p: int(train["mu"][:, s].shape[1]) for p, s in parts.items()},
    )
    # A target is read only where it varies in training (no fine labels / attribute: -1 or
    # constant).
    targets = [
        t for t in TARGETS if t in train and (train[t] >= 0).all() and train[t].unique().numel() > 1
    ]
    for name, ds in dm.splits.test.items():
        loader = dm.eval_loader(ds)
        test = _encode(model, loader, pixel_baseline)
        features = {p: (train["mu"][:, s], test["mu"][:, s]) for p, s in parts.items()}
        if pixel_baseline:
            features[GREY] = (train[GREY], test[GREY])
        result.accuracy[name] = {}
        for part, (train_x, test_x) in features.items():
            neighbours = knn_indices(train_x, test_x, k)  # one search per part, a vote per target
            result.accuracy[name][part] = {}
            for t in targets:
                votes = knn_votes(train[t][neighbours], int(max(train[t].max(), test[t].max())) + 1)
                result.accuracy[name][part][t] = float((votes.argmax(1) == test[t]).float().mean())
    return result
