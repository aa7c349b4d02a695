"""In-memory datasets: uint8 images as one tensor plus per-example integer metadata, returning the
dict items of the datamodule contract (:mod:`robustrep.data.base`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset


def annotations(
    n: int, labels: Any, groups: Any, metadata: dict[str, Any], items: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """``(labels, groups, metadata)`` of ``n`` examples as long tensors (groups -1 when None,
    metadata fields that are None dropped); a ValueError names a field of another length."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    groups = (
        torch.full((n,), -1, dtype=torch.long)
        if groups is None
        else torch.as_tensor(groups, dtype=torch.long)
    )
    metadata = {
        k: torch.as_tensor(v, dtype=torch.long) for k, v in metadata.items() if v is not None
    }
    for name, t in [("labels", labels), ("groups", groups), *metadata.items()]:
        if t.shape[0] != n:
            raise ValueError(f"{name} has {t.shape[0]} entries but there are {n} {items}")
    return labels, groups, metadata


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 tensor N x C x H x W, plus per-example integer metadata.

    Args:
        images: uint8 tensor N x C x H x W (kept as uint8; converted to float in ``__getitem__``).
        labels: int tensor N.
        groups: int tensor N, or None (then every group is -1).
        transform: applied to the float image (C x H x W in [0, 1]); None = identity.
        num_views: number of independently transformed views to return under ``views``; 1 = none.
        **metadata: optional int tensors of length N, e.g. ``attribute``, ``fine_label``,
            ``domain`` (an item holds an int), or N x ... (an item holds the tensor, e.g. a
            ``foreground`` mask).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        groups: torch.Tensor | None = None,
        transform: Callable | None = None,
        num_views: int = 1,
        **metadata: torch.Tensor,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                "images must be a uint8 N x C x H x W tensor, got "
                f"{images.dtype} {tuple(images.shape)}"
            )
        self.images = images
        self.labels, self.groups, self.metadata = annotations(
            images.shape[0], labels, groups, metadata, "images"
        )
        self.transform = transform
        self.num_views = num_views

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, indices: torch.Tensor | Sequence[int]) -> TensorImageDataset:
        """Only these examples (shared transform), re-indexed from 0."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        meta = {k: v[idx] for k, v in self.metadata.items()}
        return TensorImageDataset(
            self.images[idx],
            self.labels[idx],
            self.groups[idx],
            self.transform,
            self.num_views,
            **meta,
        )

    def with_transform(self, transform: Callable | None, num_views: int = 1) -> TensorImageDataset:
        """The same examples (shared memory) with another transform, e.g. an eval view of train."""
        return TensorImageDataset(
            self.images, self.labels, self.groups, transform, num_views, **self.metadata
        )

    def batch(self, indices: Sequence[int]) -> dict[str, Any] | None:
        """These examples already collated (what ``default_collate`` makes of their items), in one
        indexing operation per field instead of one item at a time; None when the examples need
        a transform each (then read them one by one)."""
        if self.transform is not None or self.num_views > 1:
            return None
        idx = torch.as_tensor(indices, dtype=torch.long)
        out: dict[str, Any] = {"label": self.labels[idx], "group": self.groups[idx], "index": idx}
        out.update({key: values[idx] for key, values in self.metadata.items()})
        out["image"] = self.images[idx].float().div_(255.0)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index].float().div_(255.0)
        item: dict[str, Any] = {
            "label": int(self.labels[index]),
            "group": int(self.groups[index]),
            "index": int(index),
        }
        for key, values in self.metadata.items():
            value = values[index]
            item[key] = int(value) if value.dim() == 0 else value
        if self.num_views > 1:
            t = self.transform or (lambda x: x)
            item["views"] = [t(image) for _ in range(self.num_views)]
            item["image"] = item["views"][0]
        else:
            item["image"] = self.transform(image) if self.transform is not None else image
        return item


def stack_uint8(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack C x H x W uint8 tensors into one N x C x H x W tensor (helper for loaders)."""
    return torch.stack(list(images)).to(torch.uint8)
