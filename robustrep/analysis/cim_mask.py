r"""Where does CIM's mask put its weight? Mean mask on the foreground and on the background.

CIM's claim (fig. 2a of the paper) is that the Transformation Network keeps the task-relevant
pixels (the digit) and suppresses the nuisance (the coloured background). This analysis measures
it on an evaluation set: the mean of ``model.mask(x)`` over every pixel, per class and, when the
datamodule can tell foreground pixels apart (a ``foreground(images)`` method, e.g.
:class:`~robustrep.data.ColoredMNISTCIM`: the digit's strokes, or a ``foreground`` mask in each
example, e.g. :class:`~robustrep.data.SyntheticSpurious` with ``background_sets``: the shape), over
the foreground and the background separately. A mask that keeps the shortcut has
``background >= foreground``.

    robustrep analyze cim-mask --ckpt runs/cim_colored_mnist/<run>/checkpoints/last.ckpt \
        --set digits_source=sklearn
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from robustrep.errors import ConfigError


@dataclass
class MaskResult:
    eval_set: str
    images: int
    mean: float
    foreground: float | None
    background: float | None
    per_class: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"CIM mask on {self.eval_set} ({self.images} images)",
            f"{'pixels':<24} {'mean mask':>9}",
            f"{'all':<24} {self.mean:>9.4f}",
        ]
        if self.foreground is not None:
            lines += [
                f"{'foreground':<24} {self.foreground:>9.4f}",
                f"{'background':<24} {self.background:>9.4f}",
            ]
        lines += [f"{'class ' + name:<24} {value:>9.4f}" for name, value in self.per_class.items()]
        return "\n".join(lines)


@torch.no_grad()
def mask_statistics(model, dm, eval_set: str | None = None) -> MaskResult:
    """Mean mask of ``model`` (anything with ``mask(images)``) over ``dm``'s test set ``eval_set``
    (default: the primary one), overall, per class and on the foreground / background."""
    if not hasattr(model, "mask"):
        raise ConfigError(
            f"{type(model).__name__} has no input mask; cim-mask analyses CIM checkpoints"
        )
    tests = dm.splits.test
    name = eval_set or next(iter(tests))
    if name not in tests:
        raise ConfigError(f"no test set {name!r}; {type(dm).__name__} has {', '.join(tests)}")
    loader = dm.eval_loader(tests[name])
    split = getattr(dm, "foreground", None)
    sums = {"all": 0.0, "fg": 0.0, "bg": 0.0}
    counts = {"all": 0, "fg": 0, "bg": 0}
    class_sum = torch.zeros(dm.num_classes, dtype=torch.float64)
    class_count = torch.zeros(dm.num_classes, dtype=torch.float64)
    images = 0
    model.eval()
    for batch in loader:
        x = batch["image"].to(model.device)
        mask = model.mask(x).float().cpu()  # N x 1 x H x W
        images += x.shape[0]
        sums["all"] += float(mask.sum())
        counts["all"] += mask.numel()
        per_image = mask.flatten(1).mean(1).double()
        class_sum.index_add_(0, batch["label"], per_image)
        class_count.index_add_(0, batch["label"], torch.ones_like(per_image))
        if "foreground" in batch or split is not None:
            if "foreground" in batch:  # the benchmark's own shape masks (N x H x W)
                fg = batch["foreground"].bool().unsqueeze(1)
            else:
                fg = split(x.cpu())
            sums["fg"] += float(mask[fg].sum())
            counts["fg"] += int(fg.sum())
            sums["bg"] += float(mask[~fg].sum())
            counts["bg"] += int((~fg).sum())
    names = list(getattr(dm, "class_names", None) or range(dm.num_classes))
    per_class = {
        str(names[c]): float(class_sum[c] / class_count[c])
        for c in range(dm.num_classes)
        if class_count[c] > 0
    }
    fg_mean = sums["fg"] / counts["fg"] if counts["fg"] else None
    bg_mean = sums["bg"] / counts["bg"] if counts["bg"] else None
    return MaskResult(
        name, images, sums["all"] / max(counts["all"], 1), fg_mean, bg_mean, per_class
    )
