"""Digit images for every MNIST-derived benchmark: real MNIST files or the embedded sklearn digits.

``digits_source: sklearn`` uses the 1,797 handwritten 8 x 8 digits that ship with scikit-learn
(UCI optdigits test set), upsampled bilinearly to 28 x 28 (or into a smaller centred box, see
``box``), so demos and tests run with real handwriting and no download. ``digits_source: mnist``
reads torchvision's raw MNIST files under ``<root>/MNIST/raw`` (``download=True`` fetches them).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from robustrep.errors import ConfigError, DataNotFoundError

DIGIT_SOURCES = ("sklearn", "mnist")


@lru_cache(maxsize=4)
def sklearn_digits(size: int = 28, box: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 scikit-learn digits as (uint8 N x 1 x size x size, int64 labels).

    The 8 x 8 digits are upsampled bilinearly to ``box x box`` (default: ``size``, so the ink
    fills the frame) and centred in the ``size x size`` frame with a zero border. ``box = 20`` at
    ``size = 28`` is MNIST's own layout (digits normalised into a 20 x 20 box inside 28 x 28).
    """
    from sklearn.datasets import load_digits

    box = size if box is None else box
    if not 1 <= box <= size:
        raise ConfigError(f"box must be in [1, {size}], got {box}")
    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # values 0..16
    images = torch.nn.functional.interpolate(
        images, size=(box, box), mode="bilinear", align_corners=False
    )
    before = (size - box) // 2
    images = torch.nn.functional.pad(
        images, (before, size - box - before, before, size - box - before)
    )
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), torch.as_tensor(
        bunch.target, dtype=torch.long
    )


def load_digits(
    source: str = "sklearn",
    root: str = "data",
    train: bool = True,
    download: bool = False,
    seed: int = 0,
    sklearn_box: int = 28,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits of one split as (uint8 N x 1 x 28 x 28, labels).

    For ``sklearn`` the 1,797 digits are split once, by a permutation seeded with ``seed``, into a
    training part (the first 1,297) and a test part (the last 500); ``sklearn_box`` is the side of
    the centred box their ink is upsampled into (see :func:`sklearn_digits`).
    """
    if source == "sklearn":
        images, labels = sklearn_digits(28, sklearn_box)
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
                "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
                "optionally .gz). Set download: true to fetch them from the public MNIST "
                "mirrors, point root at the folder that contains MNIST/, or use digits_source: "
                "sklearn for the embedded digits."
            ) from err
        return ds.data[:, None].contiguous(), ds.targets.long()
    raise ConfigError(f"digits_source must be one of {DIGIT_SOURCES}, got {source!r}")
