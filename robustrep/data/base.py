"""The datamodule contract (DESIGN.md, contracts 1 and 2).

Every benchmark is a :class:`RobustDataModule`. A subclass sets its metadata in ``__init__``
(``num_classes``, ``num_attributes``, ``group_names``, ``image_shape`` ...) so that the CLI can link
it into the model before ``setup()`` runs, and implements :meth:`RobustDataModule.build_splits`,
which returns the training set and the **named** validation and test sets.

Every dataset item is a dict: ``image`` (float C x H x W in [0, 1]), ``label``, ``group``
(``label * num_attributes + attribute`` or -1), ``index`` and, where they exist, ``attribute``,
``fine_label``, ``domain``; with ``num_views > 1`` also ``views`` (a list of augmented images).
In-memory benchmarks hold their examples in a :class:`~robustrep.data.datasets.TensorImageDataset`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from robustrep.data.datasets import TensorImageDataset
from robustrep.data.sampling import ResumableLoader
from robustrep.data.transforms import build_transform
from robustrep.errors import ConfigError
from robustrep.randomness import run_seed

#: Optional per-example keys a benchmark may provide besides image/label/group/index.
OPTIONAL_KEYS = ("attribute", "fine_label", "domain")


@dataclass
class Splits:
    """What :meth:`RobustDataModule.build_splits` returns.

    ``val`` and ``test`` map an evaluation-set name to its dataset; the first entry is the primary
    set (logged as ``val/acc``), the others are logged with their name (``test/mixed_rand/acc``).
    Datasets hold untransformed examples; the datamodule applies the transform preset per stage.
    """

    train: TensorImageDataset | Dataset
    val: dict[str, Dataset] = field(default_factory=dict)
    test: dict[str, Dataset] = field(default_factory=dict)


class RobustDataModule(pl.LightningDataModule, ABC):
    """Base datamodule: shared arguments, metadata for linking, named evaluation sets.

    Args:
        root: folder that holds the benchmark's files (ignored by generated benchmarks).
        batch_size: examples per training batch *per process* (under DDP the global batch is
            ``batch_size * world_size``).
        eval_batch_size: examples per evaluation batch; None = ``batch_size``.
        num_workers: DataLoader worker processes. 0 is fastest for in-memory benchmarks on small
            machines; raise it for benchmarks that decode JPEGs.
        image_size: side length images are resized to; None = the benchmark's native size.
        num_views: augmented views per training example (2 for contrastive methods).
        augment: training augmentation preset: ``none``, ``standard`` (crop + flip) or
            ``contrastive`` (SimCLR-style: resized crop, flip, colour jitter, grayscale) or
            ``contrastive_no_colour`` (the same without the colour operations).
        train_fraction: use this random fraction of the training set (1.0 = all); seeded.
        seed: seed for every derived construction (splits, colouring, subsets).
        download: let torchvision fetch the files where a public source exists.
        shuffle_train: shuffle training batches. Turn off only for exact-equality tests.
    """

    #: The benchmark's name in ``robustrep data list`` and in run names.
    benchmark_name: str = "benchmark"

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int | None = None,
        num_views: int = 1,
        augment: str = "none",
        train_fraction: float = 1.0,
        seed: int = 0,
        download: bool = False,
        shuffle_train: bool = True,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 < train_fraction <= 1.0:
            raise ConfigError(f"train_fraction must be in (0, 1], got {train_fraction}")
        if num_views < 1:
            raise ConfigError(f"num_views must be >= 1, got {num_views}")
        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.image_size = image_size
        self.num_views = num_views
        self.augment = augment
        self.train_fraction = train_fraction
        self.seed = seed
        self.download = download
        self.shuffle_train = shuffle_train
        # Metadata: subclasses overwrite these in __init__ (before setup) so they can be linked.
        self.num_classes: int = 2
        self.num_attributes: int = 1
        self.num_fine_classes: int | None = None
        self.image_shape: tuple[int, int, int] = (3, 32, 32)
        self.class_names: list[str] | None = None
        self.attribute_names: list[str] | None = None
        self._splits: Splits | None = None

    # ----------------------------------------------------------------------------- metadata
    @property
    def num_groups(self) -> int:
        """Number of (label, attribute) groups; equals ``num_classes`` when there is no
        attribute.
        """
        return self.num_classes * self.num_attributes

    @property
    def group_names(self) -> list[str]:
        """Readable group names, ``<class>/<attribute>`` (or the class name without attributes)."""
        classes = self.class_names or [f"y{c}" for c in range(self.num_classes)]
        if self.num_attributes == 1:
            return list(classes)
        attrs = self.attribute_names or [f"a{a}" for a in range(self.num_attributes)]
        return [f"{c}/{a}" for c in classes for a in attrs]

    # ----------------------------------------------------------------------------- to implement
    @abstractmethod
    def build_splits(self) -> Splits:
        """Read or generate the data; return the untransformed train set and named eval sets."""

    # ----------------------------------------------------------------------------- lightning hooks
    def setup(self, stage: str | None = None) -> None:
        if self._splits is None:
            splits = self.build_splits()
            if self.train_fraction < 1.0:
                splits.train = _subset(splits.train, self.train_fraction, self.seed)
            self._splits = splits

    @property
    def splits(self) -> Splits:
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def val_set_names(self) -> list[str]:
        return list(self.splits.val)

    @property
    def test_set_names(self) -> list[str]:
        return list(self.splits.test)

    def eval_set_names(self, stage: str) -> list[str]:
        """Names of the evaluation sets of ``stage`` (``val``, ``test``), primary first."""
        return (
            self.val_set_names
            if stage in ("val", "validate", "validation")
            else self.test_set_names
        )

    def train_transform(self) -> Callable | None:
        return build_transform(self.augment, self.image_shape, self.image_size)

    def eval_transform(self) -> Callable | None:
        return build_transform("none", self.image_shape, self.image_size)

    def train_dataset(self) -> Dataset:
        return _with_transform(self.splits.train, self.train_transform(), self.num_views)

    def train_eval_dataset(self) -> Dataset:
        """The training examples with the evaluation transform (JTT error sets, probes, kNN
        banks).
        """
        return _with_transform(self.splits.train, self.eval_transform(), 1)

    def train_dataloader(self) -> DataLoader:
        """Training batches in an order and with augmentations that depend only on the run seed, the
        epoch and the position (:mod:`robustrep.data.sampling`), so resuming and validating cannot
        change them; the loader's position is saved in checkpoints."""
        return ResumableLoader(
            self.train_dataset(),
            self.batch_size,
            seed=run_seed(),
            shuffle=self.shuffle_train,
            num_workers=self.num_workers,
        )

    def train_eval_dataloader(self, shard: bool = True) -> DataLoader:
        """Training examples in order with the eval transform. ``shard=False`` gives every rank the
        whole set (e.g. JTT's error set must be identical everywhere)."""
        return self._loader(
            self.train_eval_dataset(),
            self.eval_batch_size,
            shuffle=False,
            shard=shard,
            persistent=shard,
        )

    def train_views_loader(self) -> DataLoader:
        """The training examples with the training augmentation (``num_views`` views), in order,
        ``eval_batch_size`` per batch; under DDP padded shards, so every rank has the same number of
        batches (IP-IRM's feature bank gathers them; drop the repeats by ``index``)."""
        dataset = self.train_dataset()
        sampler = None
        if _distributed_world() > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
        )

    def eval_dataset(self, dataset: Dataset) -> Dataset:
        """``dataset`` (an untransformed split, e.g. ``splits.test["original"]``) with the
        evaluation transform.
        """
        return _with_transform(dataset, self.eval_transform(), 1)

    def eval_loader(self, dataset: Dataset, shard: bool = False) -> DataLoader:
        """``dataset`` with the evaluation transform, in order, ``eval_batch_size`` per batch.

        Args:
            dataset: an untransformed split.
            shard: True = each DDP rank gets its own part, every example exactly once (Lightning's
                evaluation loops); False (default) = every rank reads the whole set (callbacks and
                analyses that compute on the full set in each process).
        """
        return self._loader(
            self.eval_dataset(dataset),
            self.eval_batch_size,
            shuffle=False,
            shard=shard,
            persistent=shard,
        )

    def eval_loaders(self, stage: str, shard: bool = False) -> dict[str, DataLoader]:
        r"""The named evaluation sets of ``stage`` (``val`` or ``test``) as :meth:`eval_loader`\ s,
        primary first.
        """
        sets = self.splits.val if stage in ("val", "validate", "validation") else self.splits.test
        return {name: self.eval_loader(ds, shard) for name, ds in sets.items()}

    def val_dataloader(self) -> list[DataLoader]:
        return list(self.eval_loaders("val", shard=True).values())

    def test_dataloader(self) -> list[DataLoader]:
        return list(self.eval_loaders("test", shard=True).values())

    def predict_dataloader(self) -> list[DataLoader]:
        return self.test_dataloader()

    def group_counts(self, split: str = "train") -> torch.Tensor:
        """Examples per group in a split (``train`` or an eval-set name); weights
        ``weighted_acc``.
        """
        if split == "train":
            ds = self.splits.train
        else:
            ds = {**self.splits.val, **self.splits.test}[split]
        groups = _groups_of(ds)
        return torch.bincount(groups[groups >= 0], minlength=self.num_groups)

    # ----------------------------------------------------------------------------- helpers
    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        shard: bool = True,
        persistent: bool = True,
    ) -> DataLoader:
        sampler = None
        if shard and not shuffle and _distributed_world() > 1:
            # Lightning would pad evaluation shards with repeated examples, which biases the
            # accuracy of small groups; this sampler gives every example to exactly one rank.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=drop_last,
            # one-off loaders do not keep workers
            persistent_workers=persistent and self.num_workers > 0,
            pin_memory=False,
        )


def _distributed_world() -> int:
    return (
        torch.distributed.get_world_size()
        if torch.distributed.is_available() and torch.distributed.is_initialized()
        else 1
    )


def _groups_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorImageDataset):
        return dataset.groups
    if isinstance(dataset, torch.utils.data.Subset):
        return _groups_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    if hasattr(dataset, "groups"):
        return torch.as_tensor(dataset.groups)
    raise TypeError(f"cannot read groups of {type(dataset).__name__}; give it a `groups` tensor")


def _with_transform(dataset: Dataset, transform: Callable | None, num_views: int) -> Dataset:
    if hasattr(dataset, "with_transform"):
        return dataset.with_transform(transform, num_views)
    if isinstance(dataset, torch.utils.data.Subset):
        return torch.utils.data.Subset(
            _with_transform(dataset.dataset, transform, num_views), dataset.indices
        )
    raise TypeError(f"{type(dataset).__name__} needs a with_transform(transform, num_views) method")


def _subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded random ``fraction`` of a dataset, re-indexed from 0 (``index`` stays the position,
    as JTT and IP-IRM need)."""
    n = len(dataset)  # type: ignore[arg-type]
    keep = max(1, math.ceil(fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:keep].sort().values
    if not hasattr(dataset, "select"):
        raise TypeError(f"train_fraction < 1 needs {type(dataset).__name__}.select(indices)")
    return dataset.select(perm)
