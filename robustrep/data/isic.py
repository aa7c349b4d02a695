"""ISIC skin lesions with the colourful-patch strata of GEORGE (Sohoni et al., 2020)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import ImageFileDataset, missing
from robustrep.data.presets import RecipeMixin
from robustrep.errors import CorruptDataError

ISIC_SOURCE = (
    "the ISIC archive (https://www.isic-archive.com) with GEORGE's labels.csv "
    "(https://github.com/HazyResearch/hidden-stratification, data/isic; patch = 1 for "
    "images of the SONIC dataset)"
)
ISIC_LAYOUT = """<root>/isic/            (or <root>/ itself)
    labels.csv          columns: Image Index, benign_malignant (benign|malignant), patch (0/1), \
fold (train|val|test), ...
    images/<Image Index>"""
COLUMNS = ("Image Index", "benign_malignant", "patch", "fold")
FOLDS = {"train": 0, "val": 1, "test": 2}


class ISIC(RecipeMixin, RobustDataModule):
    """ISIC melanoma classification; about half the benign images carry colourful patches.

    Input: 3 x ``resolution`` x ``resolution`` (resized; 224 as in GEORGE), decoded lazily.
    Label: 0 benign, 1 malignant (``benign_malignant``; other values are dropped). Attribute: the
    ``patch`` column (0/1). Groups: ``2 * label + patch``; malignant images never have patches, so
    group ``malignant/patch`` is empty. ``fine_label``: GEORGE's ``patch`` ontology, 0 benign
    without patch, 1 benign with patch, 2 malignant. Splits: the ``fold`` column (train, val,
    test; other folds such as ``train_clean`` are ignored).
    Augmentation: ``augment: standard`` is the ``isic`` recipe of :mod:`robustrep.data.presets`.
    Citation: Codella et al., 2019; Sohoni et al., 2020 (GEORGE).

    Args:
        resolution: output side in pixels.
        image_extension: appended to ``Image Index`` when it has no extension.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "isic"
    augment_recipe = "isic"

    def __init__(self, resolution: int = 224, image_extension: str = ".jpg", **kwargs) -> None:
        super().__init__(**kwargs)
        self.resolution = resolution
        self.image_extension = image_extension
        self.num_classes = 2
        self.num_attributes = 2
        self.num_fine_classes = 3
        self.class_names = ["benign", "malignant"]
        self.attribute_names = ["no_patch", "patch"]
        self.image_shape = (3, resolution, resolution)

    def build_splits(self) -> Splits:
        root = Path(self.root)
        folder = (
            root / "isic"
            if (root / "isic" / "labels.csv").exists() or not (root / "labels.csv").exists()
            else root
        )
        path = folder / "labels.csv"
        if not path.exists():
            raise missing(path, ISIC_LAYOUT, ISIC_SOURCE)
        try:
            table = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as err:
            raise CorruptDataError(f"cannot parse {path}: {err}") from err
        absent = [c for c in COLUMNS if c not in table.columns]
        if absent:
            raise CorruptDataError(
                f"{path} lacks the columns {absent}; expected layout:\n{ISIC_LAYOUT}"
            )
        table = table[
            table["benign_malignant"].isin(["benign", "malignant"])
            & table["fold"].isin(list(FOLDS))
        ]
        y = torch.tensor((table["benign_malignant"] == "malignant").to_numpy(), dtype=torch.long)
        patch = torch.tensor(table["patch"].astype(int).to_numpy(), dtype=torch.long)
        fold = torch.tensor(table["fold"].map(FOLDS).to_numpy(), dtype=torch.long)
        names = [
            n if Path(n).suffix else n + self.image_extension
            for n in table["Image Index"].astype(str)
        ]
        paths = [str(folder / "images" / n) for n in names]
        fine = torch.where(y == 1, 2, patch)
        r = self.resolution

        def subset(code: int) -> ImageFileDataset:
            idx = (fold == code).nonzero().squeeze(1)
            return ImageFileDataset(
                [paths[i] for i in idx.tolist()],
                y[idx],
                y[idx] * 2 + patch[idx],
                size=(r, r),
                attribute=patch[idx],
                fine_label=fine[idx],
            )

        return Splits(train=subset(0), val={"val": subset(1)}, test={"test": subset(2)})
