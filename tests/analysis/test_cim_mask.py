"""``robustrep analyze cim-mask``: mask statistics on the foreground / background of Colored
MNIST.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from robustrep.analysis.cim_mask import mask_statistics
from robustrep.analysis.commands import analyze_command
from robustrep.data import ColoredMNISTCIM
from robustrep.data.colored_mnist import CIM_COLOURS, colour_digits
from robustrep.errors import ConfigError
from robustrep.methods import CIM


@pytest.mark.parametrize("region", ["background", "digit", "both"])
def test_foreground_reads_back_the_ink(region):
    gen = torch.Generator().manual_seed(0)
    ink = torch.randint(0, 256, (6, 1, 10, 10), dtype=torch.uint8, generator=gen)
    rgb = colour_digits(ink, CIM_COLOURS[torch.tensor([0, 1, 0, 1, 0, 1])], region).float() / 255
    dm = ColoredMNISTCIM(digits_source="sklearn", colour_region=region)
    clear = (ink.float() / 255 - 0.5).abs() > 0.02  # away from the threshold (uint8 rounding)
    assert torch.equal(dm.foreground(rgb)[clear], (ink.float() / 255 > 0.5)[clear])


def test_mask_statistics_of_a_known_mask():
    dm = ColoredMNISTCIM(digits_source="sklearn", batch_size=128)
    dm.setup("fit")
    model = CIM(backbone="tiny", num_classes=2, image_shape=(3, 28, 28))
    uniform = mask_statistics(model, dm)  # zero-initialised output layer: sigmoid(0) everywhere
    assert uniform.images == len(dm.splits.test["test"])
    for value in (
        uniform.mean,
        uniform.foreground,
        uniform.background,
        *uniform.per_class.values(),
    ):
        assert value == pytest.approx(0.5)
    model.mask = lambda x: dm.foreground(x).float()  # the ideal CIM mask: the strokes only
    ideal = mask_statistics(model, dm, "test_balanced")
    assert ideal.foreground == 1.0 and ideal.background == 0.0 and 0 < ideal.mean < 0.5
    assert "foreground" in ideal.table() and ideal.eval_set == "test_balanced"
    with pytest.raises(ConfigError, match="no test set"):
        mask_statistics(model, dm, "nope")


def test_mask_statistics_use_the_shape_masks_a_benchmark_carries():
    from robustrep.data import SyntheticSpurious

    dm = SyntheticSpurious(size=16, test_size=64, background_sets=True, batch_size=32)
    dm.setup("fit")
    model = CIM(backbone="tiny", num_classes=2, image_shape=(3, 16, 16))
    shapes = dm.splits.test["mixed_rand"].metadata["foreground"].float()
    shown = iter(shapes.split(32))
    model.mask = lambda x: next(shown).unsqueeze(1)  # the ideal mask: the shape, in loader order
    ideal = mask_statistics(model, dm, "mixed_rand")
    assert ideal.foreground == 1.0 and ideal.background == 0.0
    assert ideal.mean == pytest.approx(float(shapes.mean()))


def test_cim_mask_command_on_a_trained_run(tmp_path):
    args = [
        "fit",
        "--config",
        "experiments/cim_colored_mnist.yaml",
        "--data.init_args.digits_source",
        "sklearn",
        "--output_root",
        str(tmp_path),
    ]
    args += [
        "--model.init_args.backbone",
        "tiny",
        "--model.init_args.backbone_kwargs",
        "{}",
        "--trainer.max_epochs",
        "1",
    ]
    args += [
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.limit_test_batches",
        "1",
        "--trainer.logger",
        "false",
    ]
    assert run_cli(args) == 0
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "mask.json"
    assert analyze_command(["cim-mask", "--ckpt", str(ckpt), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (
        result["eval_set"] == "test"
        and 0 < result["foreground"] < 1
        and 0 < result["background"] < 1
    )
    with pytest.raises(ConfigError, match="config.yaml"):
        analyze_command(["cim-mask", "--ckpt", str(tmp_path / "missing.ckpt")])
