"""The training loader: an order and augmentations that are functions of (seed, epoch, position).

:class:`EpochSampler` shuffles with a permutation seeded by ``(seed, epoch)``, shards it over DDP
ranks (as ``DistributedSampler`` does, so Lightning does not wrap it) and yields ``(index,
example_seed)`` pairs; :class:`SeededExamples` applies each example's transform with torch's CPU
generator seeded by that ``example_seed``; :class:`ResumableLoader` is a ``DataLoader`` with
Lightning's ``state_dict`` / ``load_state_dict`` interface, so a checkpoint written mid-epoch
resumes at the next unseen batch. See :mod:`robustrep.randomness` for the whole picture.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from robustrep.randomness import derive_seed


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class EpochSampler(DistributedSampler):
    """Training order of epoch ``e``: a permutation seeded by ``(seed, e)``, sharded over ranks.

    It subclasses ``DistributedSampler`` only so that Lightning uses it as it is under DDP (every
    rank computes the same permutation and takes every ``world``-th index, padding by wrapping as
    ``DistributedSampler`` does); it works the same in one process.

    Args:
        num_examples: size of the dataset.
        seed: the run seed; the permutation of epoch ``e`` is seeded by
            ``derive_seed(seed, "order", e)``.
        shuffle: False = dataset order (every epoch the same).
        num_replicas, rank: the DDP world (None = read from the initialised process group, else 1 /
            0).
    """

    def __init__(
        self,
        num_examples: int,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        # no DistributedSampler.__init__: it needs a process group, and we read the world ourselves
        self.num_examples = num_examples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        world, own = _world()
        self.num_replicas = world if num_replicas is None else num_replicas
        self.rank = own if rank is None else rank
        self.drop_last = False
        self.num_samples = math.ceil(num_examples / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas
        # (epoch, examples of this rank already trained on)
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, examples: int) -> None:
        """In ``epoch`` (if it is the next one iterated), start after the first ``examples`` of this
        rank.
        """
        self._skip = (epoch, examples)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's dataset indices for ``epoch``, in order."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
            perm = torch.randperm(self.num_examples, generator=gen)
        else:
            perm = torch.arange(self.num_examples)
        # pad so every rank has num_samples (DistributedSampler's rule)
        if self.total_size > self.num_examples:
            extra = self.total_size - self.num_examples
            perm = torch.cat(
                [perm, perm.repeat(math.ceil(self.total_size / self.num_examples))[:extra]]
            )
        return perm[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        start = 0
        if self._skip is not None:
            if self._skip[0] == epoch:
                start = self._skip[1]
            self._skip = None
        for index in self.order(epoch)[start:].tolist():
            yield index, derive_seed(self.seed, "example", epoch, index)

    def __len__(self) -> int:
        return self.num_samples


class SeededExamples(Dataset):
    """A dataset read with ``(index, seed)`` keys: the item's random transform draws from torch's
    CPU generator seeded by ``seed`` (the generator's previous state is restored afterwards)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        gen = torch.default_generator
        state = gen.get_state()
        gen.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            gen.set_state(state)

    def __getitems__(self, keys: list[tuple[int, int]]) -> Any:
        """A whole batch: collated in one go when the dataset can (``batch(indices)`` of a dataset
        without random transforms, e.g. :class:`~robustrep.data.datasets.TensorImageDataset`),
        else item by item with each item's seed."""
        batch = getattr(self.dataset, "batch", None)
        collated = batch([index for index, _ in keys]) if callable(batch) else None
        if collated is not None:
            return Collated(collated)
        return [self[key] for key in keys]


class Collated(dict):
    """A batch :meth:`SeededExamples.__getitems__` has already collated (passed through as is)."""


def collate(data: Any) -> Any:
    """The training loader's collate function: ``default_collate``, except for a batch the dataset
    has already collated."""
    return dict(data) if isinstance(data, Collated) else default_collate(data)


def ignore_sigint(_worker_id: int) -> None:
    """DataLoader worker init: leave Ctrl-C to the main process, which stops the run cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ResumableLoader(DataLoader):
    """The training ``DataLoader``: :class:`EpochSampler` order, :class:`SeededExamples` items, and
    Lightning's stateful-loader interface (its position is saved in checkpoints).

    The iterator it returns starts the underlying one lazily, at the first batch, so the sampler's
    epoch is the one Lightning sets after restoring a checkpoint even with worker processes.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        drop_last: bool = False,
        **kwargs: Any,
    ) -> None:
        sampler = kwargs.pop("sampler", None) or EpochSampler(len(dataset), seed, shuffle)  # type: ignore[arg-type]
        if not isinstance(dataset, SeededExamples):
            dataset = SeededExamples(dataset)
        kwargs.setdefault("collate_fn", collate)
        kwargs.setdefault("worker_init_fn", ignore_sigint if num_workers > 0 else None)
        kwargs.setdefault("persistent_workers", num_workers > 0)
        super().__init__(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=num_workers,
            drop_last=drop_last,
            **kwargs,
        )
        self.seed = seed
        self.shuffle_examples = shuffle
        self._batches = 0  # batches handed out by the current iterator

    def __iter__(self) -> Iterator[Any]:
        self._batches = 0
        inner: Iterator[Any] | None = None
        make_inner = super().__iter__

        def batches() -> Iterator[Any]:
            nonlocal inner
            inner = make_inner()
            for batch in inner:
                self._batches += 1
                yield batch

        return batches()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "batches": self._batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(int(state["epoch"]))
            sampler.skip(int(state["epoch"]), int(state["batches"]) * int(self.batch_size or 1))
