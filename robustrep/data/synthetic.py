"""Procedurally generated benchmark with a controllable spurious correlation and hidden strata.

Input:
    ``channels`` x ``size`` x ``size`` images (3 x 16 x 16 by default; any size from 8 to 64 px).
    A light *shape* (the core feature) is drawn at a jittered position on a *background colour*
    (the spurious attribute), with Gaussian pixel noise.
Label:
    The shape family. With ``strata_per_class = s`` every class owns ``s`` distinct shapes (its
    hidden strata, exposed as ``fine_label``); ``label = fine_label // s``.
Groups:
    ``group = label * num_attributes + attribute``. The aligned attribute of class ``y`` is
    ``y % num_attributes``. In training the attribute equals the aligned one with probability
    ``correlation`` and is uniform over the other attributes otherwise, so the colour predicts the
    label almost as well as the shape but is far easier to read. Validation and test sets follow
    ``eval_correlation``: ``balanced`` (attribute independent of the label), ``reversed`` (never the
    aligned colour) or a number used like ``correlation``.
Splits:
    ``train_size`` / ``val_size`` / ``test_size`` examples generated from ``seed`` (each split with
    its own stream, so changing one size does not change the others).
Citation:
    robustrep's own construction, in the spirit of Colored MNIST (Arjovsky et al., 2019) and
    Waterbirds (Sagawa et al., 2020).
"""

from __future__ import annotations

import math

import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.datasets import TensorImageDataset
from robustrep.errors import ConfigError

#: Background colours of the attributes (RGB in [0, 1]); cycled when there are more attributes.
PALETTE = [
    (0.85, 0.25, 0.20),  # red
    (0.20, 0.45, 0.85),  # blue
    (0.25, 0.70, 0.30),  # green
    (0.85, 0.75, 0.15),  # yellow
    (0.60, 0.30, 0.75),  # purple
    (0.20, 0.75, 0.75),  # cyan
]
#: Grey levels standing in for colours when ``channels = 1``.
GREYS = [0.15, 0.45, 0.30, 0.60, 0.05, 0.52]


def shape_templates(num_shapes: int, size: int) -> torch.Tensor:
    """``num_shapes`` binary shape masks of ``size`` x ``size`` pixels (float 0/1).

    The first eight are simple strokes (bars, diagonals, ring, plus, square, X); further ones are
    fixed random blobs on a 4 x 4 grid. Shapes cover the central ~60% of the image.
    """
    coords = torch.linspace(-1.0, 1.0, size)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    w = max(0.18, 2.5 / size)  # stroke half-width in normalised units, at least ~1 px
    inside = (u.abs() <= 0.62) & (v.abs() <= 0.62)
    r = torch.sqrt(u**2 + v**2)
    strokes = [
        (v.abs() <= w) & inside,  # horizontal bar
        (u.abs() <= w) & inside,  # vertical bar
        ((u - v).abs() <= w * 1.4) & inside,  # diagonal
        ((u + v).abs() <= w * 1.4) & inside,  # anti-diagonal
        ((r - 0.45).abs() <= w),  # ring
        ((u.abs() <= w) | (v.abs() <= w)) & inside,  # plus
        # square
        (((u.abs() - 0.5).abs() <= w) & (v.abs() <= 0.5 + w))
        | (((v.abs() - 0.5).abs() <= w) & (u.abs() <= 0.5 + w)),
        (((u - v).abs() <= w * 1.4) | ((u + v).abs() <= w * 1.4)) & inside,  # X
    ]
    masks = [s.float() for s in strokes[:num_shapes]]
    # fixed: shapes are part of the benchmark, not the seed
    gen = torch.Generator().manual_seed(1234)
    while len(masks) < num_shapes:
        grid = (torch.rand(4, 4, generator=gen) < 0.45).float()
        blob = torch.nn.functional.interpolate(
            grid[None, None], size=(math.ceil(size * 0.6),) * 2, mode="nearest"
        )[0, 0]
        mask = torch.zeros(size, size)
        off = (size - blob.shape[0]) // 2
        mask[off : off + blob.shape[0], off : off + blob.shape[1]] = blob
        masks.append(mask)
    return torch.stack(masks)


def sample_attributes(
    labels: torch.Tensor, num_attributes: int, correlation: float | str, gen: torch.Generator
) -> torch.Tensor:
    """Spurious attributes for ``labels``: aligned (``label % num_attributes``) with probability
    ``correlation``, otherwise uniform over the other attributes. ``balanced`` draws them
    independently of the label; ``reversed`` never picks the aligned one."""
    n = labels.shape[0]
    if num_attributes == 1:
        return torch.zeros(n, dtype=torch.long)
    aligned = labels % num_attributes
    if correlation == "balanced":
        return torch.randint(num_attributes, (n,), generator=gen)
    if correlation == "reversed":
        p = 0.0
    else:
        p = float(correlation)
        if not 0.0 <= p <= 1.0:
            raise ConfigError(
                f"correlation must be in [0, 1], 'balanced' or 'reversed'; got {correlation!r}"
            )
    keep = torch.rand(n, generator=gen) < p
    shift = torch.randint(1, num_attributes, (n,), generator=gen)  # any other attribute, uniformly
    return torch.where(keep, aligned, (aligned + shift) % num_attributes)


def render(
    fine_labels: torch.Tensor,
    attributes: torch.Tensor,
    templates: torch.Tensor,
    channels: int,
    noise: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """Draw the images (uint8 N x C x S x S): jittered shape over an attribute-coloured
    background. Returns the images and the jittered shape masks (N x S x S, float 0/1).
    """
    n, size = fine_labels.shape[0], templates.shape[-1]
    shapes = templates[fine_labels]  # N x S x S
    jitter = max(1, size // 8)
    dy = torch.randint(-jitter, jitter + 1, (n,), generator=gen)
    dx = torch.randint(-jitter, jitter + 1, (n,), generator=gen)
    rows = (torch.arange(size)[None, :] - dy[:, None]).clamp(0, size - 1)  # N x S
    cols = (torch.arange(size)[None, :] - dx[:, None]).clamp(0, size - 1)
    shapes = shapes[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if channels == 3:
        colours = torch.tensor(PALETTE)[attributes % len(PALETTE)]  # N x 3
    else:
        colours = torch.tensor(GREYS)[attributes % len(GREYS)][:, None].expand(n, channels)
    colours = colours + 0.05 * torch.randn(n, channels, generator=gen)
    intensity = 0.75 + 0.25 * torch.rand(n, 1, 1, generator=gen)
    bg = colours[:, :, None, None].expand(n, channels, size, size)
    fg = (intensity * shapes)[:, None]
    images = bg * (1 - fg) + fg * 0.95
    images = images + noise * torch.randn(images.shape, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), shapes


class SyntheticSpurious(RobustDataModule):
    """Generated shapes on coloured backgrounds: the colour is a shortcut for the shape.

    Args:
        num_classes: number of labels (shape families).
        num_attributes: number of background colours (the spurious attribute); 1 = no shortcut.
        strata_per_class: distinct shapes per class (hidden strata, ``fine_label``).
        correlation: probability that a training example has its class's aligned colour. 0.95 gives
            a 5% minority; raise towards 1.0 for a harder shortcut.
        eval_correlation: ``balanced`` (default; every group equally likely), ``reversed`` or a
            probability, for the validation and test sets.
        size: image side in pixels (8-64).
        channels: 3 (colours) or 1 (grey levels).
        noise: standard deviation of the Gaussian pixel noise; larger makes the shape harder to
            read and the shortcut more attractive.
        train_size, val_size, test_size: examples per split.
        background_sets: also evaluate on ``mixed_same`` (every shape on its class's aligned
            colour) and ``mixed_rand`` (a uniformly random colour), ``test_size`` examples each,
            the Background Challenge's pair in miniature (for :class:`~robustrep.callbacks.
            BackgroundGap`). Default False: only ``test``. The test sets then also carry each
            image's shape mask (``foreground``, S x S, 1 = shape pixel) for ``robustrep analyze
            cim-mask``.
        **kwargs: the shared datamodule arguments (batch_size, num_workers, seed, ...).
    """

    benchmark_name = "synthetic"

    def __init__(
        self,
        num_classes: int = 2,
        num_attributes: int = 2,
        strata_per_class: int = 1,
        correlation: float = 0.95,
        eval_correlation: float | str = "balanced",
        size: int = 16,
        channels: int = 3,
        noise: float = 0.1,
        train_size: int = 4000,
        val_size: int = 1000,
        test_size: int = 2000,
        background_sets: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 8 <= size <= 64:
            raise ConfigError(f"size must be between 8 and 64 px, got {size}")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        if num_classes < 2 or num_attributes < 1 or strata_per_class < 1:
            raise ConfigError("need num_classes >= 2, num_attributes >= 1, strata_per_class >= 1")
        self.num_classes = num_classes
        self.num_attributes = num_attributes
        self.strata_per_class = strata_per_class
        self.num_fine_classes = num_classes * strata_per_class if strata_per_class > 1 else None
        self.correlation = correlation
        self.eval_correlation = eval_correlation
        self.size = size
        self.channels = channels
        self.noise = noise
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.sizes.update(mixed_same=test_size, mixed_rand=test_size)
        self.background_sets = background_sets
        self.image_shape = (channels, size, size)
        self.class_names = [f"shape{c}" for c in range(num_classes)]
        self.attribute_names = [f"colour{a}" for a in range(num_attributes)]

    def make_split(self, split: str) -> TensorImageDataset:
        """Generate one split deterministically from ``seed`` and the split name."""
        offset = {"train": 0, "val": 1, "test": 2, "mixed_same": 3, "mixed_rand": 4}[split]
        gen = torch.Generator().manual_seed(self.seed * 1000 + offset)
        n = self.sizes[split]
        fine = torch.randint(self.num_classes * self.strata_per_class, (n,), generator=gen)
        labels = fine // self.strata_per_class
        correlation = {"train": self.correlation, "mixed_same": 1.0, "mixed_rand": "balanced"}
        correlation = correlation.get(split, self.eval_correlation)
        attributes = sample_attributes(labels, self.num_attributes, correlation, gen)
        templates = shape_templates(self.num_classes * self.strata_per_class, self.size)
        images, shapes = render(fine, attributes, templates, self.channels, self.noise, gen)
        groups = labels * self.num_attributes + attributes
        extra = {}
        if self.background_sets and split not in ("train", "val"):
            extra["foreground"] = shapes > 0
        return TensorImageDataset(
            images, labels, groups, attribute=attributes, fine_label=fine, **extra
        )

    def build_splits(self) -> Splits:
        test_sets = ["test", "mixed_same", "mixed_rand"] if self.background_sets else ["test"]
        return Splits(
            train=self.make_split("train"),
            val={"val": self.make_split("val")},
            test={name: self.make_split(name) for name in test_sets},
        )
