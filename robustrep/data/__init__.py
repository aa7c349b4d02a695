"""Benchmarks as LightningDataModules (see :mod:`robustrep.data.base` for the contract)."""

from robustrep.data.base import RobustDataModule, Splits, TensorImageDataset
from robustrep.data.synthetic import SyntheticSpurious

#: Every benchmark: name -> (class, expected files on disk, groups). Shown by `robustrep data list`.
BENCHMARKS: dict[str, tuple[type[RobustDataModule], str, str]] = {
    "synthetic": (SyntheticSpurious, "generated in memory (no files)", "label x background colour; strata = shapes"),
}

__all__ = ["BENCHMARKS", "RobustDataModule", "Splits", "SyntheticSpurious", "TensorImageDataset"]
