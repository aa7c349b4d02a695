"""ERM, JTT and Group DRO: behaviour on hand-made batches and toy tasks."""

import lightning.pytorch as pl
import pytest
import torch
from conftest import quick_trainer, tiny_synthetic

from robustrep.methods import ERM, JTT, GroupDRO


def model_for(cls, dm, **kwargs):
    return cls(
        backbone="mlp",
        backbone_kwargs={"hidden": [32]},
        num_groups=dm.num_groups,
        image_shape=dm.image_shape,
        group_names=dm.group_names,
        **kwargs,
    )


def test_erm_learns_the_core_feature_without_a_shortcut(tmp_path):
    pl.seed_everything(0)
    dm = tiny_synthetic(
        num_attributes=1, size=12, train_size=400, test_size=200, batch_size=16, noise=0.05
    )
    model = model_for(ERM, dm)
    trainer = quick_trainer(tmp_path, max_epochs=8)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    assert trainer.callback_metrics["test/acc"] > 0.9


def test_erm_runs_in_bf16_mixed(tmp_path):
    dm = tiny_synthetic()
    model = model_for(ERM, dm)
    trainer = quick_trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.test(model, datamodule=dm)
    assert 0.0 <= float(trainer.callback_metrics["test/worst_group_acc"]) <= 1.0


def test_group_dro_weights_follow_the_worst_group():
    dm = tiny_synthetic()
    model = model_for(GroupDRO, dm, step_size=0.5)
    images = torch.rand(8, *dm.image_shape)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with torch.no_grad():  # make group 3 the hardest: its examples get a wrong-class logit boost
        model.head.bias.zero_()
    logits = model(images)
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    group_means = torch.stack([losses[groups == g].mean() for g in range(4)])
    q = torch.full((4,), 0.25) * torch.exp(0.5 * group_means)
    q = q / q.sum()
    loss = model.training_step({"image": images, "label": labels, "group": groups}, 0)
    assert torch.allclose(model.group_weights, q, atol=1e-6)
    assert loss.item() == pytest.approx(float((q * group_means).sum()), rel=1e-5)
    assert int(model.group_weights.argmax()) == int(group_means.argmax())


def test_jtt_error_set_restart_and_checkpoint(tmp_path):
    pl.seed_everything(0)
    dm = tiny_synthetic(correlation=0.9, train_size=128)
    model = model_for(JTT, dm, identification_epochs=1, upweight=5.0)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    captured = {}

    class Capture(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if pl_module.current_epoch == 0 and "wrong" not in captured:
                # an independent count of the phase-1 model's training errors, before JTT acts
                with torch.no_grad():
                    ds = dm.train_eval_dataset()
                    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
                    y = torch.tensor([ds[i]["label"] for i in range(len(ds))])
                    captured["wrong"] = pl_module(x).argmax(1) != y

    trainer = quick_trainer(
        tmp_path, max_epochs=1, callbacks=[Capture()], enable_checkpointing=True
    )
    trainer.fit(model, datamodule=dm)
    assert model.error_set is not None and torch.equal(model.error_set, captured["wrong"])
    for key, value in model.state_dict().items():  # retrain: back to the initial weights
        assert torch.equal(value, initial[key]), key
    path = tmp_path / "jtt.ckpt"
    trainer.save_checkpoint(path)
    restored = JTT.load_from_checkpoint(path)
    assert torch.equal(restored.error_set, model.error_set)
    # phase 2: error-set examples weigh `upweight` times more in the loss
    batch = next(iter(dm.train_dataloader()))
    losses = torch.nn.functional.cross_entropy(
        model(batch["image"]), batch["label"], reduction="none"
    )
    w = torch.where(model.error_set[batch["index"]], 5.0, 1.0)
    assert model.weighted_loss(
        model(batch["image"]), batch["label"], batch["index"]
    ).item() == pytest.approx(float((w * losses).sum() / w.sum()), rel=1e-5)
