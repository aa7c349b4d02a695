"""STL-10: 96 x 96 colour images of 10 classes plus 100,000 unlabelled images.

The raw binaries are read directly, not through torchvision's dataset class, because that
MD5-checks every file (it hashes the 2.6 GB ``unlabeled_X.bin`` on every construction, even for the
test split). ``download: true`` still uses torchvision to fetch and verify the archive once. The
labelled images are held in memory as uint8 tensors, the unlabelled split is memory-mapped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.datasets import TensorImageDataset
from robustrep.data.files import require, seeded_split
from robustrep.errors import ConfigError, CorruptDataError

STL_SOURCE = (
    "https://cs.stanford.edu/~acoates/stl10/ (torchvision downloads it with download: true)"
)
STL_LAYOUT = """<root>/stl10_binary/
    train_X.bin, train_y.bin      (5,000 labelled 96 x 96 images, labels 1-10)
    test_X.bin, test_y.bin        (8,000)
    unlabeled_X.bin               (100,000; only with include_unlabeled: true)
    class_names.txt, fold_indices.txt (optional)"""
STL_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def read_stl_images(path: Path, memmap: bool = False) -> torch.Tensor:
    """STL-10 ``*_X.bin`` (N x 3 x 96 x 96 stored column-major) -> uint8 N x 3 x H x W (a view)."""
    try:
        if memmap:
            array = np.memmap(path, dtype=np.uint8, mode="c")
        else:
            array = np.fromfile(path, dtype=np.uint8)
        if array.size % (3 * 96 * 96):
            raise ValueError(f"{array.size} bytes is not a multiple of one 3 x 96 x 96 image")
    except (OSError, ValueError) as err:
        raise CorruptDataError(f"cannot read STL-10 images {path}: {err}") from err
    return torch.from_numpy(array.reshape(-1, 3, 96, 96)).transpose(2, 3)


class STL10(RobustDataModule):
    """STL-10: 96 x 96 colour images of 10 classes plus 100,000 unlabelled images.

    Input: 3 x 96 x 96. Label: the class (files store 1-10; we subtract 1). Groups: one per class.
    Splits: the 5,000 training images minus a seeded ``val_fraction`` (or only the 1,000 images of
    ``fold`` 0-9 from ``fold_indices.txt``); the 8,000 test images. With ``include_unlabeled: true``
    the unlabelled images (memory-mapped, never copied) are appended to the training set with
    label and group -1, for self-supervised methods (IP-IRM) that never read labels.
    Files are read directly (no MD5 pass over the 2.6 GB unlabelled file).
    Citation: Coates et al., 2011.

    Args:
        val_fraction: share of the labelled training images held out for validation.
        fold: use only this predefined 1,000-image training fold (0-9); None = all.
        include_unlabeled: append ``unlabeled_X.bin`` to the training set (labels -1).
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "stl10"

    def __init__(
        self,
        val_fraction: float = 0.1,
        fold: int | None = None,
        include_unlabeled: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if fold is not None and not 0 <= fold <= 9:
            raise ConfigError(f"fold must be 0-9 or None, got {fold}")
        self.val_fraction = val_fraction
        self.fold = fold
        self.include_unlabeled = include_unlabeled
        self.num_classes = 10
        self.class_names = list(STL_CLASSES)
        self.image_shape = (3, 96, 96)

    def _read(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        folder = Path(self.root) / "stl10_binary"
        if self.download and not folder.exists():
            from torchvision.datasets import STL10 as TVSTL10

            TVSTL10(self.root, split="train", download=True)
        hint = (
            "Set download: true to fetch it with torchvision, or point root at the folder "
            "that contains stl10_binary/."
        )
        images = read_stl_images(require(folder / f"{split}_X.bin", STL_LAYOUT, STL_SOURCE, hint))
        labels = (
            torch.from_numpy(
                np.fromfile(
                    require(folder / f"{split}_y.bin", STL_LAYOUT, STL_SOURCE, hint), dtype=np.uint8
                ).astype(np.int64)
            )
            - 1
        )
        if labels.shape[0] != images.shape[0]:
            raise CorruptDataError(
                f"{folder / f'{split}_y.bin'} has {labels.shape[0]} labels "
                f"for {images.shape[0]} images"
            )
        return images.contiguous(), labels

    def build_splits(self) -> Splits:
        x, y = self._read("train")
        folder = Path(self.root) / "stl10_binary"
        if self.fold is not None:
            lines = (
                require(folder / "fold_indices.txt", STL_LAYOUT, STL_SOURCE)
                .read_text()
                .splitlines()
            )
            pool = torch.tensor([int(v) for v in lines[self.fold].split()], dtype=torch.long)
        else:
            pool = torch.arange(y.shape[0])
        val_part, train_part = seeded_split(
            pool.numel(), [self.val_fraction, 1 - self.val_fraction], self.seed
        )
        tr, va = pool[train_part], pool[val_part]
        train = TensorImageDataset(x[tr], y[tr], y[tr])
        if self.include_unlabeled:
            unlabeled = read_stl_images(
                require(folder / "unlabeled_X.bin", STL_LAYOUT, STL_SOURCE), memmap=True
            )
            train = _Concat(train, unlabeled)
        tx, ty = self._read("test")
        return Splits(
            train=train,
            val={"val": TensorImageDataset(x[va], y[va], y[va])},
            test={"test": TensorImageDataset(tx, ty, ty)},
        )


class _Concat(torch.utils.data.Dataset):
    """Labelled in-memory STL-10 images followed by the memory-mapped unlabelled ones (label -1)."""

    def __init__(self, labelled: TensorImageDataset, unlabeled: torch.Tensor) -> None:
        self.labelled = labelled
        self.unlabeled = unlabeled
        n_u = unlabeled.shape[0]
        self.groups = torch.cat([labelled.groups, torch.full((n_u,), -1, dtype=torch.long)])
        self.labels = torch.cat([labelled.labels, torch.full((n_u,), -1, dtype=torch.long)])

    def __len__(self) -> int:
        return len(self.labelled) + self.unlabeled.shape[0]

    def with_transform(self, transform, num_views: int = 1) -> _Concat:
        return _Concat(self.labelled.with_transform(transform, num_views), self.unlabeled)

    def __getitem__(self, index: int) -> dict:
        n = len(self.labelled)
        if index < n:
            return self.labelled[index]
        u = TensorImageDataset(
            self.unlabeled[index - n : index - n + 1].contiguous(),
            torch.tensor([-1]),
            None,
            self.labelled.transform,
            self.labelled.num_views,
        )
        item = u[0]
        item["index"] = index
        return item
