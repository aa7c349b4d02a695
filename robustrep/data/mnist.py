"""MNIST, MNIST-Coarse and FashionMNIST, and what every digit benchmark shares.

:class:`DigitsModule` is the base of every digit-based benchmark (here and in
:mod:`robustrep.data.colored_mnist` and :mod:`robustrep.data.digit_compositions`). It takes
``digits_source``: ``mnist`` reads torchvision's raw files under ``<root>/MNIST/raw``
(``download: true`` fetches them), ``sklearn`` uses the 1,797 embedded scikit-learn digits
(1,297 train / 500 test, upsampled to 28 x 28; no files needed). Validation examples are always
carved from the training digits by a permutation seeded with ``seed`` (``val_fraction``), so the
official test digits stay untouched. Everything is held in memory as uint8 tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.datasets import TensorImageDataset
from robustrep.data.digits import DIGIT_SOURCES, load_digits
from robustrep.data.files import find_idx, read_idx, seeded_split
from robustrep.data.presets import RecipeMixin
from robustrep.errors import ConfigError

MNIST_SOURCE = (
    "http://yann.lecun.com/exdb/mnist/ (torchvision.datasets.MNIST "
    "downloads it with download: true)"
)
FASHION_SOURCE = (
    "https://github.com/zalandoresearch/fashion-mnist (torchvision.datasets.FashionMNIST "
    "downloads it with download: true)"
)
FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
FASHION_LAYOUT = """<root>/FashionMNIST/raw/
    train-images-idx3-ubyte   (or .gz)
    train-labels-idx1-ubyte
    t10k-images-idx3-ubyte
    t10k-labels-idx1-ubyte"""


def load_fashion_mnist(
    root: str, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """FashionMNIST from torchvision's raw idx files as (uint8 N x 1 x 28 x 28, int64 labels)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    prefix = "train" if train else "t10k"
    if (
        download
        and not (raw / f"{prefix}-images-idx3-ubyte").exists()
        and not (raw / f"{prefix}-images-idx3-ubyte.gz").exists()
    ):
        from torchvision.datasets import FashionMNIST as TVFashion

        TVFashion(root, train=train, download=True)
    hint = (
        "Set download: true to fetch it with torchvision, or point root at the folder "
        "that contains FashionMNIST/."
    )
    images = read_idx(
        find_idx(raw, f"{prefix}-images-idx3-ubyte", FASHION_LAYOUT, FASHION_SOURCE, hint)
    )
    labels = read_idx(
        find_idx(raw, f"{prefix}-labels-idx1-ubyte", FASHION_LAYOUT, FASHION_SOURCE, hint)
    ).long()
    return images[:, None].contiguous(), labels


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) index tensors carving ``val_fraction`` of ``n`` training examples."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    val, train = seeded_split(n, [val_fraction, 1.0 - val_fraction], seed)
    return train, val


class DigitsModule(RecipeMixin, RobustDataModule):
    """Shared arguments of the digit benchmarks (``digits_source``, ``val_fraction``,
    ``sklearn_box``). Their ``standard`` augmentation translates by up to 2 px and never flips
    (:mod:`robustrep.data.presets`).

    ``sklearn_box`` (``digits_source: sklearn`` only; real MNIST is already in its own layout):
    the 8 x 8 digits are upsampled into a centred square of this side inside the 28 x 28 frame.
    28 (default, as in earlier releases) fills the frame with ink; 20 is MNIST's layout (ink in a
    20 x 20 box with a 4 px border) - use it where the geometry matters, e.g. Grid MNIST, where
    a 20 x 20 crop can then hold a whole digit as on real MNIST.
    """

    augment_recipe = "digits"

    def __init__(
        self,
        digits_source: str = "mnist",
        val_fraction: float = 1 / 12,
        sklearn_box: int = 28,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 1 <= sklearn_box <= 28:
            raise ConfigError(f"sklearn_box must be in [1, 28], got {sklearn_box}")
        self.sklearn_box = sklearn_box
        if digits_source not in DIGIT_SOURCES:
            raise ConfigError(
                f"digits_source must be one of {DIGIT_SOURCES}, got {digits_source!r}"
            )
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.digits_source = digits_source
        self.val_fraction = val_fraction
        self.image_shape = (1, 28, 28)

    def digits(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(uint8 N x 1 x 28 x 28, digit labels) of the train or test split of ``digits_source``.

        Raw MNIST files are read directly when present, compressed (``.gz``) or not; otherwise
        :func:`robustrep.data.digits.load_digits` downloads them (``download: true``) or raises
        the error that names the missing files.
        """
        if self.digits_source == "mnist":
            raw = Path(self.root) / "MNIST" / "raw"
            prefix = "train" if train else "t10k"
            names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
            found = [
                next((raw / c for c in (n, n + ".gz") if (raw / c).exists()), None) for n in names
            ]
            if all(found):
                return read_idx(found[0])[:, None].contiguous(), read_idx(found[1]).long()
        return load_digits(
            self.digits_source,
            self.root,
            train=train,
            download=self.download,
            seed=self.seed,
            sklearn_box=self.sklearn_box,
        )

    def train_val_digits(
        self,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(train images, labels), (val images, labels): val carved from the training digits,
        seeded.
        """
        images, labels = self.digits(train=True)
        tr, va = split_indices(images.shape[0], self.val_fraction, self.seed)
        return (images[tr], labels[tr]), (images[va], labels[va])


class MNIST(DigitsModule):
    """Handwritten digits, 10 classes.

    Input: 1 x 28 x 28 grey digits. Label: the digit. Groups: one per class (worst-group accuracy =
    worst-class accuracy). Splits: official train minus a seeded ``val_fraction`` (default 1/12,
    i.e. 55,000 / 5,000 on real MNIST) for validation; official test set.
    Citation: LeCun et al., 1998.

    Args:
        digits_source: ``mnist`` (torchvision raw files under ``<root>/MNIST/raw``) or ``sklearn``
            (the embedded 8 x 8 digits upsampled to 28 x 28; for demos and tests).
        val_fraction: share of the training digits held out for validation.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "mnist"

    def __init__(
        self, digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs
    ) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]

    def make(self, images: torch.Tensor, digits: torch.Tensor) -> TensorImageDataset:
        return TensorImageDataset(images, digits, digits.clone())

    def build_splits(self) -> Splits:
        (tx, ty), (vx, vy) = self.train_val_digits()
        test_x, test_y = self.digits(train=False)
        return Splits(
            train=self.make(tx, ty),
            val={"val": self.make(vx, vy)},
            test={"test": self.make(test_x, test_y)},
        )


class MNISTCoarse(MNIST):
    """MNIST with coarse labels: digits 0-4 -> 0, 5-9 -> 1; the digit is the fine label (stratum).

    Input, splits: as :class:`MNIST`. Label: ``digit >= 5``. ``fine_label``: the digit.
    Groups: with ``group_by: fine`` (default) the attribute is the digit's position inside its
    coarse class (``digit % 5``), so ``group = label * 5 + digit % 5 = digit`` and worst-group
    accuracy is the worst-stratum accuracy; ``group_by: label`` gives one group per coarse class.
    Citation: coarse-to-fine protocol of Chen et al., 2022 (L_spread).

    Args:
        group_by: ``fine`` (10 groups = digits) or ``label`` (2 groups).
        digits_source, val_fraction, **kwargs: as :class:`MNIST`.
    """

    benchmark_name = "mnist_coarse"

    def __init__(
        self,
        group_by: str = "fine",
        digits_source: str = "mnist",
        val_fraction: float = 1 / 12,
        **kwargs,
    ) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        if group_by not in ("fine", "label"):
            raise ConfigError(f"group_by must be 'fine' or 'label', got {group_by!r}")
        self.group_by = group_by
        self.num_classes = 2
        self.num_fine_classes = 10
        self.class_names = ["0-4", "5-9"]
        if group_by == "fine":
            self.num_attributes = 5
            self.attribute_names = [f"stratum{i}" for i in range(5)]

    def make(self, images: torch.Tensor, digits: torch.Tensor) -> TensorImageDataset:
        labels = (digits >= 5).long()
        if self.group_by == "fine":
            return TensorImageDataset(
                images, labels, digits.clone(), attribute=digits % 5, fine_label=digits
            )
        return TensorImageDataset(images, labels, labels.clone(), fine_label=digits)


class FashionMNIST(RobustDataModule):
    """Zalando's FashionMNIST, 10 clothing classes.

    Input: 1 x 28 x 28 grey images. Label: the class (0 t-shirt ... 3 dress, 4 coat ... 9 ankle
    boot). Groups: one per class. Splits: official train minus a seeded ``val_fraction``; official
    test. Files: ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
    Citation: Xiao et al., 2017.

    Args:
        val_fraction: share of the training images held out for validation.
        **kwargs: the shared datamodule arguments (``download: true`` fetches the files).
    """

    benchmark_name = "fashion_mnist"

    def __init__(self, val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(**kwargs)
        self.val_fraction = val_fraction
        self.num_classes = 10
        self.class_names = list(FASHION_CLASSES)
        self.image_shape = (1, 28, 28)

    def build_splits(self) -> Splits:
        x, y = load_fashion_mnist(self.root, True, self.download)
        tr, va = split_indices(x.shape[0], self.val_fraction, self.seed)
        tx, ty = load_fashion_mnist(self.root, False, self.download)
        return Splits(
            train=TensorImageDataset(x[tr], y[tr], y[tr]),
            val={"val": TensorImageDataset(x[va], y[va], y[va])},
            test={"test": TensorImageDataset(tx, ty, ty)},
        )
