"""``robustrep analyze chroma-latents``: kNN read-outs of z1 / z2 of a Chroma-VAE."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from robustrep.analysis.chroma_latents import latent_readout
from robustrep.analysis.commands import analyze_command
from robustrep.data import ColoredMNISTIRM
from robustrep.errors import ConfigError


class PlantedLatents(nn.Module):
    """A stand-in encoder with a known split: z1 = the colour (which channel has the ink),
    z2 = the grey 8x8 shape (channels summed, pooled) plus two dead dimensions."""

    dim_z1 = 1

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    @property
    def device(self):
        return self.anchor.device

    def encode(self, images):
        colour = (images[:, 1].flatten(1).sum(1) > images[:, 0].flatten(1).sum(1)).float()[:, None]
        shape = nn.functional.adaptive_avg_pool2d(images.sum(1, keepdim=True), 8).flatten(1)
        mu = torch.cat([colour, shape, torch.zeros(len(images), 2)], 1)
        return mu, torch.zeros_like(mu)


def z2_and_digits(dataset):
    """The planted z2 and the digits of a dataset, as numpy arrays (for the scikit-learn
    reference).
    """
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))]).float()
    digits = torch.tensor([int(dataset[i]["fine_label"]) for i in range(len(dataset))])
    return PlantedLatents().encode(images)[0][:, PlantedLatents.dim_z1 :].numpy(), digits.numpy()


def test_readout_finds_the_colour_in_z1_and_the_shape_in_z2():
    dm = ColoredMNISTIRM(digits_source="sklearn")
    dm.setup("fit")
    result = latent_readout(PlantedLatents(), dm, pixel_baseline=True)
    assert result.k == round(len(dm.splits.train) ** 0.5)
    assert result.dims == {"z1": 1, "z2": 66, "z": 67}
    # the two zero dimensions are dead
    assert result.active["z1"] == 1 and result.active["z2"] <= 64
    for name in ("test", "test_iid"):
        z1, z2 = result.accuracy[name]["z1"], result.accuracy[name]["z2"]
        # colour only: digits at chance-ish
        assert z1["attribute"] == 1.0 and z1["fine_label"] < 0.35
        assert z2["fine_label"] > 0.8  # the shape
    # colour alone predicts the OOD label badly, shape does not
    assert result.accuracy["test"]["z1"]["label"] < 0.3 < result.accuracy["test"]["z2"]["label"]
    grey = result.accuracy["test"]["grey pixels"]
    # colour-blind
    assert (
        grey["fine_label"] > 0.8
        and abs(grey["label"] - result.accuracy["test_iid"]["grey pixels"]["label"]) < 0.08
    )
    # the read-out is scikit-learn's kNN on the same features
    train_z2, train_digits = z2_and_digits(dm.splits.train)
    test_z2, test_digits = z2_and_digits(dm.splits.test["test"])
    reference = (
        KNeighborsClassifier(result.k).fit(train_z2, train_digits).score(test_z2, test_digits)
    )
    assert result.accuracy["test"]["z2"]["fine_label"] == pytest.approx(reference)
    assert "from z1" in result.table() and "active units: z1 1/1" in result.table()


def test_chroma_latents_command_on_a_trained_run(tmp_path):
    args = [
        "fit",
        "--config",
        "experiments/chroma_colored_mnist.yaml",
        "--data.init_args.digits_source",
        "sklearn",
        "--output_root",
        str(tmp_path),
    ]
    args += [
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
    ]
    args += [
        "--trainer.limit_test_batches",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
    ]
    assert run_cli(args) == 0
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "latents.json"
    assert analyze_command(["chroma-latents", "--ckpt", str(ckpt), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["accuracy"]) == {"test", "test_iid"}
    assert set(result["accuracy"]["test"]["z2"]) == {"label", "fine_label", "attribute"}
    assert all(
        0.0 <= v <= 1.0 for part in result["accuracy"]["test"].values() for v in part.values()
    )


def test_chroma_latents_rejects_other_methods():
    with pytest.raises(ConfigError, match="not a Chroma-VAE"):
        latent_readout(nn.Linear(2, 2), ColoredMNISTIRM(digits_source="sklearn"))
