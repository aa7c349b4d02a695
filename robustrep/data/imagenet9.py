"""The Background Challenge (ImageNet-9, Xiao et al., 2020) with its named test variants."""

from __future__ import annotations

from pathlib import Path

import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import ImageFileDataset, list_image_folder, missing, seeded_split
from robustrep.data.presets import RecipeMixin
from robustrep.errors import ConfigError, CorruptDataError

BG_SOURCE = (
    "https://github.com/MadryLab/backgrounds_challenge (release asset "
    "backgrounds_challenge_data.tar.gz for the test variants; the README links the IN-9 training "
    "tarballs original.tar.gz, in9l.tar.gz, ...)"
)
BG_LAYOUT = """<root>/
    bg_challenge/<variant>/val/<class>/*.JPEG    test variants: original, mixed_same, mixed_rand, \
mixed_next,
                                                 only_fg, no_fg, only_bg_b, only_bg_t
    <train_variant>/train/<class>/*.JPEG         IN-9 training data, e.g. original/ \
(original.tar.gz) or in9l/ (in9l.tar.gz)
    <train_variant>/val/<class>/*.JPEG           optional; otherwise validation is carved from train
  classes: 00_dog 01_bird '02_wheeled vehicle' 03_reptile 04_carnivore 05_insect '06_musical \
instrument' 07_primate 08_fish"""
IN9_CLASSES = [
    "dog",
    "bird",
    "wheeled vehicle",
    "reptile",
    "carnivore",
    "insect",
    "musical instrument",
    "primate",
    "fish",
]
VARIANTS = (
    "original",
    "mixed_same",
    "mixed_rand",
    "mixed_next",
    "only_fg",
    "no_fg",
    "only_bg_b",
    "only_bg_t",
)


def _folder_dataset(folder: Path, resolution: int, variant: str) -> ImageFileDataset:
    if not folder.is_dir():
        raise missing(folder, BG_LAYOUT, BG_SOURCE)
    files, labels, classes = list_image_folder(folder)
    if len(classes) != 9:
        raise CorruptDataError(
            f"{folder} should hold the 9 IN-9 class folders (00_dog ... 08_fish), "
            f"found {len(classes)}: {classes}"
        )
    domain = VARIANTS.index(variant) if variant in VARIANTS else -1
    labels_t = torch.tensor(labels, dtype=torch.long)
    return ImageFileDataset(
        files,
        labels_t,
        labels_t.clone(),
        size=(resolution, resolution),
        domain=torch.full((len(files),), domain),
    )


class BackgroundChallenge(RecipeMixin, RobustDataModule):
    """ImageNet-9 and the Background Challenge test variants: how much does a model use backgrounds?

    Input: 3 x ``resolution`` x ``resolution`` (the released images are 224 x 224), decoded lazily.
    Label: one of 9 coarse ImageNet classes (sorted class folders ``00_dog`` ... ``08_fish``).
    Groups: one per class (no attribute). ``domain``: the index of the variant in
    ``original, mixed_same, mixed_rand, mixed_next, only_fg, no_fg, only_bg_b, only_bg_t`` (-1 for
    training data). Splits: train = ``<root>/<train_variant>/train``; val =
    ``<root>/<train_variant>/val`` if present, else a seeded ``val_fraction`` of train; one named
    test set per entry of ``eval_variants`` from ``<root>/bg_challenge/<variant>/val`` (the first
    is primary). The background gap is ``test/mixed_same/acc - test/mixed_rand/acc``.
    Augmentation: ``augment: standard`` is the ``imagenet`` recipe of :mod:`robustrep.data.presets`.
    Citation: Xiao et al., 2020.

    Args:
        train_variant: folder of the IN-9 training data under root (``original``, ``in9l``,
            ``mixed_rand`` ...).
        eval_variants: test variants to evaluate, each a named test set.
        resolution: output side in pixels.
        val_fraction: share of train used for validation when there is no ``val`` folder.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "background_challenge"
    augment_recipe = "imagenet"

    def __init__(
        self,
        train_variant: str = "original",
        eval_variants: list[str] | tuple[str, ...] = (
            "original",
            "mixed_same",
            "mixed_rand",
            "only_fg",
            "no_fg",
        ),
        resolution: int = 224,
        val_fraction: float = 0.1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not eval_variants:
            raise ConfigError("eval_variants needs at least one test variant")
        self.train_variant = train_variant
        self.eval_variants = list(eval_variants)
        self.resolution = resolution
        self.val_fraction = val_fraction
        self.num_classes = 9
        self.class_names = list(IN9_CLASSES)
        self.image_shape = (3, resolution, resolution)

    def build_splits(self) -> Splits:
        root = Path(self.root)
        train = _folder_dataset(root / self.train_variant / "train", self.resolution, "train")
        if (root / self.train_variant / "val").is_dir():
            val = _folder_dataset(root / self.train_variant / "val", self.resolution, "train")
        else:
            va, tr = seeded_split(len(train), [self.val_fraction, 1 - self.val_fraction], self.seed)
            val, train = train.select(va), train.select(tr)
        tests = {
            v: _folder_dataset(root / "bg_challenge" / v / "val", self.resolution, v)
            for v in self.eval_variants
        }
        return Splits(train=train, val={"val": val}, test=tests)
