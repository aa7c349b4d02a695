"""The MNIST family: MNIST, MNIST-Coarse, FashionMNIST, the two Colored MNIST variants, Grid MNIST
and MF-Dominoes.

Every digit-based benchmark takes ``digits_source``: ``mnist`` reads torchvision's raw files under
``<root>/MNIST/raw`` (``download: true`` fetches them), ``sklearn`` uses the 1,797 embedded
scikit-learn digits (1,297 train / 500 test, upsampled to 28 x 28; no files needed). Validation
examples are always carved from the training digits by a permutation seeded with ``seed``
(``val_fraction``), so the official test digits stay untouched. Everything is held in memory as
uint8 tensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustrep.data.base import RobustDataModule, Splits, TensorImageDataset
from robustrep.data.digits import DIGIT_SOURCES, load_digits
from robustrep.data.files import find_idx, read_idx, seeded_split
from robustrep.data.presets import RecipeMixin

MNIST_SOURCE = "http://yann.lecun.com/exdb/mnist/ (torchvision.datasets.MNIST downloads it with download: true)"
FASHION_SOURCE = "https://github.com/zalandoresearch/fashion-mnist (torchvision.datasets.FashionMNIST downloads it with download: true)"
FASHION_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
FASHION_LAYOUT = """<root>/FashionMNIST/raw/
    train-images-idx3-ubyte   (or .gz)
    train-labels-idx1-ubyte
    t10k-images-idx3-ubyte
    t10k-labels-idx1-ubyte"""


def load_fashion_mnist(root: str, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """FashionMNIST from torchvision's raw idx files as (uint8 N x 1 x 28 x 28, int64 labels)."""
    raw = Path(root) / "FashionMNIST" / "raw"
    prefix = "train" if train else "t10k"
    if download and not (raw / f"{prefix}-images-idx3-ubyte").exists() and not (raw / f"{prefix}-images-idx3-ubyte.gz").exists():
        from torchvision.datasets import FashionMNIST as TVFashion

        TVFashion(root, train=train, download=True)
    hint = "Set download: true to fetch it with torchvision, or point root at the folder that contains FashionMNIST/."
    images = read_idx(find_idx(raw, f"{prefix}-images-idx3-ubyte", FASHION_LAYOUT, FASHION_SOURCE, hint))
    labels = read_idx(find_idx(raw, f"{prefix}-labels-idx1-ubyte", FASHION_LAYOUT, FASHION_SOURCE, hint)).long()
    return images[:, None].contiguous(), labels


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) index tensors carving ``val_fraction`` of ``n`` training examples."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    val, train = seeded_split(n, [val_fraction, 1.0 - val_fraction], seed)
    return train, val


def exact_mask(n: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A bool mask with exactly ``round(fraction * n)`` True entries at seeded random positions."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[: int(round(fraction * n))]] = True
    return mask


class _DigitsModule(RecipeMixin, RobustDataModule):
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

    def __init__(self, digits_source: str = "mnist", val_fraction: float = 1 / 12, sklearn_box: int = 28, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 1 <= sklearn_box <= 28:
            raise ValueError(f"sklearn_box must be in [1, 28], got {sklearn_box}")
        self.sklearn_box = sklearn_box
        if digits_source not in DIGIT_SOURCES:
            raise ValueError(f"digits_source must be one of {DIGIT_SOURCES}, got {digits_source!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
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
            found = [next((raw / c for c in (n, n + ".gz") if (raw / c).exists()), None) for n in names]
            if all(found):
                return read_idx(found[0])[:, None].contiguous(), read_idx(found[1]).long()
        return load_digits(self.digits_source, self.root, train=train, download=self.download, seed=self.seed, sklearn_box=self.sklearn_box)

    def train_val_digits(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(train images, labels), (val images, labels): val carved from the training digits, seeded."""
        images, labels = self.digits(train=True)
        tr, va = split_indices(images.shape[0], self.val_fraction, self.seed)
        return (images[tr], labels[tr]), (images[va], labels[va])


class MNIST(_DigitsModule):
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

    def __init__(self, digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        self.num_classes = 10
        self.class_names = [str(d) for d in range(10)]

    def make(self, images: torch.Tensor, digits: torch.Tensor) -> TensorImageDataset:
        return TensorImageDataset(images, digits, digits.clone())

    def build_splits(self) -> Splits:
        (tx, ty), (vx, vy) = self.train_val_digits()
        test_x, test_y = self.digits(train=False)
        return Splits(train=self.make(tx, ty), val={"val": self.make(vx, vy)}, test={"test": self.make(test_x, test_y)})


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

    def __init__(self, group_by: str = "fine", digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        if group_by not in ("fine", "label"):
            raise ValueError(f"group_by must be 'fine' or 'label', got {group_by!r}")
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
            return TensorImageDataset(images, labels, digits.clone(), attribute=digits % 5, fine_label=digits)
        return TensorImageDataset(images, labels, labels.clone(), fine_label=digits)


class FashionMNIST(RobustDataModule):
    """Zalando's FashionMNIST, 10 clothing classes.

    Input: 1 x 28 x 28 grey images. Label: the class (0 t-shirt ... 3 dress, 4 coat ... 9 ankle boot).
    Groups: one per class. Splits: official train minus a seeded ``val_fraction``; official test.
    Files: ``<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
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


# ------------------------------------------------------------------------------------ colored MNIST
#: RGB colours of CIM's Colored MNIST: attribute 0 = yellow, 1 = blue.
CIM_COLOURS = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def colour_digits(images: torch.Tensor, colours: torch.Tensor, region: str) -> torch.Tensor:
    """Paint grey digits (uint8 N x 1 x H x W) with per-example RGB ``colours`` (N x 3 in [0, 1]).

    ``background``: white strokes on a coloured background; ``digit``: coloured strokes on black;
    ``both``: coloured strokes on a background of the same colour at 50% brightness.
    """
    ink = images.float() / 255.0  # N x 1 x H x W
    c = colours[:, :, None, None]
    if region == "background":
        out = c * (1.0 - ink) + ink
    elif region == "digit":
        out = c * ink
    elif region == "both":
        out = 0.5 * c * (1.0 - ink) + c * ink
    else:
        raise ValueError(f"colour_region must be background, digit or both; got {region!r}")
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


class ColoredMNISTCIM(_DigitsModule):
    """Colored MNIST as in CIM (Taghanaki et al., 2021): 0-4 vs 5-9 with a yellow/blue background.

    Input: 3 x 28 x 28; white strokes on a coloured background (``colour_region``).
    Label: ``digit >= 5`` (``fine_label`` = digit). Attribute: background colour, 0 = yellow,
    1 = blue. Groups: ``2 * label + colour`` (4 groups).

    Construction (paper section 4.1, read literally): call yellow the *test colour* of 0-4 and blue
    the test colour of 5-9. In training exactly ``alpha`` percent of each class get their test
    colour and the other ``100 - alpha`` percent the opposite one (alpha in {0.5, 1, 2} in the paper),
    so training colour is an almost perfect but *reversed* shortcut. At test time a fraction
    ``test_aligned`` of each class gets its test colour (1.0 = the text: every 0-4 yellow, every 5-9
    blue). Validation is carved from the training digits and coloured like training.

    Measured warning (METHODS.md): read literally, a colour-reading classifier scores ~0% on test,
    while the paper reports ERM at 54.9%. Fig. 2b's caption instead calls alpha "the proportion of
    digits colored with the opposite background color at test time". Both readings are available:
    ``test_aligned = 1.0`` (text, default), ``test_aligned = alpha / 100`` (test coloured like
    training), ``0.5`` (colour independent of the label at test). The extra test set
    ``test_balanced`` (colour independent of the label) is always evaluated too, so every run
    reports how much shape was learned.

    Measured here (sklearn digits, seed 0, the paper's MLP 1024-512-256, Adam 1e-3, batch 64,
    20 epochs), accuracy on ``test`` / ``test_balanced``: ``background`` and ``both`` 0.00 / 0.50 at
    alpha 1 and 2 (the colour decides everything); ``colour_region: digit`` 0.21 / 0.63 (alpha 1)
    and 0.08 / 0.55 (alpha 2). ERM's 54.9% in the paper matches a test set on which colour carries
    no label information (``test_balanced``, or ``test_aligned: 0.5``) with a little shape learned,
    not the reversed test of the text; we keep the text as the default and report both.

    Splits: train digits minus ``val_fraction`` (seeded) -> train / val; official test digits -> test.

    Args:
        alpha: percent (0-100) of training digits per class coloured with their test colour.
        test_aligned: fraction (0-1) of test digits per class coloured with their test colour.
        colour_region: ``background`` (paper), ``digit`` or ``both``.
        digits_source, val_fraction, **kwargs: as :class:`MNIST`.
    """

    benchmark_name = "colored_mnist_cim"

    def __init__(
        self,
        alpha: float = 1.0,
        test_aligned: float = 1.0,
        colour_region: str = "background",
        digits_source: str = "mnist",
        val_fraction: float = 1 / 12,
        **kwargs,
    ) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        if not 0.0 <= alpha <= 100.0:
            raise ValueError(f"alpha is a percentage in [0, 100], got {alpha}")
        if not 0.0 <= test_aligned <= 1.0:
            raise ValueError(f"test_aligned must be in [0, 1], got {test_aligned}")
        if colour_region not in ("background", "digit", "both"):
            raise ValueError(f"colour_region must be background, digit or both; got {colour_region!r}")
        self.alpha = alpha
        self.test_aligned = test_aligned
        self.colour_region = colour_region
        self.num_classes = 2
        self.num_attributes = 2
        self.num_fine_classes = 10
        self.class_names = ["0-4", "5-9"]
        self.attribute_names = ["yellow", "blue"]
        self.image_shape = (3, 28, 28)

    def foreground(self, images: torch.Tensor) -> torch.Tensor:
        """Boolean N x 1 x H x W map of the pixels whose ink exceeds 0.5 (the digit's strokes), read
        back from images in [0, 1] painted by :func:`colour_digits` (for ``robustrep analyze
        cim-mask``)."""
        if self.colour_region == "background":  # c * (1 - ink) + ink: every channel >= ink
            return images.min(1, keepdim=True).values > 0.5
        if self.colour_region == "digit":  # c * ink: the colour's full channel is ink
            return images.max(1, keepdim=True).values > 0.5
        return images.max(1, keepdim=True).values > 0.75  # both: c * (0.5 + 0.5 * ink)

    def make(self, images: torch.Tensor, digits: torch.Tensor, aligned_fraction: float, stream: int) -> TensorImageDataset:
        """Colour one split: per class exactly ``round(aligned_fraction * n_class)`` get the test colour."""
        gen = torch.Generator().manual_seed(self.seed * 1000 + 100 + stream)
        labels = (digits >= 5).long()
        colours = 1 - labels  # start from the opposite of the test colour
        for y in (0, 1):
            idx = (labels == y).nonzero().squeeze(1)
            take = exact_mask(idx.numel(), aligned_fraction, gen)
            colours[idx[take]] = y
        rgb = colour_digits(images, CIM_COLOURS[colours], self.colour_region)
        return TensorImageDataset(rgb, labels, labels * 2 + colours, attribute=colours, fine_label=digits)

    def build_splits(self) -> Splits:
        (tx, ty), (vx, vy) = self.train_val_digits()
        test_x, test_y = self.digits(train=False)
        a = self.alpha / 100.0
        return Splits(
            train=self.make(tx, ty, a, 0),
            val={"val": self.make(vx, vy, a, 1)},
            test={"test": self.make(test_x, test_y, self.test_aligned, 2), "test_balanced": self.make(test_x, test_y, 0.5, 3)},
        )


class ColoredMNISTIRM(_DigitsModule):
    """Colored MNIST of Arjovsky et al. (2019), as used by Chroma-VAE: red/green digits.

    Input: the digit drawn in one colour channel: 2 x H x W (``channels: 2``, the IRM code: channel 0
    = red, 1 = green, the other channel zero) or 3 x H x W (``channels: 3``: R, G, blue zero);
    H = W = 28 by default or 14 (``size: 14``, IRM's 2x subsampling).
    Label: ``y^ = digit >= 5``, flipped with probability ``label_noise`` (0.25), so shape alone
    predicts the label at most 75% of the time. Attribute: the colour, ``y`` flipped with
    probability ``p_c``; ``p_c = train_colour_flip`` (0.1) for train/val, ``test_colour_flip`` (0.9)
    for the OOD test set. Groups: ``2 * label + colour``. ``fine_label``: the digit.
    With a list ``train_colour_flip: [0.1, 0.2]`` the training digits are divided into equal
    environments with those flip rates (IRM's two training environments); ``domain`` is the
    environment index (0 on val/test sets).

    Splits: training digits minus ``val_fraction`` -> train / val (val uses the first training flip
    rate). Test sets built from the official test digits: ``test`` (OOD, ``test_colour_flip``,
    primary) and ``test_iid`` (in-distribution, the first training flip rate).
    Every Bernoulli draw comes from a generator seeded with ``seed``.

    Args:
        label_noise: probability that the label is flipped.
        train_colour_flip: colour flip probability p_c in training (a float or one per environment).
        test_colour_flip: p_c of the OOD test set.
        size: 28 (default) or 14.
        channels: 2 (IRM code) or 3 (RGB).
        digits_source, val_fraction, **kwargs: as :class:`MNIST`.
    """

    benchmark_name = "colored_mnist_irm"

    def __init__(
        self,
        label_noise: float = 0.25,
        train_colour_flip: float | list[float] = 0.1,
        test_colour_flip: float = 0.9,
        size: int = 28,
        channels: int = 2,
        digits_source: str = "mnist",
        val_fraction: float = 1 / 12,
        **kwargs,
    ) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        if size not in (14, 28):
            raise ValueError(f"size must be 28 or 14, got {size}")
        if channels not in (2, 3):
            raise ValueError(f"channels must be 2 or 3, got {channels}")
        flips = [float(train_colour_flip)] if isinstance(train_colour_flip, int | float) else [float(p) for p in train_colour_flip]
        for p in [label_noise, test_colour_flip, *flips]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"probabilities must be in [0, 1], got {p}")
        self.label_noise = label_noise
        self.train_colour_flip = flips
        self.test_colour_flip = test_colour_flip
        self.size = size
        self.channels = channels
        self.num_classes = 2
        self.num_attributes = 2
        self.num_fine_classes = 10
        self.class_names = ["0-4", "5-9"]
        self.attribute_names = ["red", "green"]
        self.image_shape = (channels, size, size)

    def make(self, images: torch.Tensor, digits: torch.Tensor, flips: list[float], stream: int) -> TensorImageDataset:
        gen = torch.Generator().manual_seed(self.seed * 1000 + 200 + stream)
        n = digits.shape[0]
        env = torch.arange(n) * len(flips) // max(n, 1)  # equal contiguous environments
        env = env[torch.randperm(n, generator=gen)]  # ... assigned at random
        p_c = torch.tensor(flips)[env]
        labels = (digits >= 5).long() ^ (torch.rand(n, generator=gen) < self.label_noise).long()
        colours = labels ^ (torch.rand(n, generator=gen) < p_c).long()
        if self.size == 14:
            images = images[:, :, ::2, ::2]
        out = torch.zeros(n, self.channels, self.size, self.size, dtype=torch.uint8)
        out[torch.arange(n), colours] = images[:, 0]
        return TensorImageDataset(out, labels, labels * 2 + colours, attribute=colours, fine_label=digits, domain=env)

    def build_splits(self) -> Splits:
        (tx, ty), (vx, vy) = self.train_val_digits()
        test_x, test_y = self.digits(train=False)
        first = self.train_colour_flip[:1]
        return Splits(
            train=self.make(tx, ty, self.train_colour_flip, 0),
            val={"val": self.make(vx, vy, first, 1)},
            test={"test": self.make(test_x, test_y, [self.test_colour_flip], 2), "test_iid": self.make(test_x, test_y, first, 3)},
        )


# ------------------------------------------------------------------------------------ grid MNIST
def cell_box(cell: int | torch.Tensor, cell_size: int = 28) -> torch.Tensor:
    """Pixel box ``(top, left, bottom, right)`` (bottom/right exclusive) of grid cell(s) 0-8,
    numbered row-major on the 3 x 3 grid."""
    cell = torch.as_tensor(cell)
    top = (cell // 3) * cell_size
    left = (cell % 3) * cell_size
    return torch.stack([top, left, top + cell_size, left + cell_size], dim=-1)


class GridMNIST(_DigitsModule):
    """A digit in one of the 9 cells of an empty 84 x 84 canvas (the CRL-TAC paper's grid MNIST).

    Input: 1 x 84 x 84, black except for one 28 x 28 digit placed in a cell of the 3 x 3 grid.
    Label: the digit. Attribute: the cell (0-8, row-major), drawn uniformly at random per example
    from a generator seeded with ``seed``; ``group = label * 9 + cell``. Where the digit is:
    :func:`cell_box` of the item's ``attribute`` (``top, left, bottom, right`` in pixels), also as
    :meth:`digit_boxes` for a whole split; methods such as CRL-TAC's oracle policy use it
    (``augment: standard`` shifts images by up to 2 px, so boxes are then exact to 2 px).
    Splits: training digits minus ``val_fraction`` -> train / val; official test digits -> test.

    Args:
        digits_source, val_fraction, **kwargs: as :class:`MNIST`.
    """

    benchmark_name = "grid_mnist"
    cell_size = 28
    grid = 3

    def __init__(self, digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        self.num_classes = 10
        self.num_attributes = 9
        self.class_names = [str(d) for d in range(10)]
        self.attribute_names = [f"cell{r}{c}" for r in range(3) for c in range(3)]
        self.image_shape = (1, 84, 84)

    def make(self, images: torch.Tensor, digits: torch.Tensor, stream: int) -> TensorImageDataset:
        gen = torch.Generator().manual_seed(self.seed * 1000 + 300 + stream)
        n = digits.shape[0]
        cells = torch.randint(9, (n,), generator=gen)
        canvas = torch.zeros(n, 1, 84, 84, dtype=torch.uint8)
        for cell in range(9):
            idx = (cells == cell).nonzero().squeeze(1)
            top, left, bottom, right = cell_box(cell).tolist()
            canvas[idx, :, top:bottom, left:right] = images[idx]
        return TensorImageDataset(canvas, digits, digits * 9 + cells, attribute=cells)

    def digit_boxes(self, split: str = "train") -> torch.Tensor:
        """``N x 4`` pixel boxes (top, left, bottom, right) of the digit in each example of a split
        (``train`` or an eval-set name), in dataset order."""
        ds = self.splits.train if split == "train" else {**self.splits.val, **self.splits.test}[split]
        return cell_box(ds.metadata["attribute"], self.cell_size)

    def build_splits(self) -> Splits:
        (tx, ty), (vx, vy) = self.train_val_digits()
        test_x, test_y = self.digits(train=False)
        return Splits(train=self.make(tx, ty, 0), val={"val": self.make(vx, vy, 1)}, test={"test": self.make(test_x, test_y, 2)})


# ------------------------------------------------------------------------------------ dominoes
class MFDominoes(_DigitsModule):
    """MF-Dominoes (Pagliardini et al., 2023; Chroma-VAE): an MNIST digit on top of a FashionMNIST item.

    Input: 1 x 56 x 28, digit (0 or 1) in the top half, coat or dress in the bottom half.
    Label: the item, 0 = coat (FashionMNIST class 4), 1 = dress (class 3). Attribute: the digit
    (0/1). Groups: ``2 * label + digit``.
    Construction: every coat/dress image of a split is paired with a digit drawn (seeded, with
    replacement) from that split's 0s and 1s (validation digits are carved per digit from the
    training 0s and 1s, ``val_fraction`` of each, at least one). Training and ``val`` are *completely correlated*
    (digit == label: the minority groups are empty). Test sets, built from the official test images:

    - ``mnist_randomized`` (primary): the digit is drawn independently of the label (about a
      quarter of the examples per group) - accuracy here measures use of the item;
    - ``fmnist_randomized``: the item is drawn independently and the label follows the *digit*
      (the D-BAT set measuring use of the digit);
    - ``correlated``: both halves agree, like training.

    ``val_randomized`` is the validation counterpart of ``mnist_randomized`` (group-balanced
    model selection). FashionMNIST has no embedded copy: it is read from torchvision's raw files
    (``<root>/FashionMNIST/raw``, ``download: true`` fetches them).

    Args:
        digits_source, val_fraction, **kwargs: as :class:`MNIST`.
    """

    benchmark_name = "mf_dominoes"
    #: FashionMNIST classes of label 0 and label 1.
    ITEMS = (4, 3)

    def __init__(self, digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        self.num_classes = 2
        self.num_attributes = 2
        self.class_names = ["coat", "dress"]
        self.attribute_names = ["digit0", "digit1"]
        self.image_shape = (1, 56, 28)

    @staticmethod
    def _binary(images: torch.Tensor, labels: torch.Tensor, classes: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (labels == classes[0]) | (labels == classes[1])
        return images[keep], (labels[keep] == classes[1]).long()

    def make(self, digit_x, digit_y, item_x, item_y, mode: str, stream: int) -> TensorImageDataset:
        """Pair items with digits. ``mode``: ``correlated``, ``mnist_randomized`` or ``fmnist_randomized``."""
        gen = torch.Generator().manual_seed(self.seed * 1000 + 400 + stream)
        n = item_y.shape[0]
        pools = [(digit_y == d).nonzero().squeeze(1) for d in (0, 1)]
        if min(p.numel() for p in pools) == 0:
            raise ValueError("MF-Dominoes needs digits 0 and 1 in every split")
        if mode == "fmnist_randomized":  # digits follow a fresh label, items shuffled -> label = digit
            labels = torch.randint(2, (n,), generator=gen)
            wanted = labels
            items = item_x[torch.randperm(n, generator=gen)]
        else:
            labels = item_y
            items = item_x
            wanted = item_y if mode == "correlated" else torch.randint(2, (n,), generator=gen)
        digit_idx = torch.empty(n, dtype=torch.long)
        for d in (0, 1):
            rows = (wanted == d).nonzero().squeeze(1)
            pick = torch.randint(pools[d].numel(), (rows.numel(),), generator=gen)
            digit_idx[rows] = pools[d][pick]
        images = torch.cat([digit_x[digit_idx], items], dim=2)
        return TensorImageDataset(images, labels, labels * 2 + wanted, attribute=wanted.clone())

    def build_splits(self) -> Splits:
        # keep the 0s and 1s first, then carve val per digit so both splits hold both digits
        digits_x, digits_y = self._binary(*self.digits(train=True), (0, 1))
        gen = torch.Generator().manual_seed(self.seed * 1000 + 499)
        d_va = []
        for d in (0, 1):
            members = (digits_y == d).nonzero().squeeze(1)
            members = members[torch.randperm(members.numel(), generator=gen)]
            d_va.append(members[: max(1, int(round(self.val_fraction * members.numel())))])
        is_val = torch.zeros(digits_y.shape[0], dtype=torch.bool)
        is_val[torch.cat(d_va)] = True
        dx, dy, dvx, dvy = digits_x[~is_val], digits_y[~is_val], digits_x[is_val], digits_y[is_val]
        dtx, dty = self._binary(*self.digits(train=False), (0, 1))
        fx, fy = self._binary(*load_fashion_mnist(self.root, True, self.download), self.ITEMS)
        tr, va = split_indices(fy.shape[0], self.val_fraction, self.seed)
        ftx, fty = self._binary(*load_fashion_mnist(self.root, False, self.download), self.ITEMS)
        return Splits(
            train=self.make(dx, dy, fx[tr], fy[tr], "correlated", 0),
            val={"val": self.make(dvx, dvy, fx[va], fy[va], "correlated", 1), "val_randomized": self.make(dvx, dvy, fx[va], fy[va], "mnist_randomized", 2)},
            test={
                "mnist_randomized": self.make(dtx, dty, ftx, fty, "mnist_randomized", 3),
                "fmnist_randomized": self.make(dtx, dty, ftx, fty, "fmnist_randomized", 4),
                "correlated": self.make(dtx, dty, ftx, fty, "correlated", 5),
            },
        )
