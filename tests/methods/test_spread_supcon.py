"""SpreadSupCon end to end on tiny data: both settings, bf16, noisy contrastive labels, the ViT,
DDP, configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import quick_trainer, run_cli, tiny_synthetic

from robustrep.backbones import BACKBONES, build_backbone
from robustrep.callbacks import CoarseToFine, LinearProbe
from robustrep.errors import ConfigError
from robustrep.evaluation import symmetric_noise
from robustrep.evaluation.labels import labelled_subset
from robustrep.methods import SpreadSupCon

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def make(dm, **kw) -> SpreadSupCon:
    kw.setdefault("backbone", "tiny")
    return SpreadSupCon(
        num_classes=dm.num_classes,
        num_groups=dm.num_groups,
        group_names=dm.group_names,
        image_shape=dm.image_shape,
        **kw,
    )


def two_view_data(**kw):
    kw.setdefault("augment", "contrastive")
    return tiny_synthetic(num_views=2, **kw)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_and_test_with_ce_head(tmp_path, precision):
    dm = two_view_data()
    model = make(dm, loss="spread", alpha=0.25)
    trainer = quick_trainer(tmp_path, max_epochs=1, precision=precision)
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train/contrastive_loss"])
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert {"test/acc", "test/worst_group_acc"} <= set(metrics)


def test_contrastive_only_logs_probe_metrics_not_logits(tmp_path):
    dm = two_view_data(num_attributes=1, strata_per_class=2)
    model = make(dm, loss="supcon", ce_head=False, projection_dim=8)
    trainer = quick_trainer(
        tmp_path, max_epochs=1, callbacks=[LinearProbe(every_n_epochs=1), CoarseToFine()]
    )
    trainer.fit(model, dm)
    assert "val/probe/acc" in trainer.callback_metrics
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert "test/acc" not in metrics and {"probe/acc", "c2f/acc"} <= set(metrics)
    with pytest.raises(ConfigError, match="no classifier"):
        model(torch.zeros(1, *dm.image_shape))


def test_training_lowers_the_contrastive_loss(tmp_path):
    torch.manual_seed(0)
    dm = two_view_data(augment="none", train_size=128)
    model = make(dm, loss="spread", ce_head=False)
    batch = next(iter(dm.train_dataloader()))
    from robustrep.losses.contrastive import contrastive_loss, stack_views

    def loss_now():
        with torch.no_grad():
            z = [model.embed(v) for v in batch["views"]]
            return contrastive_loss(*stack_views(z, batch["label"]), loss="spread").item()

    before = loss_now()
    quick_trainer(tmp_path, max_epochs=15, limit_val_batches=0).fit(model, dm)
    assert loss_now() < before - 0.1


def test_noisy_contrastive_labels_are_stored_in_checkpoints(tmp_path):
    dm = two_view_data()
    model = make(dm, contrastive_label_noise=0.25, noise_seed=3)
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, dm)
    labels = dm.splits.train.labels
    assert (model.noisy_labels != labels).sum().item() == 16  # exactly 25% of 64 flipped
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = SpreadSupCon.load_from_checkpoint(path)
    assert torch.equal(loaded.noisy_labels, model.noisy_labels)


def test_ce_head_trains_on_exactly_the_labelled_fraction(tmp_path):
    """The paper's noisy-label protocol: the CE head sees the clean labels of exactly
    round(0.2 n) training examples (seeded, stored in checkpoints), the contrastive loss all."""
    dm = two_view_data(train_size=50)
    model = make(dm, ce_labelled_fraction=0.2, labelled_seed=5, contrastive_label_noise=0.2)
    rows = []  # (training indices of the batch, CE weight of every view row)
    step = model.training_step

    def spy(batch, batch_idx):
        weight = model.ce_labelled[batch["index"]].repeat(len(batch["views"]))
        rows.append((batch["index"].clone(), weight))
        return step(batch, batch_idx)

    model.training_step = spy
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, dm)
    labelled = model.ce_labelled.nonzero().flatten()
    assert len(labelled) == round(0.2 * 50) == 10
    seen = torch.cat([i for i, _ in rows])
    assert sorted(seen.tolist()) == list(range(50))  # one epoch: every example once
    assert sum(w.sum().item() for _, w in rows) == 2 * 10  # two views of each labelled example
    # the labelled set is not the set of flipped contrastive labels (distinct random streams)
    flipped = (model.noisy_labels != dm.splits.train.labels).nonzero().flatten()
    assert set(labelled.tolist()) != set(flipped.tolist())
    again = make(dm, ce_labelled_fraction=0.2, labelled_seed=5)
    quick_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(again, dm)
    assert torch.equal(again.ce_labelled, model.ce_labelled)
    other = make(dm, ce_labelled_fraction=0.2, labelled_seed=6)
    quick_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0).fit(other, dm)
    assert other.ce_labelled.sum() == 10 and not torch.equal(other.ce_labelled, model.ce_labelled)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    assert torch.equal(SpreadSupCon.load_from_checkpoint(path).ce_labelled, model.ce_labelled)


def test_ce_loss_ignores_the_labels_of_unlabelled_examples():
    """With the label-free SimCLR loss, the total loss depends on the labels of the labelled
    examples only, and equals CE over those rows."""
    dm = two_view_data(train_size=16, augment="none")
    model = make(dm, loss="simclr", ce_labelled_fraction=0.25)
    model.log_dict = lambda *a, **k: None
    model.ce_labelled = torch.zeros(16, dtype=torch.bool)
    model.ce_labelled[[1, 6, 11, 12]] = True
    batch = next(iter(dm.train_dataloader()))
    labelled = model.ce_labelled[batch["index"]]
    assert labelled.sum() == 4  # batch_size 16: the whole training set
    with torch.no_grad():
        base = model.training_step(batch, 0)
        flipped = {**batch, "label": torch.where(labelled, batch["label"], 1 - batch["label"])}
        assert model.training_step(flipped, 0).item() == pytest.approx(base.item(), abs=1e-6)
        changed = {**batch, "label": torch.where(labelled, 1 - batch["label"], batch["label"])}
        assert abs(model.training_step(changed, 0).item() - base.item()) > 1e-3
        from robustrep.losses.contrastive import contrastive_loss, stack_views

        h = [model.embed(v) for v in batch["views"]]
        con = contrastive_loss(*stack_views(h, batch["label"]), loss="simclr", tau=0.5)
        rows = torch.cat(h)[labelled.repeat(2)]
        ce = torch.nn.functional.cross_entropy(model.head(rows), batch["label"][labelled].repeat(2))
        assert base.item() == pytest.approx((con + ce).item(), abs=1e-5)


def test_labelled_subset_is_exact_and_seeded():
    for n, fraction in [(50, 0.2), (2000, 0.01), (7, 1.0), (33, 0.5)]:
        chosen = labelled_subset(n, fraction, seed=1)
        assert len(chosen) == len(set(chosen.tolist())) == round(fraction * n)
    assert torch.equal(labelled_subset(100, 0.2, 3), labelled_subset(100, 0.2, 3))
    assert not torch.equal(labelled_subset(100, 0.2, 3), labelled_subset(100, 0.2, 4))
    with pytest.raises(ValueError):
        labelled_subset(10, 0.0)


def test_symmetric_noise_never_keeps_a_flipped_label():
    labels = torch.arange(1000) % 4
    noisy = symmetric_noise(labels, 0.3, 4, seed=1)
    assert (noisy != labels).sum() == 300 and noisy.max() < 4


def test_needs_two_views(tmp_path):
    dm = tiny_synthetic()
    with pytest.raises(ConfigError, match="num_views: 2"):
        quick_trainer(tmp_path).fit(make(dm), dm)


def test_bad_arguments():
    with pytest.raises(ConfigError):
        SpreadSupCon(backbone="tiny", loss="nope")
    with pytest.raises(ConfigError):
        SpreadSupCon(backbone="tiny", alpha=1.5)
    with pytest.raises(ConfigError, match="ce_labelled_fraction"):
        SpreadSupCon(backbone="tiny", ce_labelled_fraction=0.0)
    with pytest.raises(ConfigError, match="ce_head"):
        SpreadSupCon(backbone="tiny", ce_head=False, ce_labelled_fraction=0.2)


def test_vit_backbone_shapes_and_registry():
    net = build_backbone("vit", (3, 32, 32))
    assert net.out_dim == 256 and len(net.blocks) == 7 and net.pos.shape[1] == 65
    assert net.blocks[0].attn.num_heads == 8 and net.blocks[0].mlp[0].out_features == 512
    small = build_backbone("vit", (1, 28, 28), width=32, depth=2, heads=4, mlp_dim=64)
    assert small(torch.randn(3, 1, 28, 28)).shape == (3, 32)
    with pytest.raises(ConfigError, match="multiple"):
        build_backbone("vit", (1, 30, 30))


def test_vit_setting_fits(tmp_path):
    dm = two_view_data(size=8)
    model = make(
        dm,
        backbone="vit",
        backbone_kwargs={"width": 16, "depth": 1, "heads": 2, "mlp_dim": 32},
        loss="attract",
    )
    trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(model, dm)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


# ------------------------------------------------------------------ configs
OUR_CONFIGS = sorted(
    p for p in EXPERIMENTS.glob("*.yaml") if "robustrep.methods.SpreadSupCon" in p.read_text()
)
TINY_VIT = '{"width": 16, "depth": 1, "heads": 2, "mlp_dim": 16}'


def instantiate(spec):
    """Build ``class_path``/``init_args`` objects (recursively) like the CLI does, without the
    parser.
    """
    import importlib

    if isinstance(spec, dict) and "class_path" in spec:
        module, _, name = spec["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        args = {
            k: v
            for k, v in (spec.get("init_args") or {}).items()
            if k not in ("optimizer", "lr_scheduler")
        }
        return cls(**{k: instantiate(v) for k, v in args.items()})
    return spec


def test_every_config_instantiates():
    import yaml

    # 4 losses x (5 CIFAR variants, MNIST, MNIST-Coarse, Waterbirds, ISIC, synthetic strata)
    assert len(OUR_CONFIGS) >= 4 * 10
    for path in OUR_CONFIGS:
        cfg = yaml.safe_load(path.read_text())
        dm = instantiate(cfg["data"])
        assert dm.num_views == 2 and dm.augment == "contrastive", path.name
        model_spec = {
            **cfg["model"],
            "init_args": {
                **cfg["model"]["init_args"],
                "image_shape": dm.image_shape,
                "num_classes": dm.num_classes,
            },
        }
        assert model_spec["init_args"]["backbone"] in BACKBONES, path.name
        if model_spec["init_args"]["backbone"] == "vit":
            model_spec["init_args"]["backbone_kwargs"] = {
                "width": 16,
                "depth": 1,
                "heads": 2,
                "mlp_dim": 16,
            }
        elif model_spec["init_args"]["backbone"].startswith("resnet"):
            # keep the test fast: the ResNets have their own tests
            model_spec["init_args"].update(backbone="tiny", backbone_kwargs={})
        model = instantiate(model_spec)
        assert model.loss_name == path.stem.split("_", 1)[0]
        callbacks = [instantiate(c) for c in cfg["trainer"]["callbacks"]]
        assert any(isinstance(c, CoarseToFine) for c in callbacks) == (
            "coarse" in path.stem or "strata" in path.stem
        ), path.name


# The fast tier runs spread_synthetic_strata through the CLI in tests/analysis (the analyze
# fixture).
@pytest.mark.slow
@pytest.mark.parametrize("config", ["spread_synthetic_strata", "supcon_mnist_coarse"])
def test_config_runs_fast_dev_run(tmp_path, config):
    args = [
        "fit",
        "--config",
        str(EXPERIMENTS / f"{config}.yaml"),
        "--trainer.fast_dev_run",
        "1",
        "--trainer.logger",
        "false",
        "--output_root",
        str(tmp_path),
    ]
    if "mnist" in config:
        args += [
            "--data.init_args.digits_source",
            "sklearn",
            "--data.init_args.batch_size",
            "8",
            "--model.init_args.backbone_kwargs",
            TINY_VIT,
        ]
    else:
        args += [
            "--data.init_args.train_size",
            "64",
            "--data.init_args.test_size",
            "32",
            "--data.init_args.val_size",
            "32",
            "--data.init_args.batch_size",
            "16",
        ]
    args += ["--data.init_args.eval_batch_size", "512"]
    assert run_cli(args) == 0
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())["metrics"]
    assert {"probe/acc", "c2f/acc"} <= set(results)


@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path):
    dm = two_view_data(train_size=32, val_size=16, test_size=16, batch_size=8)
    model = make(
        dm, backbone="cnn", backbone_kwargs={"width": 4, "batch_norm": False}, loss="spread"
    )
    trainer = quick_trainer(
        tmp_path, accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1
    )
    trainer.fit(model, dm)
    assert trainer.state.finished
