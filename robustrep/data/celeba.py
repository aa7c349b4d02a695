"""CelebA with any target / spurious attribute pair, read from the official txt files or the Kaggle
CSVs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import ImageFileDataset, missing
from robustrep.data.presets import RecipeMixin
from robustrep.errors import ConfigError, CorruptDataError

CELEBA_SOURCE = (
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (official: Align&Cropped images + "
    "Anno/list_attr_celeba.txt + Eval/list_eval_partition.txt), or the Kaggle copy "
    "jessicali9530/celeba-dataset (CSV files)"
)
CELEBA_LAYOUT = """<root>/celeba/                     (or <root>/ itself, <root>/celebA/data/, \
<root>/celebA_v1.0/)
    list_attr_celeba.txt              line 1: count; line 2: the 40 attribute names; then \
'000001.jpg -1  1 ...'
    list_eval_partition.txt           '000001.jpg 0' (0 train, 1 val, 2 test)
    img_align_celeba/000001.jpg ...   (a nested img_align_celeba/img_align_celeba/ is accepted)
  or the Kaggle CSV variant:
    list_attr_celeba.csv              image_id,5_o_Clock_Shadow,...,Young   (values -1/1)
    list_eval_partition.csv           image_id,partition"""
#: Named (target, spurious) pairs.
PRESETS = {"blond_male": ("Blond_Hair", "Male"), "attractive_smiling": ("Attractive", "Smiling")}
FOLDERS = ("celeba", "celebA/data", "celebA_v1.0", ".", "celeba-dataset")


class _Patch:
    """Paint a filled ``size`` px square of ``colour`` into the bottom-right corner of the images
    whose mask is set (where Chroma-VAE's figures show it)."""

    def __init__(
        self, mask: torch.Tensor, size: int, colour: tuple[int, int, int] = (0, 0, 255)
    ) -> None:
        self.mask = mask
        self.size = size
        self.colour = torch.tensor(colour, dtype=torch.uint8)[:, None, None]

    def select(self, indices: torch.Tensor) -> _Patch:
        return _Patch(self.mask[indices], self.size, tuple(self.colour.flatten().tolist()))

    def __call__(self, image: torch.Tensor, index: int) -> torch.Tensor:
        if self.mask[index]:
            image = image.clone()
            image[:, -self.size :, -self.size :] = self.colour[: image.shape[0]]
        return image


def find_celeba(root: str) -> tuple[Path, str]:
    """The folder that holds CelebA's annotation files and whether they are ``txt`` or ``csv``."""
    for sub in FOLDERS:
        folder = Path(root) / sub
        if (folder / "list_attr_celeba.txt").exists():
            return folder, "txt"
        if (folder / "list_attr_celeba.csv").exists():
            return folder, "csv"
    raise missing(Path(root) / "celeba" / "list_attr_celeba.txt", CELEBA_LAYOUT, CELEBA_SOURCE)


def read_celeba_annotations(folder: Path, fmt: str) -> pd.DataFrame:
    """Attributes in {0, 1} and ``partition`` (0/1/2), indexed by image file name."""
    attr_file = folder / f"list_attr_celeba.{fmt}"
    part_file = folder / f"list_eval_partition.{fmt}"
    if not part_file.exists():
        raise missing(part_file, CELEBA_LAYOUT, CELEBA_SOURCE)
    try:
        if fmt == "txt":
            # The header line has the 40 names but no file-name column, so pandas uses column 1 as
            # the index.
            attrs = pd.read_csv(attr_file, sep=r"\s+", skiprows=1)
            parts = pd.read_csv(
                part_file, sep=r"\s+", header=None, names=["image_id", "partition"], index_col=0
            )
        else:
            attrs = pd.read_csv(attr_file, index_col="image_id")
            parts = pd.read_csv(part_file, index_col="image_id")
    except (ValueError, KeyError, pd.errors.ParserError) as err:
        raise CorruptDataError(
            f"cannot parse CelebA annotations {attr_file} / {part_file}: {err}"
        ) from err
    if attrs.shape[1] != 40:
        raise CorruptDataError(
            f"{attr_file} should have 40 attribute columns, found {attrs.shape[1]}"
        )
    table = ((attrs.astype(int) + 1) // 2).join(parts["partition"], how="inner")
    if len(table) != len(attrs):
        raise CorruptDataError(
            f"{part_file} does not list every image of {attr_file} "
            f"({len(table)} of {len(attrs)} matched)"
        )
    return table


class CelebA(RecipeMixin, RobustDataModule):
    """CelebA faces: predict one attribute while another is a spurious shortcut.

    Input: aligned faces, 3 x ``resolution`` x ``resolution`` (centre square crop, then resize; 64
    px by default as in Chroma-VAE) or the full 3 x 218 x 178 image with ``resolution: null``.
    Decoded lazily from ``img_align_celeba/``.
    Label: the ``target`` attribute (0/1). Attribute: the ``spurious`` attribute (0/1), or, with
    ``patch_probability > 0``, whether the synthetic patch was painted. Groups: ``2 * label +
    attribute``; for Blond_Hair / Male the published counts are train [71629, 66874, 22880, 1387],
    val [8535, 8276, 2874, 182], test [9767, 7535, 2480, 180] (``robustrep data check``).
    Splits: the official ``list_eval_partition`` (0 train, 1 val, 2 test).

    Options:
        ``preset``: ``blond_male`` (Sagawa et al.) or ``attractive_smiling`` (Chroma-VAE) set
        ``target``/``spurious``.
        ``complete_correlation``: remove the two minority groups from train and val (test keeps all
        four), as in Chroma-VAE's complete-correlation setting. Which two are the minority is read
        off the training split: the direction of the association (odds ratio) of label and
        attribute, e.g. for Blond/Male the kept groups are non-blond male and blond female.
        ``patch_probability``: Chroma-VAE's synthetic shortcut - a ``patch_size`` px blue square
        in the bottom-right corner, painted on this fraction of the positive
        images in train and val (none on negatives); on the test set each image gets the patch
        with probability ``patch_test_probability`` regardless of its label. Seeded.

    Augmentation: ``augment: standard`` is the ``celeba`` recipe of :mod:`robustrep.data.presets`.
    Citation: Liu et al., 2015; groups as in Sagawa et al., 2020.

    Args:
        target: attribute name to predict (see ``list_attr_celeba``; e.g. ``Blond_Hair``).
        spurious: attribute name used for groups (e.g. ``Male``).
        preset: None, ``blond_male`` or ``attractive_smiling`` (overrides target/spurious).
        resolution: output side in px after the centre square crop; None = full 218 x 178 image.
        complete_correlation: drop the minority groups from train and val.
        patch_probability: fraction of positive train/val images that get the blue patch (0 = off).
        patch_test_probability: fraction of test images (either label) that get the patch.
        patch_size: side of the patch in output pixels.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "celeba"
    augment_recipe = "celeba"

    def __init__(
        self,
        target: str = "Blond_Hair",
        spurious: str = "Male",
        preset: str | None = None,
        resolution: int | None = 64,
        complete_correlation: bool = False,
        patch_probability: float = 0.0,
        patch_test_probability: float = 0.5,
        patch_size: int = 10,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(
                    f"unknown CelebA preset {preset!r}; choose one of {', '.join(PRESETS)}"
                )
            target, spurious = PRESETS[preset]
        if target == spurious:
            raise ConfigError(f"target and spurious attribute are both {target!r}")
        if not 0.0 <= patch_probability <= 1.0 or not 0.0 <= patch_test_probability <= 1.0:
            raise ConfigError("patch probabilities must be in [0, 1]")
        self.target = target
        self.spurious = spurious
        self.preset = preset
        self.resolution = resolution
        self.complete_correlation = complete_correlation
        self.patch_probability = patch_probability
        self.patch_test_probability = patch_test_probability
        self.patch_size = patch_size
        self.num_classes = 2
        self.num_attributes = 2
        self.class_names = [f"not_{target}", target]
        self.attribute_names = (
            ["no_patch", "patch"] if patch_probability > 0 else [f"not_{spurious}", spurious]
        )
        self.image_shape = (3, resolution, resolution) if resolution else (3, 218, 178)
        self.kept_groups: list[int] | None = None

    def published_counts(self) -> dict[str, list[int]] | None:
        """Group counts of the real data (reference/benchmarks.md) for Blond_Hair / Male, else
        None.
        """
        if (
            (self.target, self.spurious) != ("Blond_Hair", "Male")
            or self.complete_correlation
            or self.patch_probability > 0
        ):
            return None
        return {
            "train": [71629, 66874, 22880, 1387],
            "val": [8535, 8276, 2874, 182],
            "test": [9767, 7535, 2480, 180],
        }

    def build_splits(self) -> Splits:
        folder, fmt = find_celeba(self.root)
        table = read_celeba_annotations(folder, fmt)
        for name in (self.target, self.spurious):
            if name not in table.columns:
                raise ConfigError(
                    f"CelebA has no attribute {name!r}; available: "
                    f"{', '.join(c for c in table.columns if c != 'partition')}"
                )
        images = folder / "img_align_celeba"
        if (images / "img_align_celeba").is_dir():
            images = images / "img_align_celeba"
        if not images.is_dir():
            raise missing(images, CELEBA_LAYOUT, CELEBA_SOURCE)
        labels = torch.tensor(table[self.target].to_numpy(), dtype=torch.long)
        attrs = torch.tensor(table[self.spurious].to_numpy(), dtype=torch.long)
        part = torch.tensor(table["partition"].to_numpy(), dtype=torch.long)
        paths = [str(images / name) for name in table.index]
        gen = torch.Generator().manual_seed(self.seed * 1000 + 500)
        patched = torch.zeros(len(paths), dtype=torch.bool)
        if self.patch_probability > 0:
            u = torch.rand(len(paths), generator=gen)
            patched = torch.where(
                part == 2,
                u < self.patch_test_probability,
                (labels == 1) & (u < self.patch_probability),
            )
            attrs = patched.long()
        groups = labels * 2 + attrs
        keep = torch.ones(len(paths), dtype=torch.bool)
        if self.complete_correlation:
            train = part == 0
            n = torch.bincount(groups[train], minlength=4).double()
            positive = n[0] * n[3] >= n[1] * n[2]  # label and attribute agree more often than not
            self.kept_groups = [0, 3] if positive else [1, 2]
            keep = (part == 2) | torch.isin(groups, torch.tensor(self.kept_groups))
        res = self.resolution

        def subset(code: int) -> ImageFileDataset:
            idx = ((part == code) & keep).nonzero().squeeze(1)
            return ImageFileDataset(
                [paths[i] for i in idx.tolist()],
                labels[idx],
                groups[idx],
                size=(res, res) if res else None,
                center_crop="square" if res else None,
                edit=_Patch(patched[idx], self.patch_size) if self.patch_probability > 0 else None,
                attribute=attrs[idx],
            )

        return Splits(train=subset(0), val={"val": subset(1)}, test={"test": subset(2)})
