"""Digit images for every MNIST-derived benchmark: real MNIST files or the embedded sklearn digits.

``digits_source: sklearn`` uses the 1,797 handwritten 8 x 8 digits that ship with scikit-learn
(UCI optdigits test set), upsampled bilinearly to 28 x 28, so demos and tests run with real
handwriting and no download. ``digits_source: mnist`` reads torchvision's raw MNIST files under
``<root>/MNIST/raw`` (``download=True`` fetches them).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from robustrep.errors import DataNotFoundError

DIGIT_SOURCES = ("sklearn", "mnist")


@lru_cache(maxsize=2)
def sklearn_digits(size: int = 28) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 scikit-learn digits as (uint8 N x 1 x size x size, int64 labels)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # values 0..16
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), torch.as_tensor(bunch.target, dtype=torch.long)


def load_digits(source: str = "sklearn", root: str = "data", train: bool = True, download: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of one split as (uint8 N x 1 x 28 x 28, labels).

    For ``sklearn`` the 1,797 digits are split once, by a permutation seeded with ``seed``, into a
    training part (the first 1,297) and a test part (the last 500).
    """
    if source == "sklearn":
        images, labels = sklearn_digits()
        perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
        idx = perm[:1297] if train else perm[1297:]
        return images[idx], labels[idx]
    if source == "mnist":
        from torchvision.datasets import MNIST

        try:
            ds = MNIST(root, train=train, download=download)
        except RuntimeError as err:
            raise DataNotFoundError(
                f"MNIST files not found under {root}/MNIST/raw (expected train-images-idx3-ubyte, "
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz). "
                "Set download: true to fetch them from the public MNIST mirrors, point root at the folder "
                "that contains MNIST/, or use digits_source: sklearn for the embedded digits."
            ) from err
        return ds.data[:, None].contiguous(), ds.targets.long()
    raise ValueError(f"digits_source must be one of {DIGIT_SOURCES}, got {source!r}")
