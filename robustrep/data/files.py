"""Reading benchmarks from the files users already have: path checks, idx/pickle readers, lazy
images.

Everything here raises the user-facing errors of :mod:`robustrep.errors`:
:class:`~robustrep.errors.DataNotFoundError` names the missing file, the layout the loader expects
and where the dataset is published; :class:`~robustrep.errors.CorruptDataError` names a file that
exists but cannot be decoded.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robustrep.data.datasets import annotations
from robustrep.errors import CorruptDataError, DataNotFoundError


def missing(path: str | Path, layout: str, source: str, hint: str = "") -> DataNotFoundError:
    """The error for a missing file: what, the expected layout and where to get the dataset."""
    text = (
        f"{path} not found.\nExpected layout:\n{layout.rstrip()}\nThe "
        f"dataset is published at: {source}"
    )
    if hint:
        text += f"\n{hint}"
    return DataNotFoundError(text)


def require(path: str | Path, layout: str, source: str, hint: str = "") -> Path:
    """Return ``path`` if it exists, else raise :func:`missing`."""
    path = Path(path)
    if not path.exists():
        raise missing(path, layout, source, hint)
    return path


def first_existing(
    candidates: Sequence[str | Path], layout: str, source: str, hint: str = ""
) -> Path:
    """The first of ``candidates`` that exists; the error names the first (preferred) one."""
    for c in candidates:
        if Path(c).exists():
            return Path(c)
    raise missing(candidates[0], layout, source, hint)


# --------------------------------------------------------------------------------------- idx files
def read_idx(path: str | Path) -> torch.Tensor:
    """Read an idx file (MNIST / FashionMNIST format, optionally ``.gz``) as a uint8 tensor."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"not an unsigned-byte idx file (magic {zero:#x} {dtype:#x})")
        shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if array.size != int(np.prod(shape)):
            raise ValueError(f"header says {shape} but the file holds {array.size} values")
    except (OSError, ValueError, struct.error) as err:
        raise CorruptDataError(f"cannot read idx file {path}: {err}") from err
    return torch.from_numpy(array.reshape(shape).copy())


def find_idx(folder: Path, name: str, layout: str, source: str, hint: str = "") -> Path:
    """``folder/name`` or ``folder/name.gz``."""
    return first_existing([folder / name, folder / f"{name}.gz"], layout, source, hint)


# --------------------------------------------------------------------------------------- images
def decode_image(
    path: str | Path, channels: int = 3, draft: tuple[int, int] | None = None
) -> torch.Tensor:
    """Decode one image file to uint8 C x H x W (RGB or grey); unreadable files raise
    CorruptDataError.

    ``draft`` = (width, height): let the JPEG decoder downscale by 1/2, 1/4 or 1/8 while both sides
    stay at least this large (much faster when the image is resized down afterwards anyway).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB" if channels == 3 else "L", draft)
            img = img.convert("RGB" if channels == 3 else "L")
            array = np.asarray(img, dtype=np.uint8)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"image file {path} listed in the metadata does not exist") from err
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise CorruptDataError(
            f"cannot decode image {path}: {err}. Re-extract or re-download this file."
        ) from err
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def resize_uint8(
    image: torch.Tensor,
    size: tuple[int, int] | None,
    center_crop: int | tuple[int, int] | str | None = None,
    final_crop: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """Crop/resize a uint8 C x H x W image (stays uint8): optional centre crop (``"square"`` = the
    largest centred square), antialiased resize to ``size``, optional centre crop after resizing."""
    from torchvision.transforms.v2 import functional as F

    if center_crop == "square":
        side = min(image.shape[-2:])
        image = F.center_crop(image, [side, side])
    elif center_crop is not None:
        image = F.center_crop(
            image,
            list(center_crop) if isinstance(center_crop, tuple) else [center_crop, center_crop],
        )
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = F.resize(image, list(size), antialias=True)
    if final_crop is not None:
        image = F.center_crop(
            image, list(final_crop) if isinstance(final_crop, tuple) else [final_crop, final_crop]
        )
    return image


class ImageFileDataset(Dataset):
    """Images decoded lazily from files (in the DataLoader workers), with per-example metadata.

    Items follow the example dict of DESIGN.md (``image``, ``label``, ``group``, ``index`` and the
    optional keys given as ``metadata``).

    Args:
        paths: one image file per example.
        labels: int labels (length N).
        groups: int groups (length N) or None (every group -1).
        size: (H, W) every image is resized to after decoding; None keeps the file's size (only safe
            when every file has the same size).
        center_crop: crop this square (or (H, W), or ``"square"`` = the largest centred square) from
            the centre before resizing; None = no crop.
        final_crop: centre crop after resizing (e.g. resize 256 then crop 224); None = no crop.
        channels: 3 (RGB) or 1 (grey).
        transform: applied to the float image in [0, 1].
        num_views: independently transformed views returned under ``views`` (1 = none).
        edit: optional picklable callable ``edit(uint8 image, index) -> uint8 image`` applied after
            resizing (e.g. CelebA's synthetic patch); give it a ``select(indices)`` method if it
            holds per-example state, so :meth:`select` can subset it.
        **metadata: int tensors of length N (``attribute``, ``fine_label``, ``domain``).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: torch.Tensor | Sequence[int],
        groups: torch.Tensor | Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
        center_crop: int | tuple[int, int] | str | None = None,
        final_crop: int | tuple[int, int] | None = None,
        channels: int = 3,
        transform: Callable | None = None,
        num_views: int = 1,
        edit: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        **metadata: Any,
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.labels, self.groups, self.metadata = annotations(
            len(self.paths), labels, groups, metadata, "image paths"
        )
        self.size = size
        self.center_crop = center_crop
        self.final_crop = final_crop
        self.channels = channels
        self.transform = transform
        self.num_views = num_views
        self.edit = edit

    def __len__(self) -> int:
        return len(self.paths)

    def with_transform(self, transform: Callable | None, num_views: int = 1) -> ImageFileDataset:
        """The same examples with another transform (shares the path list and metadata)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.transform = transform
        clone.num_views = num_views
        return clone

    def select(self, indices: torch.Tensor | Sequence[int]) -> ImageFileDataset:
        """A new dataset with only these examples (re-indexed from 0, so ``index`` stays the
        position).
        """
        idx = torch.as_tensor(indices, dtype=torch.long)
        clone = self.with_transform(self.transform, self.num_views)
        clone.paths = [self.paths[i] for i in idx.tolist()]
        clone.labels = self.labels[idx]
        clone.groups = self.groups[idx]
        clone.metadata = {k: v[idx] for k, v in self.metadata.items()}
        if self.edit is not None and hasattr(self.edit, "select"):
            clone.edit = self.edit.select(idx)
        return clone

    def image_paths(self) -> list[str]:
        """The image file of every example, in order (``robustrep data check --decode`` opens
        each).
        """
        return list(self.paths)

    def decode(self, path: str | Path) -> torch.Tensor:
        """Decode one file exactly as :meth:`load` does (before cropping and resizing): uint8 C x H
        x W; a missing file raises DataNotFoundError, an unreadable one CorruptDataError."""
        draft = None
        if self.size is not None and self.center_crop in (None, "square"):
            # any aspect ratio keeps both sides >= the target
            draft = (max(self.size), max(self.size))
        return decode_image(path, self.channels, draft)

    def load(self, index: int) -> torch.Tensor:
        """The uint8 image of example ``index`` after decoding, cropping, resizing and ``edit``."""
        image = resize_uint8(
            self.decode(self.paths[index]), self.size, self.center_crop, self.final_crop
        )
        if self.edit is not None:
            image = self.edit(image, index)
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.load(index).float().div_(255.0)
        item: dict[str, Any] = {
            "label": int(self.labels[index]),
            "group": int(self.groups[index]),
            "index": int(index),
        }
        for key, values in self.metadata.items():
            item[key] = int(values[index])
        if self.num_views > 1:
            t = self.transform or (lambda x: x)
            item["views"] = [t(image) for _ in range(self.num_views)]
            item["image"] = item["views"][0]
        else:
            item["image"] = self.transform(image) if self.transform is not None else image
        return item


def concat_images(parts: Sequence[ImageFileDataset]) -> ImageFileDataset:
    """Concatenate image datasets that share their decoding settings (size, crops, channels)."""
    first = parts[0]
    out = first.select(torch.arange(len(first)))
    out.paths = [p for ds in parts for p in ds.paths]
    out.labels = torch.cat([ds.labels for ds in parts])
    out.groups = torch.cat([ds.groups for ds in parts])
    out.metadata = {k: torch.cat([ds.metadata[k] for ds in parts]) for k in first.metadata}
    return out


def list_image_folder(
    folder: Path, extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
) -> tuple[list[Path], list[int], list[str]]:
    """ImageFolder-style listing: sorted class folders -> (files, labels, class folder names)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).rglob("*")):
            if f.suffix.lower() in extensions and f.is_file():
                files.append(f)
                labels.append(label)
    return files, labels, classes


def seeded_split(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Split ``range(n)`` by a seeded permutation into parts of the given fractions (the last part
    takes the remainder); every part is returned sorted."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for i, frac in enumerate(fractions):
        stop = n if i == len(fractions) - 1 else start + int(round(frac * n))
        parts.append(perm[start:stop].sort().values)
        start = stop
    return parts
