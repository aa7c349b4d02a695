"""BackgroundGap: per-set accuracies and mixed_same - mixed_rand, read from GroupMetrics."""

from __future__ import annotations

import pytest
import torch
from conftest import quick_trainer

from robustrep.callbacks.background_gap import BackgroundGap, background_gap
from robustrep.data import SyntheticSpurious
from robustrep.data.base import Splits
from robustrep.methods import ERM


class ThreeVariants(SyntheticSpurious):
    """Synthetic stand-in for ImageNet-9's test variants: the same shapes with aligned, and with
    label-independent, background colours."""

    def build_splits(self) -> Splits:
        train = self.make_split("train")
        test = self.make_split("test")
        self.eval_correlation = 1.0
        same = self.make_split("val")
        self.eval_correlation = "balanced"
        return Splits(
            train=train,
            val={"val": self.make_split("val")},
            test={"original": test, "mixed_same": same, "mixed_rand": test},
        )


def test_background_gap_function():
    assert background_gap({"mixed_same": 0.9, "mixed_rand": 0.75}) == pytest.approx(0.15)
    assert background_gap({"mixed_same": 0.9}) is None
    assert background_gap({"a": 0.5, "b": 0.25}, same_set="a", rand_set="b") == 0.25


def _accuracy(model, dataset) -> float:
    model.eval()
    with torch.no_grad():
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        labels = torch.tensor([dataset[i]["label"] for i in range(len(dataset))])
        return (model(images).argmax(1) == labels).float().mean().item()


def test_logs_every_set_and_the_gap_matching_a_direct_evaluation(tmp_path):
    torch.manual_seed(0)
    dm = ThreeVariants(
        size=8,
        train_size=256,
        val_size=64,
        test_size=96,
        batch_size=32,
        correlation=0.98,
        noise=0.3,
    )
    model = ERM(backbone="tiny", num_classes=2, num_groups=4, image_shape=(3, 8, 8))
    callback = BackgroundGap()
    trainer = quick_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    trainer.fit(model, datamodule=dm)
    results = trainer.test(model, datamodule=dm, verbose=False)
    merged = {k: v for r in results for k, v in r.items()}
    direct = {name: _accuracy(model, ds) for name, ds in dm.splits.test.items()}
    for name in ("original", "mixed_same", "mixed_rand"):
        assert merged[f"test/{name}/acc"] == pytest.approx(direct[name], abs=1e-6)
    # GroupMetrics' primary-set name
    assert merged["test/acc"] == pytest.approx(direct["original"], abs=1e-6)
    assert merged["test/bg_gap"] == pytest.approx(
        direct["mixed_same"] - direct["mixed_rand"], abs=1e-6
    )
    # the shortcut-reading model loses accuracy on random backgrounds
    assert merged["test/bg_gap"] > 0
    assert "val/bg_gap" not in trainer.callback_metrics  # validation has no mixed sets here
    assert callback.last["test/bg_gap"] == pytest.approx(merged["test/bg_gap"])


def test_needs_group_metrics(tmp_path):
    import lightning.pytorch as pl

    class Plain(pl.LightningModule):
        pass

    # no GroupMetrics
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="GroupMetrics"):
        BackgroundGap().setup(trainer, Plain(), "fit")
