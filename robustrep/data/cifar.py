"""CIFAR-10, CIFAR-10-Coarse, CIFAR-100, CIFAR-100-Coarse and CIFAR-100-Coarse-U.

The python pickles are read directly, not through torchvision's dataset classes, because those
MD5-check every file on every construction. ``download: true`` still uses torchvision to fetch and
verify the archives once. The images are held in memory as uint8 tensors. STL-10 is in
:mod:`robustrep.data.stl10`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.datasets import TensorImageDataset
from robustrep.data.files import require, seeded_split
from robustrep.errors import ConfigError, CorruptDataError

CIFAR_SOURCE = (
    "https://www.cs.toronto.edu/~kriz/cifar.html (torchvision downloads it with download: true)"
)
CIFAR10_LAYOUT = """<root>/cifar-10-batches-py/
    data_batch_1 ... data_batch_5   (python pickles: data 10000 x 3072 uint8, labels)
    test_batch
    batches.meta                    (label_names)"""
CIFAR100_LAYOUT = """<root>/cifar-100-python/
    train   (python pickle: data 50000 x 3072 uint8, fine_labels, coarse_labels)
    test
    meta    (fine_label_names, coarse_label_names)"""
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
#: CIFAR-10-Coarse: 1 = vehicle (airplane, automobile, ship, truck), 0 = animal.
CIFAR10_VEHICLES = (0, 1, 8, 9)
#: CIFAR-100-Coarse-U: images kept per fine class, by rank of the fine class index inside its
#: superclass.
COARSE_U_COUNTS = (500, 250, 100, 50, 50)


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise CorruptDataError(f"cannot read pickle {path}: {err}") from err


def _cifar_images(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(
        np.ascontiguousarray(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
    )


def load_cifar10(
    root: str, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 pickles -> (uint8 N x 3 x 32 x 32, labels)."""
    folder = Path(root) / "cifar-10-batches-py"
    if download and not folder.exists():
        from torchvision.datasets import CIFAR10 as TVCIFAR10

        TVCIFAR10(root, train=train, download=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    hint = (
        "Set download: true to fetch it with torchvision, or point root at the folder that "
        "contains cifar-10-batches-py/."
    )
    batches = [read_pickle(require(folder / n, CIFAR10_LAYOUT, CIFAR_SOURCE, hint)) for n in names]
    images = torch.cat([_cifar_images(b["data"]) for b in batches])
    labels = torch.tensor([y for b in batches for y in b["labels"]], dtype=torch.long)
    return images, labels


def load_cifar100(
    root: str, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CIFAR-100 pickle -> (uint8 N x 3 x 32 x 32, fine labels, coarse labels from the same
    pickle).
    """
    folder = Path(root) / "cifar-100-python"
    if download and not folder.exists():
        from torchvision.datasets import CIFAR100 as TVCIFAR100

        TVCIFAR100(root, train=train, download=True)
    hint = (
        "Set download: true to fetch it with torchvision, or point root at the folder "
        "that contains cifar-100-python/."
    )
    entry = read_pickle(
        require(folder / ("train" if train else "test"), CIFAR100_LAYOUT, CIFAR_SOURCE, hint)
    )
    return (
        _cifar_images(entry["data"]),
        torch.tensor(entry["fine_labels"]),
        torch.tensor(entry["coarse_labels"]),
    )


def rank_within(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """For each example, the rank of its fine class among the fine classes of its coarse class
    (fine classes ordered by index): the stratum index used as the attribute."""
    pairs = sorted(set(zip(coarse.tolist(), fine.tolist())))
    rank: dict[int, int] = {}
    seen: dict[int, int] = {}
    for c, f in pairs:
        rank[f] = seen.get(c, 0)
        seen[c] = rank[f] + 1
    return torch.tensor([rank[f] for f in fine.tolist()], dtype=torch.long)


class _CIFARModule(RobustDataModule):
    """Shared machinery: read both files, carve validation from train (seeded), build datasets.

    Subclasses define ``read(train) -> (images, fine labels, coarse labels)`` and
    ``make(images, fine, coarse) -> TensorImageDataset``.
    """

    def __init__(self, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.val_fraction = val_fraction
        self.image_shape = (3, 32, 32)

    def select_train(
        self, fine: torch.Tensor, coarse: torch.Tensor, train_idx: torch.Tensor
    ) -> torch.Tensor:
        return train_idx

    def build_splits(self) -> Splits:
        x, f, c = self.read(True)
        val_idx, train_idx = seeded_split(
            f.shape[0], [self.val_fraction, 1 - self.val_fraction], self.seed
        )
        train_idx = self.select_train(f, c, train_idx)
        tx, tf, tc = self.read(False)
        return Splits(
            train=self.make(x[train_idx], f[train_idx], c[train_idx]),
            val={"val": self.make(x[val_idx], f[val_idx], c[val_idx])},
            test={"test": self.make(tx, tf, tc)},
        )


class CIFAR10(_CIFARModule):
    """CIFAR-10: 32 x 32 colour images of 10 classes.

    Input: 3 x 32 x 32. Label: the class. Groups: one per class. Splits: the 50,000 training images
    minus a seeded ``val_fraction`` (default 10% = 5,000) for validation; the 10,000 test images.
    Files: ``<root>/cifar-10-batches-py/`` (torchvision's python version; ``download: true``).
    Citation: Krizhevsky, 2009.

    Args:
        val_fraction: share of the training images held out for validation.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "cifar10"

    def __init__(self, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(val_fraction, **kwargs)
        self.num_classes = 10
        self.class_names = list(CIFAR10_CLASSES)

    def read(self, train: bool):
        x, y = load_cifar10(self.root, train, self.download)
        return x, y, y

    def make(self, images, fine, coarse):
        return TensorImageDataset(images, fine, fine.clone())


class CIFAR10Coarse(CIFAR10):
    """CIFAR-10 with two coarse classes: 0 = animal, 1 = vehicle (airplane, automobile, ship,
    truck).

    ``fine_label``: the CIFAR-10 class. Groups with ``group_by: fine`` (default): the attribute is
    the rank of the fine class inside its coarse class (animals bird..horse -> 0-5, vehicles
    airplane, automobile, ship, truck -> 0-3), ``num_attributes = 6``, so the 12 groups include two
    that are always empty (vehicle/stratum4-5; metrics skip empty groups). ``group_by: label``: one
    group per coarse class. Input, splits: as :class:`CIFAR10`.
    Citation: coarse-to-fine protocol of Chen et al., 2022.

    Args:
        group_by: ``fine`` or ``label``.
        val_fraction, **kwargs: as :class:`CIFAR10`.
    """

    benchmark_name = "cifar10_coarse"

    def __init__(self, group_by: str = "fine", val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(val_fraction, **kwargs)
        if group_by not in ("fine", "label"):
            raise ConfigError(f"group_by must be 'fine' or 'label', got {group_by!r}")
        self.group_by = group_by
        self.num_classes = 2
        self.num_fine_classes = 10
        self.class_names = ["animal", "vehicle"]
        if group_by == "fine":
            self.num_attributes = 6
            self.attribute_names = [f"stratum{i}" for i in range(6)]

    def read(self, train: bool):
        x, y = load_cifar10(self.root, train, self.download)
        coarse = torch.isin(y, torch.tensor(CIFAR10_VEHICLES)).long()
        return x, y, coarse

    def make(self, images, fine, coarse):
        if self.group_by == "fine":
            rank = torch.tensor([0, 1, 0, 1, 2, 3, 4, 5, 2, 3])[fine]
            return TensorImageDataset(
                images, coarse, coarse * 6 + rank, attribute=rank, fine_label=fine
            )
        return TensorImageDataset(images, coarse, coarse.clone(), fine_label=fine)


class CIFAR100(_CIFARModule):
    """CIFAR-100: 32 x 32 colour images of 100 fine classes.

    Input: 3 x 32 x 32. Label: the fine class. Groups: one per class. Splits: 50,000 training images
    minus a seeded ``val_fraction`` for validation; 10,000 test images.
    Files: ``<root>/cifar-100-python/{train,test,meta}`` (``download: true``). Citation: Krizhevsky,
    2009.

    Args:
        val_fraction: share of the training images held out for validation.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "cifar100"

    def __init__(self, val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(val_fraction, **kwargs)
        self.num_classes = 100

    def read(self, train: bool):
        return load_cifar100(self.root, train, self.download)

    def make(self, images, fine, coarse):
        return TensorImageDataset(images, fine, fine.clone())


class CIFAR100Coarse(CIFAR100):
    """CIFAR-100 with its 20 superclasses as labels (the pickle's ``coarse_labels``).

    ``fine_label``: the fine class. Groups with ``group_by: fine`` (default): the attribute is the
    rank (0-4) of the fine class among its superclass's five classes (by class index), so there are
    100 groups = the fine classes and worst-group accuracy is the worst-subclass accuracy;
    ``group_by: label``: 20 groups. Input, splits: as :class:`CIFAR100`.

    Args:
        group_by: ``fine`` or ``label``.
        val_fraction, **kwargs: as :class:`CIFAR100`.
    """

    benchmark_name = "cifar100_coarse"

    def __init__(self, group_by: str = "fine", val_fraction: float = 0.1, **kwargs) -> None:
        super().__init__(val_fraction, **kwargs)
        if group_by not in ("fine", "label"):
            raise ConfigError(f"group_by must be 'fine' or 'label', got {group_by!r}")
        self.group_by = group_by
        self.num_classes = 20
        self.num_fine_classes = 100
        if group_by == "fine":
            self.num_attributes = 5
            self.attribute_names = [f"stratum{i}" for i in range(5)]

    def make(self, images, fine, coarse):
        if self.group_by == "fine":
            rank = rank_within(fine, coarse)
            return TensorImageDataset(
                images, coarse, coarse * 5 + rank, attribute=rank, fine_label=fine
            )
        return TensorImageDataset(images, coarse, coarse.clone(), fine_label=fine)


class CIFAR100CoarseU(CIFAR100Coarse):
    """CIFAR-100-Coarse with *unbalanced* strata (Chen et al., 2022): inside each superclass the
    five fine classes, ordered by class index, keep ``counts`` = 500, 250, 100, 50, 50 training
    images.

    Construction: the validation set is carved first (seeded ``val_fraction`` of the training file),
    then from the remaining images of each fine class the first ``counts[rank]`` of a seeded
    permutation are kept (a class with fewer remaining images keeps them all: with the default
    ``val_fraction = 0.1`` the largest stratum keeps about 450). Validation and test are not
    subsampled. Labels, groups: as :class:`CIFAR100Coarse`.

    Args:
        counts: training images kept per fine class, by rank inside the superclass.
        group_by, val_fraction, **kwargs: as :class:`CIFAR100Coarse`.
    """

    benchmark_name = "cifar100_coarse_u"

    def __init__(
        self,
        counts: list[int] | tuple[int, ...] = COARSE_U_COUNTS,
        group_by: str = "fine",
        val_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(group_by, val_fraction, **kwargs)
        if len(counts) != 5 or min(counts) < 0:
            raise ConfigError(
                f"counts needs 5 non-negative entries (one per stratum rank), got {counts}"
            )
        self.counts = tuple(int(c) for c in counts)

    def select_train(
        self, fine: torch.Tensor, coarse: torch.Tensor, train_idx: torch.Tensor
    ) -> torch.Tensor:
        rank = rank_within(fine, coarse)
        gen = torch.Generator().manual_seed(self.seed + 17)
        keep = []
        for f in fine[train_idx].unique().tolist():
            members = train_idx[fine[train_idx] == f]
            members = members[torch.randperm(members.numel(), generator=gen)]
            keep.append(members[: self.counts[int(rank[members[0]])]])
        return torch.cat(keep).sort().values
