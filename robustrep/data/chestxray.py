"""Pneumonia from chest X-rays of two hospitals (NIH ChestX-ray14 and CheXpert) with a controllable
hospital-label correlation (Chroma-VAE's Chest X-ray benchmark)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import torch

from robustrep.data.base import RobustDataModule, Splits
from robustrep.data.files import ImageFileDataset, concat_images, missing
from robustrep.data.presets import RecipeMixin
from robustrep.errors import ConfigError, CorruptDataError

XRAY_SOURCE = (
    "NIH ChestX-ray14: https://nihcc.app.box.com/v/ChestXray-NIHCC (Data_Entry_2017.csv + "
    "images_001..012); CheXpert: https://stanfordmlgroup.github.io/competitions/chexpert/ "
    "(CheXpert-v1.0 or CheXpert-v1.0-small)"
)
XRAY_LAYOUT = """<root>/
    <nih_dir>/Data_Entry_2017.csv  (or Data_Entry_2017_v2020.csv)   Image Index, Finding Labels, \
Patient ID, ...
    <nih_dir>/images/00000001_000.png ...     (or the extracted images_001/images/ ... \
images_012/images/)
    CheXpert-v1.0-small/train.csv             (or CheXpert-v1.0/) Path, Sex, Age, Frontal/Lateral, \
..., Pneumonia, ...
    CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg ..."""


def max_size(labels: torch.Tensor, majority: int, share: float) -> int:
    """The largest subset of ``labels`` in which the ``majority`` label has exactly ``share``."""
    n_maj = int((labels == majority).sum())
    n_min = labels.numel() - n_maj
    limits = [float(labels.numel())]
    if share > 0:
        limits.append(n_maj / share)
    if share < 1:
        limits.append(n_min / (1 - share))
    return int(min(limits))


def balanced_take(
    labels: torch.Tensor, majority: int, share: float, n: int, gen: torch.Generator
) -> torch.Tensor:
    """Indices of ``n`` random examples of which a share ``share`` (rounded) has the ``majority``
    label.
    """
    maj = (labels == majority).nonzero().squeeze(1)
    mino = (labels != majority).nonzero().squeeze(1)
    n_maj = min(maj.numel(), int(round(share * n)))
    n_min = min(mino.numel(), n - n_maj)
    pick = torch.cat(
        [
            maj[torch.randperm(maj.numel(), generator=gen)[:n_maj]],
            mino[torch.randperm(mino.numel(), generator=gen)[:n_min]],
        ]
    )
    return pick.sort().values


class ChestXray(RecipeMixin, RobustDataModule):
    """Pneumonia detection where the hospital is a shortcut: NIH mostly negative, CheXpert mostly
    positive.

    Input: 3 x ``resolution`` x ``resolution`` grey X-rays replicated to 3 channels (``channels: 1``
    keeps one), resized, decoded lazily. Label: pneumonia (NIH: ``Pneumonia`` among the
    ``Finding Labels``; CheXpert: the ``Pneumonia`` column, 1.0 positive, blank / 0.0 negative,
    -1.0 uncertain handled by ``uncertain``). Attribute and ``domain``: the hospital, 0 NIH,
    1 CheXpert. Groups: ``2 * label + hospital``.
    Construction: each hospital's patients are divided (seeded) into train / val / test by
    ``split_fractions``, so no patient crosses splits. In train and val, NIH examples are
    subsampled so that a fraction ``correlation`` (default 0.9) is negative and CheXpert examples
    so that the same fraction is positive, keeping as many examples as that allows (at most
    ``max_per_hospital``; with ``equal_hospitals`` both hospitals contribute the same number, as in
    Chroma-VAE's 20K training set with "roughly equal numbers" from each). The test set uses
    ``eval_correlation`` (0.5: label independent of the hospital). CheXpert uses frontal views only
    unless ``frontal_only: false``. Augmentation: ``augment: standard`` is the ``xray`` recipe of
    :mod:`robustrep.data.presets`. Citation: Wang et al., 2017 (ChestX-ray14); Irvin et al., 2019
    (CheXpert); Yang et al., 2022 (Chroma-VAE).

    Args:
        nih_dir: folder under root with NIH's ``Data_Entry_2017*.csv`` and images.
        chexpert_dir: folder under root with CheXpert's ``train.csv``; None =
            ``CheXpert-v1.0-small`` or ``CheXpert-v1.0``, whichever exists.
        correlation: share of negatives at NIH and of positives at CheXpert in train/val.
        eval_correlation: the same share in the test set.
        split_fractions: train / val / test shares of each hospital's patients.
        max_per_hospital: cap on the examples per hospital and split; None = all the correlation
            allows (Chroma-VAE trains on 20K images: 10,000 per hospital).
        equal_hospitals: take the same number of examples from both hospitals in every split.
        uncertain: CheXpert's -1 labels: ``exclude``, ``negative`` or ``positive``.
        frontal_only: drop CheXpert's lateral views.
        resolution: output side in pixels.
        channels: 3 (grey replicated, for ImageNet backbones) or 1.
        **kwargs: the shared datamodule arguments.
    """

    benchmark_name = "chest_xray"
    augment_recipe = "xray"

    def __init__(
        self,
        nih_dir: str = "nih",
        chexpert_dir: str | None = None,
        correlation: float = 0.9,
        eval_correlation: float = 0.5,
        split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
        max_per_hospital: int | None = None,
        equal_hospitals: bool = True,
        uncertain: str = "exclude",
        frontal_only: bool = True,
        resolution: int = 224,
        channels: int = 3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if uncertain not in ("exclude", "negative", "positive"):
            raise ConfigError(f"uncertain must be exclude, negative or positive; got {uncertain!r}")
        if not (0.0 <= correlation <= 1.0 and 0.0 <= eval_correlation <= 1.0):
            raise ConfigError("correlation and eval_correlation must be in [0, 1]")
        if len(split_fractions) != 3 or abs(sum(split_fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"split_fractions must be three shares summing to 1, got {split_fractions}"
            )
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels}")
        self.nih_dir = nih_dir
        self.chexpert_dir = chexpert_dir
        self.correlation = correlation
        self.eval_correlation = eval_correlation
        self.split_fractions = tuple(split_fractions)
        self.max_per_hospital = max_per_hospital
        self.equal_hospitals = equal_hospitals
        self.uncertain = uncertain
        self.frontal_only = frontal_only
        self.resolution = resolution
        self.channels = channels
        self.num_classes = 2
        self.num_attributes = 2
        self.class_names = ["no_pneumonia", "pneumonia"]
        self.attribute_names = ["nih", "chexpert"]
        self.image_shape = (channels, resolution, resolution)

    # ------------------------------------------------------------------ readers
    def read_nih(self) -> tuple[list[str], torch.Tensor, list[str]]:
        """(image paths, pneumonia labels, patient ids) of NIH ChestX-ray14."""
        folder = Path(self.root) / self.nih_dir
        csvs = [folder / "Data_Entry_2017.csv", folder / "Data_Entry_2017_v2020.csv"]
        path = next((c for c in csvs if c.exists()), None)
        if path is None:
            raise missing(csvs[0], XRAY_LAYOUT, XRAY_SOURCE)
        try:
            table = pd.read_csv(path, usecols=["Image Index", "Finding Labels", "Patient ID"])
        except (ValueError, pd.errors.ParserError) as err:
            raise CorruptDataError(
                f"cannot read {path} (needs Image Index, Finding Labels, Patient ID): {err}"
            ) from err
        labels = torch.tensor(
            table["Finding Labels"].str.split("|").apply(lambda f: "Pneumonia" in f).to_numpy(),
            dtype=torch.long,
        )
        index = self._nih_images(folder)
        paths = [index.get(name, str(folder / "images" / name)) for name in table["Image Index"]]
        return paths, labels, [f"nih{p}" for p in table["Patient ID"]]

    @staticmethod
    def _nih_images(folder: Path) -> dict[str, str]:
        """File name -> path for ``images/`` and the extracted ``images_0XX/images/`` folders."""
        index: dict[str, str] = {}
        dirs = [
            folder / "images",
            *sorted(folder.glob("images_*/images")),
            *sorted(folder.glob("images_*")),
        ]
        for d in dirs:
            if d.is_dir():
                with os.scandir(d) as it:
                    for entry in it:
                        if entry.name.endswith(".png"):
                            index.setdefault(entry.name, entry.path)
        return index

    def read_chexpert(self) -> tuple[list[str], torch.Tensor, list[str]]:
        """(image paths, pneumonia labels, patient ids) of CheXpert's train.csv."""
        root = Path(self.root)
        candidates = (
            [self.chexpert_dir] if self.chexpert_dir else ["CheXpert-v1.0-small", "CheXpert-v1.0"]
        )
        folder = next((root / c for c in candidates if (root / c / "train.csv").exists()), None)
        if folder is None:
            raise missing(root / candidates[0] / "train.csv", XRAY_LAYOUT, XRAY_SOURCE)
        path = folder / "train.csv"
        try:
            table = pd.read_csv(path)
            table = table[["Path", "Frontal/Lateral", "Pneumonia"]]
        except (ValueError, KeyError, pd.errors.ParserError) as err:
            raise CorruptDataError(
                f"cannot read {path} (needs Path, Frontal/Lateral, Pneumonia): {err}"
            ) from err
        if self.frontal_only:
            table = table[table["Frontal/Lateral"] == "Frontal"]
        value = table["Pneumonia"].fillna(0.0)
        if self.uncertain == "exclude":
            table, value = table[value != -1.0], value[value != -1.0]
        else:
            value = value.replace(-1.0, 1.0 if self.uncertain == "positive" else 0.0)
        labels = torch.tensor((value == 1.0).to_numpy(), dtype=torch.long)
        # `Path` starts with the dataset folder's own name; resolve the rest inside our folder.
        paths = [str(folder.joinpath(*Path(p).parts[1:])) for p in table["Path"]]
        patients = [m.group(0) if (m := re.search(r"patient\d+", p)) else p for p in table["Path"]]
        return paths, labels, patients

    # ------------------------------------------------------------------ construction
    def build_splits(self) -> Splits:
        r = self.resolution
        hospitals = []
        for hospital, (paths, labels, patients) in enumerate(
            [self.read_nih(), self.read_chexpert()]
        ):
            gen = torch.Generator().manual_seed(self.seed * 1000 + 600 + hospital)
            unique = sorted(set(patients))
            order = torch.randperm(len(unique), generator=gen).tolist()
            cut1 = int(round(self.split_fractions[0] * len(unique)))
            cut2 = cut1 + int(round(self.split_fractions[1] * len(unique)))
            split_of = {
                unique[i]: (0 if rank < cut1 else 1 if rank < cut2 else 2)
                for rank, i in enumerate(order)
            }
            split = torch.tensor([split_of[p] for p in patients], dtype=torch.long)
            hospitals.append((paths, labels, split, gen))
        parts: dict[int, list[ImageFileDataset]] = {0: [], 1: [], 2: []}
        for code in (0, 1, 2):
            share = self.eval_correlation if code == 2 else self.correlation
            sizes = [
                max_size(labels[split == code], h, share)
                for h, (_, labels, split, _) in enumerate(hospitals)
            ]
            if self.equal_hospitals:
                sizes = [min(sizes)] * 2
            if self.max_per_hospital is not None:
                sizes = [min(n, self.max_per_hospital) for n in sizes]
            for hospital, (paths, labels, split, gen) in enumerate(hospitals):
                members = (split == code).nonzero().squeeze(1)
                # majority label: negative at NIH (0), positive at CheXpert (1)
                chosen = members[
                    balanced_take(labels[members], hospital, share, sizes[hospital], gen)
                ]
                y = labels[chosen]
                h = torch.full_like(y, hospital)
                ds = ImageFileDataset(
                    [paths[i] for i in chosen.tolist()],
                    y,
                    y * 2 + h,
                    size=(r, r),
                    channels=self.channels,
                    attribute=h,
                    domain=h.clone(),
                )
                parts[code].append(ds)
        return Splits(
            train=concat_images(parts[0]),
            val={"val": concat_images(parts[1])},
            test={"test": concat_images(parts[2])},
        )
