"""Benchmarks that compose digits into a larger image: Grid MNIST (a digit in one cell of a 3 x 3
grid, :class:`GridMNIST`, with :func:`cell_box` giving the cell's pixel box) and MF-Dominoes (an
MNIST digit above a FashionMNIST item, :class:`MFDominoes`).

Both build on :class:`~robustrep.data.mnist.DigitsModule` (``digits_source``, ``val_fraction`` as
for :class:`~robustrep.data.mnist.MNIST`).
"""

from __future__ import annotations

import torch

from robustrep.data.base import Splits
from robustrep.data.datasets import TensorImageDataset
from robustrep.data.mnist import DigitsModule, load_fashion_mnist, split_indices
from robustrep.errors import ConfigError


def cell_box(cell: int | torch.Tensor, cell_size: int = 28) -> torch.Tensor:
    """Pixel box ``(top, left, bottom, right)`` (bottom/right exclusive) of grid cell(s) 0-8,
    numbered row-major on the 3 x 3 grid."""
    cell = torch.as_tensor(cell)
    top = (cell // 3) * cell_size
    left = (cell % 3) * cell_size
    return torch.stack([top, left, top + cell_size, left + cell_size], dim=-1)


class GridMNIST(DigitsModule):
    """A digit in one of the 9 cells of an empty 84 x 84 canvas (the CRL-TAC paper's grid MNIST).

    Input: 1 x 84 x 84, black except for one 28 x 28 digit placed in a cell of the 3 x 3 grid.
    Label: the digit. Attribute: the cell (0-8, row-major), drawn uniformly at random per example
    from a generator seeded with ``seed``; ``group = label * 9 + cell``. Where the digit is:
    :func:`cell_box` of the item's ``attribute`` (``top, left, bottom, right`` in pixels), also as
    :meth:`digit_boxes` for a whole split; methods such as CRL-TAC's oracle policy use it
    (``augment: standard`` shifts images by up to 2 px, so boxes are then exact to 2 px).
    Splits: training digits minus ``val_fraction`` -> train / val; official test digits -> test.

    Args:
        digits_source, val_fraction, **kwargs: as :class:`~robustrep.data.mnist.MNIST`.
    """

    benchmark_name = "grid_mnist"
    cell_size = 28
    grid = 3

    def __init__(
        self, digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs
    ) -> None:
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
        ds = (
            self.splits.train
            if split == "train"
            else {**self.splits.val, **self.splits.test}[split]
        )
        return cell_box(ds.metadata["attribute"], self.cell_size)

    def build_splits(self) -> Splits:
        (tx, ty), (vx, vy) = self.train_val_digits()
        test_x, test_y = self.digits(train=False)
        return Splits(
            train=self.make(tx, ty, 0),
            val={"val": self.make(vx, vy, 1)},
            test={"test": self.make(test_x, test_y, 2)},
        )


class MFDominoes(DigitsModule):
    """MF-Dominoes (Pagliardini et al., 2023; Chroma-VAE): an MNIST digit on top of a FashionMNIST
    item.

    Input: 1 x 56 x 28, digit (0 or 1) in the top half, coat or dress in the bottom half.
    Label: the item, 0 = coat (FashionMNIST class 4), 1 = dress (class 3). Attribute: the digit
    (0/1). Groups: ``2 * label + digit``.
    Construction: every coat/dress image of a split is paired with a digit drawn (seeded, with
    replacement) from that split's 0s and 1s (validation digits are carved per digit from the
    training 0s and 1s, ``val_fraction`` of each, at least one). Training and ``val`` are
    *completely correlated* (digit == label: the minority groups are empty). Test sets, built from
    the official test images:

    - ``mnist_randomized`` (primary): the digit is drawn independently of the label (about a
      quarter of the examples per group) - accuracy here measures use of the item;
    - ``fmnist_randomized``: the item is drawn independently and the label follows the *digit*
      (the D-BAT set measuring use of the digit);
    - ``correlated``: both halves agree, like training.

    ``val_randomized`` is the validation counterpart of ``mnist_randomized`` (group-balanced
    model selection). FashionMNIST has no embedded copy: it is read from torchvision's raw files
    (``<root>/FashionMNIST/raw``, ``download: true`` fetches them).

    Args:
        digits_source, val_fraction, **kwargs: as :class:`~robustrep.data.mnist.MNIST`.
    """

    benchmark_name = "mf_dominoes"
    #: FashionMNIST classes of label 0 and label 1.
    ITEMS = (4, 3)

    def __init__(
        self, digits_source: str = "mnist", val_fraction: float = 1 / 12, **kwargs
    ) -> None:
        super().__init__(digits_source, val_fraction, **kwargs)
        self.num_classes = 2
        self.num_attributes = 2
        self.class_names = ["coat", "dress"]
        self.attribute_names = ["digit0", "digit1"]
        self.image_shape = (1, 56, 28)

    @staticmethod
    def _binary(
        images: torch.Tensor, labels: torch.Tensor, classes: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (labels == classes[0]) | (labels == classes[1])
        return images[keep], (labels[keep] == classes[1]).long()

    def make(self, digit_x, digit_y, item_x, item_y, mode: str, stream: int) -> TensorImageDataset:
        """Pair items with digits. ``mode``: ``correlated``, ``mnist_randomized`` or
        ``fmnist_randomized``.
        """
        gen = torch.Generator().manual_seed(self.seed * 1000 + 400 + stream)
        n = item_y.shape[0]
        pools = [(digit_y == d).nonzero().squeeze(1) for d in (0, 1)]
        if min(p.numel() for p in pools) == 0:
            raise ConfigError("MF-Dominoes needs digits 0 and 1 in every split")
        # digits follow a fresh label, items shuffled -> label = digit
        if mode == "fmnist_randomized":
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
            val={
                "val": self.make(dvx, dvy, fx[va], fy[va], "correlated", 1),
                "val_randomized": self.make(dvx, dvy, fx[va], fy[va], "mnist_randomized", 2),
            },
            test={
                "mnist_randomized": self.make(dtx, dty, ftx, fty, "mnist_randomized", 3),
                "fmnist_randomized": self.make(dtx, dty, ftx, fty, "fmnist_randomized", 4),
                "correlated": self.make(dtx, dty, ftx, fty, "correlated", 5),
            },
        )
