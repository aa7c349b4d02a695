"""LinearProbe and CoarseToFine: solvers against closed cases, metric names, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import quick_trainer, tiny_synthetic
from torch import nn

from robustrep.callbacks import CoarseToFine, LinearProbe
from robustrep.errors import ConfigError
from robustrep.evaluation import extract_features, fit_linear_probe
from robustrep.methods import ERM


def separable(n=200, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(k, d, generator=g)
    y = torch.randint(k, (n,), generator=g)
    return centres[y] + 0.3 * torch.randn(n, d, generator=g), y


@pytest.mark.parametrize("large", [False, True])
def test_probe_solvers_separate_separable_data(large):
    x, y = separable()
    predict = fit_linear_probe(x[:150], y[:150], 3, sklearn_max_examples=0 if large else 10_000)
    assert (predict(x[150:]) == y[150:]).float().mean() == 1.0


def test_large_solver_works_under_lightning_inference_mode():
    # Lightning's test loop runs callbacks under inference mode, where the on-device solver
    # (used above sklearn_max_examples) once failed: its loss had no graph
    x, y = separable(n=200, seed=2)
    with torch.inference_mode():
        predict = fit_linear_probe(x[:150], y[:150], 3, sklearn_max_examples=0)
        assert (predict(x[150:]) == y[150:]).float().mean() == 1.0


def test_both_solvers_agree():
    x, y = separable(n=300, seed=1)
    x = x + 2.0 * torch.randn_like(x)  # overlapping classes: predictions depend on the solution
    a = fit_linear_probe(x, y, 3, C=0.5)(x)
    b = fit_linear_probe(x, y, 3, C=0.5, sklearn_max_examples=0)(x)
    assert (a == b).float().mean() > 0.97


def key(image: torch.Tensor) -> bytes:
    return image.mul(255).round().to(torch.uint8).numpy().tobytes()


class Oracle(ERM):
    """Embeds the fine label exactly (for the synthetic benchmark: the shape); the probes must read
    it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, backbone="tiny", **kwargs)
        self.lookup: dict[int, int] = {}

    def embed(self, images):
        # one-hot of the image's shape id, recovered from a table filled with the training images
        ids = torch.tensor([self.lookup[key(row)] for row in images])
        return nn.functional.one_hot(ids, 4).float()

    def forward(self, images):
        return torch.zeros(len(images), 2) + 0 * self.head.weight.sum()


def test_coarse_to_fine_reads_fine_labels(tmp_path):
    dm = tiny_synthetic(
        num_attributes=1, strata_per_class=2, noise=0.0, train_size=64, test_size=32
    )
    dm.setup("fit")
    model = Oracle(num_classes=2, image_shape=dm.image_shape)
    for ds in [dm.splits.train, *dm.splits.test.values()]:
        for i in range(len(ds)):
            item = ds[i]
            model.lookup[key(item["image"])] = item["fine_label"]
    trainer = quick_trainer(
        tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[CoarseToFine(), LinearProbe()]
    )
    trainer.fit(model, dm)
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert metrics["c2f/acc"] == 1.0 and metrics["probe/acc"] == 1.0
    assert {"probe/worst_group_acc", "probe/group_acc/shape0"} <= set(metrics)


def test_a_label_probe_and_a_colour_probe_share_a_run_with_separate_states(tmp_path):
    # issue 20's colour decodability: a second probe on the attribute, in the same trainer
    dm = tiny_synthetic(num_attributes=2, noise=0.0, train_size=64, test_size=32)
    dm.setup("fit")
    model = Oracle(  # embeds the colour
        num_classes=dm.num_classes, num_groups=dm.num_groups, image_shape=dm.image_shape
    )
    for ds in [dm.splits.train, *dm.splits.test.values()]:
        for i in range(len(ds)):
            model.lookup[key(ds[i]["image"])] = int(ds[i]["attribute"])
    colour = LinearProbe(target="attribute", prefix="colour_probe", group_metrics=False)
    probes = [LinearProbe(), colour]
    assert probes[0].state_key == "LinearProbe"  # the default key: older checkpoints restore
    assert len({p.state_key for p in probes}) == 2
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=probes)
    trainer.fit(model, dm)
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert metrics["colour_probe/acc"] == 1.0 and "colour_probe/worst_group_acc" not in metrics
    # the balanced test set: a probe reading only the colour cannot tell every shape apart
    assert metrics["probe/acc"] < 1.0 and metrics["probe/worst_group_acc"] < 0.5
    trainer.save_checkpoint(tmp_path / "two_probes.ckpt")
    states = torch.load(tmp_path / "two_probes.ckpt", weights_only=False)["callbacks"]
    assert states[colour.state_key]["last"]["colour_probe/acc"] == 1.0
    assert "colour_probe/acc" not in states["LinearProbe"]["last"]


def test_extract_features_restores_train_mode():
    dm = tiny_synthetic()
    model = ERM(backbone="tiny", image_shape=dm.image_shape)
    model.train()
    out = extract_features(model, dm.train_eval_dataloader())
    assert out["features"].shape == (64, 16) and model.training and out["label"].shape == (64,)


def test_coarse_to_fine_needs_fine_labels(tmp_path):
    # strata_per_class = 1 still has fine_label; use a model without embed instead
    dm = tiny_synthetic()
    with pytest.raises(ConfigError, match="embed"):
        CoarseToFine().setup(type("T", (), {"datamodule": dm})(), nn.Linear(1, 1), "fit")
    dm2 = tiny_synthetic()
    dm2.setup("fit")
    dm2.splits.train.metadata.pop("fine_label")
    with pytest.raises(ConfigError, match="fine_label"):
        CoarseToFine().setup(
            type("T", (), {"datamodule": dm2})(),
            ERM(backbone="tiny", image_shape=dm2.image_shape),
            "fit",
        )
