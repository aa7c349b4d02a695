"""Augmentation presets shared by every benchmark.

Images reach a transform as float tensors C x H x W in [0, 1]; no mean/std normalisation is applied
(methods that want it normalise inside the model, so image-space losses such as CIM's MS-SSIM see
pixels in [0, 1]).

Presets:
    ``none``: resize only (evaluation).
    ``standard``: random crop with 1/8 padding + horizontal flip (supervised training).
    ``contrastive``: RandomResizedCrop(scale 0.2-1) + flip + ColorJitter(0.4, 0.4, 0.4, 0.1) with
        p = 0.8 + grayscale with p = 0.2 (SimCLR / SupCon / L_spread papers).
    ``contrastive_no_colour``: ``contrastive`` without its colour operations (resized crop + flip
        only), for benchmarks where colour is the spurious feature the augmentations must leave
        in (IP-IRM's self-supervised Colored MNIST); ``contrastive`` is the standard fix.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision.transforms import v2

from robustrep.errors import ConfigError

PRESETS = ("none", "standard", "contrastive", "contrastive_no_colour")


def build_transform(
    preset: str, image_shape: tuple[int, int, int], image_size: int | None = None
) -> Callable | None:
    """Return the transform of a preset for images of ``image_shape`` (C, H, W), or None for
    identity.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown augment preset {preset!r}; choose one of {', '.join(PRESETS)}")
    channels, height, width = image_shape
    size = (image_size, image_size) if image_size is not None else (height, width)
    resize = [] if size == (height, width) else [v2.Resize(size, antialias=True)]
    if preset == "none":
        return v2.Compose(resize) if resize else None
    if preset == "standard":
        pad = max(1, min(size) // 8)
        return v2.Compose(
            [
                *resize,
                v2.RandomCrop(size, padding=pad, padding_mode="reflect"),
                v2.RandomHorizontalFlip(),
            ]
        )
    ops: list = [
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if preset == "contrastive_no_colour":
        return v2.Compose(ops)
    if channels == 3:
        ops += [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
        ]
    else:
        ops += [v2.RandomApply([v2.ColorJitter(0.4, 0.4)], p=0.8)]
    return v2.Compose(ops)
