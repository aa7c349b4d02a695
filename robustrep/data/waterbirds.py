"""Waterbirds (Sagawa et al., 2020) from the ``metadata.csv`` layout of group DRO / WILDS."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import ImageFileDataset, missing
from robustrep.data.presets import RecipeMixin
from robustrep.errors import CorruptDataError

WATERBIRDS_SOURCE = (
    "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz (group DRO), or "
    "WILDS' waterbirds_v1.0 (https://wilds.stanford.edu)"
)
WATERBIRDS_LAYOUT = """<root>/waterbird_complete95_forest2water2/   (or <root>/ itself, \
<root>/cub/data/waterbird_complete95_forest2water2/,
                                           <root>/waterbirds_v1.0/, \
<root>/waterbirds/waterbird_complete95_forest2water2/)
    metadata.csv            img_id,img_filename,y,split,place,place_filename  (y: 1 = waterbird; \
place: 1 = water;
                            split: 0 train, 1 val, 2 test)
    001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg ...   (img_filename is relative \
to this folder)"""
FOLDERS = (
    "waterbird_complete95_forest2water2",
    ".",
    "cub/data/waterbird_complete95_forest2water2",
    "waterbirds_v1.0",
    "waterbirds/waterbird_complete95_forest2water2",
)
COLUMNS = ("img_filename", "y", "split", "place")


def find_waterbirds(root: str) -> Path:
    for sub in FOLDERS:
        if (Path(root) / sub / "metadata.csv").exists():
            return Path(root) / sub
    raise missing(Path(root) / FOLDERS[0] / "metadata.csv", WATERBIRDS_LAYOUT, WATERBIRDS_SOURCE)


class Waterbirds(RecipeMixin, RobustDataModule):
    """Waterbirds: land/water birds (CUB) pasted on land/water backgrounds (Places).

    Input: 3 x ``resolution`` x ``resolution``; each JPEG is decoded lazily, resized to
    ``resolution * 256 / 224`` square and centre-cropped to ``resolution`` (the group DRO / DFR
    evaluation transform; 224 by default). Label ``y``: 0 landbird, 1 waterbird. Attribute
    ``place``: 0 land, 1 water background. Groups: ``2 * y + place``; published counts train
    [3498, 184, 56, 1057], val [467, 466, 133, 133], test [2255, 2255, 642, 642]. Splits: the
    ``split`` column (0 train, 1 val, 2 test). The Waterbirds convention for the average is the
    train-weighted ``weighted_acc`` metric. Known label noise (group DRO README): some Eastern
    Towhees, Western Meadowlarks and Western Wood Pewees are labelled waterbirds.
    Augmentation: ``augment: standard`` is the ``waterbirds`` recipe of
    :mod:`robustrep.data.presets`. Citation: Sagawa et al., 2020.

    Args:
        resolution: output side in pixels.
        **kwargs: the shared datamodule arguments (raise ``num_workers`` - decoding is the cost).
    """

    benchmark_name = "waterbirds"
    augment_recipe = "waterbirds"

    def __init__(self, resolution: int = 224, **kwargs) -> None:
        super().__init__(**kwargs)
        self.resolution = resolution
        self.num_classes = 2
        self.num_attributes = 2
        self.class_names = ["landbird", "waterbird"]
        self.attribute_names = ["land", "water"]
        self.image_shape = (3, resolution, resolution)

    def published_counts(self) -> dict[str, list[int]]:
        """Group counts of the released metadata.csv (group DRO), for ``robustrep data check``."""
        return {
            "train": [3498, 184, 56, 1057],
            "val": [467, 466, 133, 133],
            "test": [2255, 2255, 642, 642],
        }

    def build_splits(self) -> Splits:
        folder = find_waterbirds(self.root)
        path = folder / "metadata.csv"
        try:
            meta = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as err:
            raise CorruptDataError(f"cannot parse {path}: {err}") from err
        absent = [c for c in COLUMNS if c not in meta.columns]
        if absent:
            raise CorruptDataError(
                f"{path} lacks the columns {absent}; expected layout:\n{WATERBIRDS_LAYOUT}"
            )
        y = torch.tensor(meta["y"].to_numpy(), dtype=torch.long)
        place = torch.tensor(meta["place"].to_numpy(), dtype=torch.long)
        split = torch.tensor(meta["split"].to_numpy(), dtype=torch.long)
        paths = [str(folder / f) for f in meta["img_filename"]]
        resize = round(self.resolution * 256 / 224)

        def subset(code: int) -> ImageFileDataset:
            idx = (split == code).nonzero().squeeze(1)
            return ImageFileDataset(
                [paths[i] for i in idx.tolist()],
                y[idx],
                y[idx] * 2 + place[idx],
                size=(resize, resize),
                final_crop=self.resolution,
                attribute=place[idx],
            )

        return Splits(train=subset(0), val={"val": subset(1)}, test={"test": subset(2)})
