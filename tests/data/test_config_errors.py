"""Bad datamodule arguments raise ConfigError (a ValueError), which the CLI reports without a
traceback.
"""

from __future__ import annotations

import pytest
import torch

import robustrep.data as d
from robustrep.data.colored_mnist import colour_digits
from robustrep.data.digits import load_digits
from robustrep.data.transforms import build_transform
from robustrep.errors import ConfigError

BAD_ARGUMENTS = {
    "batch_size": lambda: d.SyntheticSpurious(batch_size=0),
    "train_fraction": lambda: d.SyntheticSpurious(train_fraction=0.0),
    "num_views": lambda: d.SyntheticSpurious(num_views=0),
    "synthetic size": lambda: d.SyntheticSpurious(size=4),
    "digits_source": lambda: d.MNIST(digits_source="emnist"),
    "digits val_fraction": lambda: d.MNIST(val_fraction=1.0),
    "sklearn_box": lambda: d.MNIST(sklearn_box=40),
    "mnist group_by": lambda: d.MNISTCoarse(group_by="digit"),
    "cim alpha": lambda: d.ColoredMNISTCIM(alpha=150),
    "cim colour_region": lambda: d.ColoredMNISTCIM(colour_region="stripes"),
    "irm size": lambda: d.ColoredMNISTIRM(size=20),
    "irm flip": lambda: d.ColoredMNISTIRM(train_colour_flip=[0.1, 1.5]),
    "cifar val_fraction": lambda: d.CIFAR10(val_fraction=0.0),
    "cifar group_by": lambda: d.CIFAR100Coarse(group_by="digit"),
    "cifar counts": lambda: d.CIFAR100CoarseU(counts=[1, 2]),
    "stl fold": lambda: d.STL10(fold=12),
    "vlcs holdout": lambda: d.VLCS(holdout_fraction=2.0),
    "vipriors val_fraction": lambda: d.VIPriors(val_fraction=1.0),
    "in9 variants": lambda: d.BackgroundChallenge(eval_variants=[]),
    "xray channels": lambda: d.ChestXray(channels=2),
    "celeba patch": lambda: d.CelebA(patch_probability=2.0),
    "augment preset": lambda: build_transform("bogus", (3, 32, 32)),
    "load_digits source": lambda: load_digits("bogus"),
    "colour region": lambda: colour_digits(
        torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.ones(1, 3), "stripes"
    ),
}


@pytest.mark.parametrize("make", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_argument_raises_config_error(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
