"""Benchmark-specific meaning of the ``standard`` and ``contrastive`` augmentation presets.

:mod:`robustrep.data.transforms` defines generic presets for square images. Several benchmarks
need their papers' own training augmentation instead; a datamodule names its recipe in
``standard_recipe`` and :func:`train_transform_for` builds it. Images arrive as float C x H x W in
[0, 1] at the benchmark's ``image_shape``; every recipe keeps that shape.

=============== ===================================================================
recipe          ``standard`` training augmentation
=============== ===================================================================
``digits``      random translation by up to 2 px (pad 2 + crop), **no flip** (flipping
                changes digits)
``waterbirds``  RandomResizedCrop(scale 0.7-1, ratio 3/4-4/3) + horizontal flip (group DRO)
``celeba``      RandomResizedCrop(scale 0.7-1, ratio 1-4/3) + horizontal flip (group DRO)
``domainbed``   RandomResizedCrop(scale 0.7-1) + flip + ColorJitter(0.3, 0.3, 0.3, 0.3) +
                grayscale p = 0.1 (DomainBed's VLCS augmentation)
``imagenet``    RandomResizedCrop(scale 0.08-1) + horizontal flip (IN-9, VIPriors)
``isic``        horizontal + vertical flips (GEORGE)
``xray``        RandomResizedCrop(scale 0.8-1, ratio 0.9-1.1), no flip (anatomy is not
                symmetric) [ours]
=============== ===================================================================

``contrastive`` keeps the generic SimCLR recipe but crops to the benchmark's (possibly non-square)
shape; ``digits`` and ``xray`` drop the flip, 2-channel images get no colour jitter;
``contrastive_no_colour`` is the same without any colour operation. When
``image_size`` resizes the images the generic presets of :mod:`robustrep.data.transforms` apply
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.transforms import v2

from robustrep.data.transforms import build_transform

RECIPES = ("digits", "waterbirds", "celeba", "domainbed", "imagenet", "isic", "xray")


def standard_recipe(recipe: str, image_shape: tuple[int, int, int]) -> Callable:
    """The ``standard`` training transform of a recipe for images of ``image_shape``."""
    channels, h, w = image_shape
    size = (h, w)
    if recipe == "digits":
        return v2.RandomCrop(size, padding=2)
    if recipe == "waterbirds":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.75, 4 / 3), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
    if recipe == "celeba":
        return v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(1.0, 4 / 3), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )
    if recipe == "domainbed":
        ops: list = [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if channels == 3:
            ops += [v2.ColorJitter(0.3, 0.3, 0.3, 0.3), v2.RandomGrayscale(p=0.1)]
        return v2.Compose(ops)
    if recipe == "imagenet":
        return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
    if recipe == "isic":
        return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()])
    if recipe == "xray":
        return v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True)
    raise ValueError(f"unknown augmentation recipe {recipe!r}; choose one of {', '.join(RECIPES)}")


def contrastive_recipe(
    recipe: str, image_shape: tuple[int, int, int], colour: bool = True
) -> Callable:
    """SimCLR-style views (resized crop scale 0.2-1, flip, colour jitter, grayscale) at
    ``image_shape``; ``colour=False`` leaves out the colour operations.
    """
    channels, h, w = image_shape
    ops: list = [v2.RandomResizedCrop((h, w), scale=(0.2, 1.0), antialias=True)]
    if recipe not in ("digits", "xray"):
        ops.append(v2.RandomHorizontalFlip())
    if not colour:
        return v2.Compose(ops)
    if channels == 3:
        ops += [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    elif channels == 1:
        ops.append(v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8))
    return v2.Compose(ops)  # 2-channel images (IRM Colored MNIST) get no colour jitter


def train_transform_for(dm, recipe: str) -> Callable | None:
    """The training transform of datamodule ``dm`` (its ``augment`` preset) under ``recipe``."""
    if dm.image_size is not None and tuple(dm.image_shape[1:]) != (dm.image_size, dm.image_size):
        return build_transform(dm.augment, dm.image_shape, dm.image_size)
    if dm.augment == "standard":
        return standard_recipe(recipe, dm.image_shape)
    if dm.augment in ("contrastive", "contrastive_no_colour"):
        return contrastive_recipe(recipe, dm.image_shape, colour=dm.augment == "contrastive")
    return build_transform(dm.augment, dm.image_shape, dm.image_size)


class RecipeMixin:
    """Mixin for a :class:`~robustrep.data.base.RobustDataModule`: ``standard``/``contrastive``
    follow the class attribute ``augment_recipe`` (see the table in
    :mod:`robustrep.data.presets`)."""

    augment_recipe: str = "imagenet"

    def train_transform(self) -> Callable | None:
        return train_transform_for(self, self.augment_recipe)
