"""Triplets from a training set: for every anchor one positive (same class) and one negative
(another class), distinct within a batch, drawn by index arithmetic on the device; only the drawn
images are read (CIM's ``x+``/``x-``)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from robustrep.data.datasets import TensorImageDataset
from robustrep.errors import ConfigError


class TripletSource:
    """A label-indexed view of a training set that draws one positive and one negative per anchor.

    Labels come from the dataset's metadata (``TensorImageDataset.labels``, a ``labels`` or
    ``targets`` attribute, through ``Subset`` wrappers); only when none exists are the items read
    once. Images are read only for the drawn indices: sliced from the uint8 tensor of an in-memory
    dataset (then its transform, if any, applied per image), otherwise ``dataset[i]["image"]``.

    Args:
        dataset: the training dataset (items are dicts with ``image``, ``label``, ``index``).
        device: where the index tensors live and the drawing happens.
        workers: threads that decode the drawn images of file-based datasets (0 = in the training
            loop's thread); image decoders release the GIL, so 4-8 threads hide most of the cost.
        positives: ``class`` (default, the paper: any other example of the anchor's class) or
            ``other_attribute`` (same class, another spurious attribute, e.g. the other
            background; needs the dataset's ``attribute`` metadata, i.e. group labels: a
            diagnostic of the mechanism, not the method).
    """

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device | str = "cpu",
        workers: int = 0,
        positives: str = "class",
    ) -> None:
        if positives not in ("class", "other_attribute"):
            raise ConfigError(f"positives must be class or other_attribute, got {positives!r}")
        self.dataset = dataset
        self.workers = workers
        self.positives = positives
        self._pool = None
        self.device = torch.device(device)
        labels, keys = _labels_and_keys(dataset)
        n = labels.shape[0]
        num_classes = int(labels.max()) + 1
        counts = torch.bincount(labels, minlength=num_classes)
        if int((counts > 0).sum()) < 2:
            raise ConfigError("CIM's triplets need at least two classes in the training set")
        offsets = torch.cumsum(counts, 0) - counts
        sort_key = labels
        if positives == "other_attribute":  # sorted by (label, attribute): classes stay contiguous
            attributes = _attributes(dataset)
            sort_key = labels * (int(attributes.max()) + 1) + attributes
            group_counts = torch.bincount(sort_key)
            self.group_counts = group_counts.to(self.device)
            self.group_offsets = (torch.cumsum(group_counts, 0) - group_counts).to(self.device)
            key_to_group = torch.full((int(keys.max()) + 1,), -1, dtype=torch.long)
            key_to_group[keys] = sort_key
            self.key_to_group = key_to_group.to(self.device)
        order = torch.argsort(sort_key, stable=True)
        rank_in_class = torch.empty(n, dtype=torch.long)
        rank_in_class[order] = torch.arange(n) - offsets[labels[order]]
        key_to_rank = torch.full((int(keys.max()) + 1,), -1, dtype=torch.long)
        key_to_rank[keys] = rank_in_class
        self.size = n
        self.sorted_positions = order.to(self.device)
        self.counts = counts.to(self.device)
        self.offsets = offsets.to(self.device)
        self.key_to_rank = key_to_rank.to(self.device)
        self.labels = labels.to(self.device)
        self._images, self._positions_map, self._transform = _in_memory_images(dataset)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)

    def to(self, device: torch.device | str) -> TripletSource:
        """Move the index tensors (and the generator) to ``device``; returns self."""
        device = torch.device(device)
        if device != self.device:
            names = ["sorted_positions", "counts", "offsets", "key_to_rank", "labels"]
            if self.positives == "other_attribute":
                names += ["group_counts", "group_offsets", "key_to_group"]
            for name in names:
                setattr(self, name, getattr(self, name).to(device))
            self.device = device
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(0)
        return self

    # generators do not pickle (ddp_spawn pickles the module)
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["generator"] = None
        state["_pool"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)

    def reseed(self, seed: int) -> None:
        """Restart the draw from ``seed`` (the module uses ``(triplet_seed, rank, epoch)``)."""
        self.generator.manual_seed(int(seed))

    def sample(
        self, labels: torch.Tensor, keys: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dataset positions of one positive and one negative per anchor (vectorised).

        As in the paper ("n distinct positive examples and n distinct negative examples"), the
        positives of a batch are distinct examples, and so are its negatives: repeats are redrawn
        (a few rounds of rejection, each one vectorised over the batch). Repeats are allowed only
        where distinct draws are impossible: the positives of a class with fewer candidates than
        anchors of that class in the batch; the negatives of a class's anchors when fewer examples
        lie outside the class than it has anchors in the batch (or all negatives, when the batch
        is larger than the training set).

        Args:
            labels: anchor labels (N).
            keys: the anchors' ``index`` values; the positive is never the anchor itself (unless it
                is alone in its class). None = no exclusion.
        """
        labels = labels.to(self.device)
        if int(labels.max()) >= self.counts.shape[0] or bool((self.counts[labels] == 0).any()):
            raise ConfigError(
                "an anchor's label does not occur in the training set the triplets are drawn from"
            )
        count, offset = self.counts[labels], self.offsets[labels]
        if keys is None:
            anchor_rank = torch.full_like(labels, -1)
        else:
            keys = keys.to(self.device)
            inside = (keys >= 0) & (keys < self.key_to_rank.shape[0])
            anchor_rank = torch.where(
                inside, self.key_to_rank[keys.clamp(0, self.key_to_rank.shape[0] - 1)], -1
            )
        exclude = (anchor_rank >= 0) & (count > 1)
        n_pos = torch.where(exclude, count - 1, count)
        n_neg = self.size - count

        def draw_positive() -> torch.Tensor:  # sorted position in the anchor's class
            u = self._uniform(n_pos)
            return offset + torch.where(exclude & (u >= anchor_rank), u + 1, u)

        def draw_negative() -> torch.Tensor:  # sorted position outside the anchor's class
            v = self._uniform(n_neg)
            return torch.where(v >= offset, v + count, v)

        in_batch = torch.bincount(labels, minlength=self.counts.shape[0])[labels]
        if self.positives == "other_attribute":
            draw_positive, n_pos, in_batch_group = self._other_attribute_draw(keys, count, offset)
            pos = _distinct(draw_positive, repeats_allowed=in_batch_group > n_pos)
        else:
            pos = _distinct(draw_positive, repeats_allowed=in_batch > n_pos)
        neg = _distinct(
            draw_negative, repeats_allowed=(in_batch > n_neg) | (labels.shape[0] > self.size)
        )
        return self.sorted_positions[pos], self.sorted_positions[neg]

    def _other_attribute_draw(self, keys, count, offset):
        """(draw, candidates, anchors of the same group in the batch) for positives of the
        anchor's class with another attribute: the class's sorted range minus the anchor's group.
        """
        if keys is None:
            raise ConfigError("positives: other_attribute needs the anchors' index keys")
        group = self.key_to_group[keys.clamp(0, self.key_to_group.shape[0] - 1)]
        g_count, g_offset = self.group_counts[group], self.group_offsets[group]
        n_pos = count - g_count
        if bool((n_pos == 0).any()):
            raise ConfigError(
                "positives: other_attribute: a class has no training example with another "
                "attribute than its anchor's"
            )

        def draw() -> torch.Tensor:
            p = offset + self._uniform(n_pos)
            return torch.where(p >= g_offset, p + g_count, p)

        return draw, n_pos, torch.bincount(group)[group]

    def _uniform(self, high: torch.Tensor) -> torch.Tensor:
        """One integer in ``[0, high)`` per entry, from the source's generator."""
        u = torch.rand(high.shape, generator=self.generator, device=self.device) * high
        return u.long().clamp_max(high - 1)

    def images(self, positions: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """The (transformed) training images at ``positions`` as a float batch on ``device``."""
        if self._images is not None:
            rows = positions.cpu()
            if self._positions_map is not None:
                rows = self._positions_map[rows]
            batch = self._images[rows].float().div_(255.0)
            if self._transform is not None:
                batch = torch.stack([self._transform(img) for img in batch])
            return batch.to(device, non_blocking=True)
        load = self._load_one
        if self.workers > 0:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="cim-triplets")
            images = list(self._pool.map(load, positions.tolist()))
        else:
            images = [load(i) for i in positions.tolist()]
        return torch.stack(images).to(device, non_blocking=True)

    def _load_one(self, position: int) -> torch.Tensor:
        return self.dataset[int(position)]["image"]


#: Rounds of redrawing repeated positives / negatives before the rest are kept (only reached when
#: distinct draws are nearly impossible, e.g. a tiny class; each round redraws the repeats only).
MAX_REDRAW_ROUNDS = 64


def repeated(values: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the entries equal to an earlier entry of ``values`` (1-D)."""
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    again = torch.zeros_like(values, dtype=torch.bool)
    again[order[1:]] = ordered[1:] == ordered[:-1]
    return again


def _distinct(draw, repeats_allowed: torch.Tensor) -> torch.Tensor:
    """``draw()`` (one value per anchor) with repeats redrawn until the values are distinct,
    except where ``repeats_allowed``; redraws all entries and keeps only the repeated ones'."""
    values = draw()
    for _ in range(MAX_REDRAW_ROUNDS):
        again = repeated(values) & ~repeats_allowed
        if not bool(again.any()):
            break
        values = torch.where(again, draw(), values)
    return values


def _labels_and_keys(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels of every position and the ``index`` value each item reports, without decoding
    images.
    """
    if isinstance(dataset, TensorImageDataset):
        return dataset.labels.long(), torch.arange(len(dataset))
    if isinstance(dataset, Subset):
        inner_labels, inner_keys = _labels_and_keys(dataset.dataset)
        idx = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return inner_labels[idx], inner_keys[idx]
    for attr in ("labels", "targets"):
        if hasattr(dataset, attr):
            labels = torch.as_tensor(getattr(dataset, attr), dtype=torch.long)
            if labels.dim() == 1 and labels.shape[0] == len(dataset):  # type: ignore[arg-type]
                return labels, torch.arange(labels.shape[0])
    warnings.warn(
        f"{type(dataset).__name__} exposes no `labels` tensor; reading every item once to index "
        "the training set for CIM's triplets",
        stacklevel=3,
    )
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.tensor([it["label"] for it in items]), torch.tensor([it["index"] for it in items])


def _attributes(dataset: Dataset) -> torch.Tensor:
    """The ``attribute`` metadata of every position (in-memory datasets, through ``Subset``)."""
    if isinstance(dataset, TensorImageDataset) and "attribute" in dataset.metadata:
        return dataset.metadata["attribute"].long()
    if isinstance(dataset, Subset):
        return _attributes(dataset.dataset)[torch.as_tensor(list(dataset.indices))]
    raise ConfigError(
        f"positives: other_attribute needs attribute labels; {type(dataset).__name__} has none"
    )


def _in_memory_images(dataset: Dataset) -> tuple[torch.Tensor | None, torch.Tensor | None, Any]:
    """(uint8 images, position -> row map or None, per-image transform) of an in-memory dataset."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.images, None, dataset.transform
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, TensorImageDataset):
        return (
            dataset.dataset.images,
            torch.as_tensor(list(dataset.indices), dtype=torch.long),
            dataset.dataset.transform,
        )
    return None, None, None
