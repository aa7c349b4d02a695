"""VIPriors image classification: ImageNet with 50 images per class (IP-IRM's benchmark)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import ImageFileDataset, list_image_folder, missing, seeded_split
from robustrep.data.presets import RecipeMixin
from robustrep.errors import ConfigError

VIPRIORS_SOURCE = (
    "the VIPriors challenge toolkit (https://github.com/VIPriors/vipriors-challenges-toolkit, "
    "image-classification/generate_images.py builds imagenet_50/ from your ImageNet-2012 copy)"
)
VIPRIORS_LAYOUT = """<root>/imagenet_50/
    train/<wnid>/*.JPEG     50 images per class (from ImageNet-2012 train)
    val/<wnid>/*.JPEG       50 images per class (from ImageNet-2012 train)
    test/imgs/*.JPEG        unlabelled (ImageNet-2012 val, renamed; scored on CodaLab)"""


class VIPriors(RecipeMixin, RobustDataModule):
    """VIPriors image classification: 1,000 ImageNet classes with 50 training images each.

    Input: 3 x ``resolution`` x ``resolution``: the largest centred square of each JPEG, resized
    (lazy decoding). Label: the class (sorted ``wnid`` folders). Groups: one per class.
    Splits: train = ``imagenet_50/train``. The official test images have no public labels, so the
    labelled ``imagenet_50/val`` folder is the test set (named ``test``); validation is either the
    same folder (``val_fraction: 0``, the default, as the challenge baselines do) or a seeded
    ``val_fraction`` carved from train, leaving ``val/`` untouched for the final number.
    ``predict`` serves the unlabelled ``test/imgs`` images (label -1) for a challenge submission.
    Augmentation: ``augment: standard`` is the ``imagenet`` recipe of :mod:`robustrep.data.presets`.
    Citation: Bruintjes et al., VIPriors challenges 2020-2022; Wang et al., 2021 (IP-IRM).

    Args:
        num_classes: classes expected; None = count the ``train`` class folders at construction
            (1,000 for the real data; the CLI links it into the model).
        resolution: output side in pixels.
        val_fraction: 0 = validate on ``val/``; > 0 = carve this share of train for validation.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "vipriors"
    augment_recipe = "imagenet"

    def __init__(
        self,
        num_classes: int | None = None,
        resolution: int = 224,
        val_fraction: float = 0.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        train_dir = self.folder / "train"
        if num_classes is None:
            num_classes = (
                sum(1 for p in train_dir.iterdir() if p.is_dir()) if train_dir.is_dir() else 1000
            )
        self.num_classes = num_classes
        self.resolution = resolution
        self.val_fraction = val_fraction
        self.image_shape = (3, resolution, resolution)

    @property
    def folder(self) -> Path:
        root = Path(self.root)
        return root if root.name == "imagenet_50" else root / "imagenet_50"

    def _read(
        self, split: str, classes: list[str] | None = None
    ) -> tuple[ImageFileDataset, list[str]]:
        folder = self.folder / split
        if not folder.is_dir():
            raise missing(folder, VIPRIORS_LAYOUT, VIPRIORS_SOURCE)
        files, labels, found = list_image_folder(folder, (".jpeg", ".jpg", ".png"))
        if classes is not None and found != classes:
            raise ConfigError(
                f"{folder} has different class folders from train ({len(found)} vs {len(classes)})"
            )
        y = torch.tensor(labels, dtype=torch.long)
        r = self.resolution
        return ImageFileDataset(files, y, y.clone(), size=(r, r), center_crop="square"), found

    def build_splits(self) -> Splits:
        train, classes = self._read("train")
        if len(classes) != self.num_classes:
            raise ConfigError(
                f"num_classes is {self.num_classes} but {self.folder / 'train'} has "
                f"{len(classes)} class folders"
            )
        self.class_names = classes
        held, _ = self._read("val", classes)
        if self.val_fraction > 0:
            va, tr = seeded_split(len(train), [self.val_fraction, 1 - self.val_fraction], self.seed)
            val, train = train.select(va), train.select(tr)
        else:
            val = held
        return Splits(train=train, val={"val": val}, test={"test": held})

    def predict_dataloader(self) -> list[DataLoader]:
        """The unlabelled challenge test images in file-name order (label and group -1)."""
        folder = self.folder / "test" / "imgs"
        if not folder.is_dir():
            raise missing(folder, VIPRIORS_LAYOUT, VIPRIORS_SOURCE)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        minus = torch.full((len(files),), -1, dtype=torch.long)
        r = self.resolution
        ds = ImageFileDataset(files, minus, minus, size=(r, r), center_crop="square")
        return [self.eval_loader(ds, shard=True)]
