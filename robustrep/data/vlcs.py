"""VLCS in DomainBed's layout, leave-one-domain-out."""

from __future__ import annotations

from pathlib import Path

import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import (
    ImageFileDataset,
    concat_images,
    list_image_folder,
    missing,
    seeded_split,
)
from robustrep.data.presets import RecipeMixin
from robustrep.errors import ConfigError, CorruptDataError

VLCS_SOURCE = (
    "DomainBed (https://github.com/facebookresearch/DomainBed, `python -m "
    "domainbed.scripts.download`), which fetches VLCS.tar.gz"
)
VLCS_LAYOUT = """<root>/VLCS/
    Caltech101/{bird,car,chair,dog,person}/*.jpg
    LabelMe/...
    SUN09/...
    VOC2007/..."""
VLCS_DOMAINS = ["Caltech101", "LabelMe", "SUN09", "VOC2007"]
VLCS_CLASSES = ["bird", "car", "chair", "dog", "person"]


class VLCS(RecipeMixin, RobustDataModule):
    """VLCS: 5 classes photographed in 4 datasets (domains); train on three, test on the fourth.

    Input: 3 x ``resolution`` x ``resolution`` (resized, DomainBed's evaluation transform), lazy.
    Label: bird, car, chair, dog, person. ``domain`` = attribute: the source dataset in sorted order
    (Caltech101, LabelMe, SUN09, VOC2007). Groups: ``label * 4 + domain`` (20).
    Splits (DomainBed protocol): every domain is divided by a permutation seeded with ``seed`` into
    an *out* part (``holdout_fraction``, 20%) and an *in* part. Train = the *in* parts of the three
    training domains; val = their *out* parts ("training-domain validation", the usual model
    selection). Test sets, each named after its domain: the held-out ``test_domain`` (all of it,
    primary) followed by the *out* part of each training domain.
    Augmentation: ``augment: standard`` is the ``domainbed`` recipe of
    :mod:`robustrep.data.presets`. Citation: Fang et al., 2013; Gulrajani & Lopez-Paz, 2021
    (DomainBed).

    Args:
        test_domain: the held-out domain (name or index 0-3).
        holdout_fraction: share of every domain kept out of training.
        resolution: output side in pixels (224 for ResNets).
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "vlcs"
    augment_recipe = "domainbed"

    def __init__(
        self,
        test_domain: str | int = "VOC2007",
        holdout_fraction: float = 0.2,
        resolution: int = 224,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(test_domain, int):
            if not 0 <= test_domain < 4:
                raise ConfigError(f"test_domain index must be 0-3, got {test_domain}")
            test_domain = VLCS_DOMAINS[test_domain]
        if test_domain not in VLCS_DOMAINS:
            raise ConfigError(f"test_domain must be one of {VLCS_DOMAINS}, got {test_domain!r}")
        if not 0.0 < holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        self.test_domain = test_domain
        self.holdout_fraction = holdout_fraction
        self.resolution = resolution
        self.num_classes = 5
        self.num_attributes = 4
        self.class_names = list(VLCS_CLASSES)
        self.attribute_names = list(VLCS_DOMAINS)
        self.image_shape = (3, resolution, resolution)

    def domain_dataset(self, index: int) -> ImageFileDataset:
        folder = Path(self.root) / "VLCS" / VLCS_DOMAINS[index]
        if not folder.is_dir():
            raise missing(folder, VLCS_LAYOUT, VLCS_SOURCE)
        files, labels, classes = list_image_folder(folder)
        if classes != VLCS_CLASSES:
            raise CorruptDataError(
                f"{folder} should hold the class folders {VLCS_CLASSES}, found {classes}"
            )
        y = torch.tensor(labels, dtype=torch.long)
        d = torch.full_like(y, index)
        r = self.resolution
        return ImageFileDataset(files, y, y * 4 + d, size=(r, r), attribute=d, domain=d.clone())

    def build_splits(self) -> Splits:
        held_out = VLCS_DOMAINS.index(self.test_domain)
        ins, outs = [], {}
        for index, name in enumerate(VLCS_DOMAINS):
            if index == held_out:
                continue
            ds = self.domain_dataset(index)
            out_idx, in_idx = seeded_split(
                len(ds), [self.holdout_fraction, 1 - self.holdout_fraction], self.seed * 10 + index
            )
            ins.append(ds.select(in_idx))
            outs[name] = ds.select(out_idx)
        return Splits(
            train=concat_images(ins),
            val={"val": concat_images(list(outs.values()))},
            test={self.test_domain: self.domain_dataset(held_out), **outs},
        )
