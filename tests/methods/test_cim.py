"""CIM: the TN's mask, triplet sampling, the ERM/VIB/SCL-E2E baselines from one module, precisions,
DDP.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import quick_trainer, run_cli, tiny_synthetic

from robustrep.backbones.morph import TransformationNetwork
from robustrep.data.datasets import TensorImageDataset
from robustrep.data.triplets import TripletSource
from robustrep.errors import ConfigError
from robustrep.methods import CIM, ERM


def _cim(size: int = 8, **kwargs) -> CIM:
    kwargs.setdefault("backbone", "tiny")
    return CIM(num_classes=2, num_groups=4, image_shape=(3, size, size), **kwargs)


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_mask_lies_in_open_unit_interval_and_keeps_the_image_size(size):
    torch.manual_seed(0)
    tn = TransformationNetwork(3, size)
    with torch.no_grad():  # perturb the zero-initialised output layer so the mask is not constant
        tn.out.weight.normal_(0, 1.0)
    images = torch.rand(4, 3, size, size)
    mask = tn(images)
    assert mask.shape == (4, 1, size, size)
    assert mask.min() > 0 and mask.max() < 1 and mask.std() > 0
    model = _cim(size)
    # sigmoid(0) at init
    assert torch.allclose(model.mask(images), torch.full((4, 1, size, size), 0.5))
    torch.testing.assert_close(model.morph(images), 0.5 * images)


def _sequential_logits(tn: TransformationNetwork, x: torch.Tensor) -> torch.Tensor:
    # the TN as its docstring describes it: every decoder level upsampled (and the skip added)
    # before the 1x1 output conv
    h = tn.stem(x)
    features = [h]
    for block in tn.down:
        h = block(h)
        features.append(h)
    for block, feat in zip(tn.up, reversed(features[:-1])):
        h = torch.nn.functional.interpolate(
            block(h), size=feat.shape[-2:], mode="bilinear", align_corners=False
        )
        h = h + feat if tn.skip else h
    return tn.out(h)


@pytest.mark.parametrize("size, skip", [(8, True), (13, True), (28, True), (28, False), (64, True)])
def test_tn_logits_and_gradients_equal_the_sequential_formulation(size, skip):
    # the output conv runs before the last upsampling (both linear): the same function
    torch.manual_seed(1)
    tn = TransformationNetwork(3, size, skip=skip, mask_bias_init=0.3).double()
    with torch.no_grad():
        tn.out.weight.normal_(0, 1.0)
    x = torch.rand(3, 3, size, size, dtype=torch.float64)
    upstream = torch.randn(3, 1, size, size, dtype=torch.float64)
    grads = []
    for fn in (tn.logits, lambda images: _sequential_logits(tn, images)):
        tn.zero_grad()
        logits = fn(x)
        (logits * upstream).sum().backward()
        grads.append((logits.detach(), *[p.grad.clone() for p in tn.parameters()]))
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-12)


def _labelled_dataset(n: int = 60, num_classes: int = 3) -> TensorImageDataset:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % num_classes
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=gen)
    return TensorImageDataset(images, labels)


def test_triplet_sampling_respects_labels_excludes_the_anchor_and_is_seeded():
    ds = _labelled_dataset()
    source = TripletSource(ds)
    labels = ds.labels.repeat(20)
    keys = torch.arange(60).repeat(20)
    source.reseed(3)
    pos, neg = source.sample(labels, keys)
    assert (ds.labels[pos] == labels).all() and (pos != keys).all()
    assert (ds.labels[neg] != labels).all()
    # every same-class example is reachable as a positive, every other-class one as a negative
    # 1200 draws cover 20 candidates
    assert set(pos[labels == 0].tolist()) == set(range(0, 60, 3)) - set()
    assert set(neg[labels == 0].tolist()) == {i for i in range(60) if i % 3 != 0}
    source.reseed(3)
    pos2, neg2 = source.sample(labels, keys)
    assert torch.equal(pos, pos2) and torch.equal(neg, neg2)
    source.reseed(4)  # another rank / epoch draws differently
    assert not torch.equal(source.sample(labels, keys)[0], pos)
    # images are the dataset's own items
    batch = source.images(pos[:5], "cpu")
    torch.testing.assert_close(batch, torch.stack([ds[int(i)]["image"] for i in pos[:5]]))


def test_the_positives_of_a_batch_are_distinct_and_so_are_its_negatives():
    """The paper draws "n distinct positive examples and n distinct negative examples" per batch
    of n anchors; with replacement, 128 draws from 200 candidates repeat almost surely."""
    ds = _labelled_dataset(n=600, num_classes=3)
    source = TripletSource(ds)
    gen = torch.Generator().manual_seed(1)
    for seed in range(20):
        keys = torch.randperm(600, generator=gen)[:128]
        labels = ds.labels[keys]
        source.reseed(seed)
        pos, neg = source.sample(labels, keys)
        assert pos.unique().numel() == 128 and neg.unique().numel() == 128, seed
        assert (ds.labels[pos] == labels).all() and (pos != keys).all()
        assert (ds.labels[neg] != labels).all()


def test_distinct_draws_where_just_possible_and_repeats_only_where_not():
    # class 0 has 6 examples and 5 anchors (5 distinct positives, none the anchor itself, exist);
    # class 1 has 5 examples and all 5 are anchors (only 4 candidates each: repeats allowed)
    labels = torch.tensor([0] * 6 + [1] * 5)
    images = torch.zeros(11, 1, 8, 8, dtype=torch.uint8)
    source = TripletSource(TensorImageDataset(images, labels))
    keys = torch.tensor([0, 1, 2, 3, 4, 6, 7, 8, 9, 10])
    for seed in range(30):
        source.reseed(seed)
        pos, neg = source.sample(labels[keys], keys)
        assert (pos != keys).all() and (labels[pos] == labels[keys]).all()
        assert pos[:5].unique().numel() == 5, seed
        assert neg[:5].unique().numel() == 5 and (labels[neg[:5]] == 1).all()


def test_positives_of_another_attribute_for_the_mechanism_diagnostic():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(400) % 2
    attribute = (torch.rand(400, generator=gen) < 0.2).long() ^ labels  # 80% aligned
    images = torch.zeros(400, 1, 8, 8, dtype=torch.uint8)
    ds = TensorImageDataset(images, labels, labels * 2 + attribute, attribute=attribute)
    source = TripletSource(ds, positives="other_attribute")
    keys = torch.randperm(400, generator=gen)[:64]
    for seed in range(10):
        source.reseed(seed)
        pos, neg = source.sample(labels[keys], keys)
        assert (labels[pos] == labels[keys]).all() and (attribute[pos] != attribute[keys]).all()
        assert (labels[neg] != labels[keys]).all() and neg.unique().numel() == 64
        assert pos.unique().numel() == 64
    with pytest.raises(ConfigError, match="attribute labels"):
        TripletSource(TensorImageDataset(images, labels), positives="other_attribute")
    model = _cim(8, positives="other_attribute")
    model.set_triplet_source(ds)
    assert model.triplets.positives == "other_attribute"


def test_repeated_marks_every_later_copy():
    from robustrep.data.triplets import repeated

    values = torch.tensor([5, 3, 5, 1, 3, 5, 7])
    naive = [v in values[:i].tolist() for i, v in enumerate(values.tolist())]
    assert repeated(values).tolist() == naive


def test_triplet_sampling_through_a_subset_maps_index_keys():
    ds = _labelled_dataset()
    # items report the inner index as `index`
    sub = torch.utils.data.Subset(ds, list(range(1, 60, 2)))
    source = TripletSource(sub)
    items = [sub[i] for i in range(len(sub))]
    labels = torch.tensor([it["label"] for it in items]).repeat(10)
    keys = torch.tensor([it["index"] for it in items]).repeat(10)
    pos, neg = source.sample(labels, keys)
    pos_items = [sub[int(p)] for p in pos]
    assert all(it["label"] == int(y) for it, y in zip(pos_items, labels))
    assert all(it["index"] != int(k) for it, k in zip(pos_items, keys))
    assert all(sub[int(n)]["label"] != int(y) for n, y in zip(neg, labels))
    torch.testing.assert_close(
        source.images(pos[:4], "cpu"), torch.stack([it["image"] for it in pos_items[:4]])
    )


def test_lambda_zero_without_tn_equals_erm_on_the_same_seed(tmp_path):
    def train(cls, **kw):
        pl.seed_everything(7)
        model = cls(
            backbone="cnn",
            backbone_kwargs={"width": 4, "blocks": 2},
            num_classes=2,
            num_groups=4,
            image_shape=(3, 8, 8),
            **kw,
        )
        quick_trainer(tmp_path, max_epochs=2).fit(model, datamodule=tiny_synthetic())
        return model

    erm = train(ERM)
    cim = train(CIM, lam=0.0, transform_network=False)
    erm_state, cim_state = erm.state_dict(), cim.state_dict()
    assert set(erm_state) == set(cim_state)
    for key, value in erm_state.items():
        torch.testing.assert_close(cim_state[key], value, rtol=0, atol=0, msg=key)
    # it did train
    assert not torch.equal(erm_state["head.weight"], train(ERM).state_dict()["head.weight"] * 0)


def test_ce_gradient_reaches_the_tn_and_the_triplet_only_trains_the_tn():
    torch.manual_seed(0)
    model = _cim(8, lam=0.0)
    images, labels = torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 0, 1, 0, 1])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    assert model.tn.out.weight.grad.abs().sum() > 0  # "only m": CE alone trains the mask
    model.zero_grad()
    from robustrep.losses.triplet import msssim_triplet

    msssim_triplet(model.morph(images), torch.rand(6, 3, 8, 8), torch.rand(6, 3, 8, 8)).backward()
    assert model.tn.out.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None or model.head.weight.grad.abs().sum() == 0


VARIANTS = {
    "mask": dict(),
    "gram": dict(variant="gram"),
    "feature": dict(variant="feature"),
    "mask+vib": dict(vib_beta=0.01, vib_dim=8),
    "vib": dict(transform_network=False, lam=0.0, vib_beta=0.01, vib_dim=8),
    "only_m": dict(lam=0.0),
    "scl": dict(transform_network=False, variant="scl"),
}


def test_variants_run_and_differ(tmp_path):
    finals = {}
    for name, kw in VARIANTS.items():
        pl.seed_everything(0)
        model = _cim(8, **kw)
        trainer = quick_trainer(tmp_path, max_epochs=1, limit_train_batches=3)
        trainer.fit(model, datamodule=tiny_synthetic())
        metrics = trainer.callback_metrics
        assert torch.isfinite(metrics["train/loss"]), name
        if kw.get("lam", 1.0) > 0:
            assert "train/triplet" in metrics, name
        if kw.get("vib_beta"):
            assert metrics["train/kl"] > 0
        finals[name] = float(metrics["train/triplet"]) if "train/triplet" in metrics else None
        if name == "mask":
            mask_state = model.tn.state_dict()
        if name in ("gram", "feature"):
            differs = any(
                not torch.equal(v, mask_state[k]) for k, v in model.tn.state_dict().items()
            )
            assert differs, f"{name} trained the TN exactly like mask"
    assert len({finals["mask"], finals["gram"], finals["feature"]}) == 3


def test_vib_uses_mu_at_evaluation_and_samples_in_training():
    torch.manual_seed(0)
    model = _cim(8, transform_network=False, lam=0.0, vib_beta=0.1, vib_dim=5)
    images = torch.rand(4, 3, 8, 8)
    assert model.embed(images).shape == (4, 5)
    model.eval()
    torch.testing.assert_close(model(images), model(images))
    assert model.head.in_features == 5


def test_bad_configurations_are_config_errors():
    with pytest.raises(ConfigError, match="variant"):
        _cim(variant="pixels")
    with pytest.raises(ConfigError, match="transform_network"):
        _cim(transform_network=False, variant="mask", lam=1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        _cim(lam=-1.0)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_and_test_end_to_end(tmp_path, precision):
    pl.seed_everything(0)
    model = _cim(
        8, backbone="cnn", backbone_kwargs={"width": 4, "blocks": 2}, vib_beta=0.01, vib_dim=8
    )
    trainer = quick_trainer(tmp_path, max_epochs=1, precision=precision)
    dm = tiny_synthetic()
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/triplet"])
    results = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= results["test/acc"] <= 1.0 and "test/worst_group_acc" in results


def test_cim_learns_the_toy_problem(tmp_path):
    pl.seed_everything(0)
    dm = tiny_synthetic(
        train_size=512, val_size=64, test_size=256, batch_size=32, correlation=0.5, noise=0.05
    )
    model = CIM(
        backbone="cnn",
        backbone_kwargs={"width": 8, "blocks": 2},
        num_classes=2,
        num_groups=4,
        image_shape=(3, 8, 8),
        lam=0.5,
    )
    trainer = quick_trainer(tmp_path, max_epochs=4)
    trainer.fit(model, datamodule=dm)
    assert trainer.test(model, datamodule=dm, verbose=False)[0]["test/acc"] > 0.85


def test_the_triplet_alone_teaches_the_tn_to_morph_toward_positives():
    """Optimising only the TN on the MS-SSIM triplet lowers it, also on a fresh draw of x+/x-."""
    from robustrep.losses.triplet import msssim_triplet

    pl.seed_everything(0)
    dm = tiny_synthetic(train_size=512, correlation=0.5, noise=0.05)
    dm.setup("fit")
    train = dm.train_eval_dataset()
    model = CIM(backbone="tiny", num_classes=2, num_groups=4, image_shape=(3, 8, 8))
    model.set_triplet_source(train)
    anchors = [train[i] for i in range(256)]
    images, labels = (
        torch.stack([a["image"] for a in anchors]),
        torch.tensor([int(a["label"]) for a in anchors]),
    )

    def draw(seed: int):
        model.triplets.reseed(seed)
        return model.draw_triplets(labels, torch.arange(256))

    positive, negative = draw(123)
    with torch.no_grad():
        before = float(msssim_triplet(model.morph(images), *draw(7)))
    optimizer = torch.optim.Adam(model.tn.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        msssim_triplet(model.morph(images), positive, negative).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(msssim_triplet(model.morph(images), *draw(7)))
    assert after < before - 0.05 and after < 0


def _triplet_trained_mask(pool: str, seed: int = 0, steps: int = 60, n: int = 96):
    """Train only CIM's TN on the MS-SSIM triplet over one of the synthetic background sets (6
    colours, shape masks known); returns the mean mask on the shape and on the background and the
    triplet loss (a fresh draw) of the learned mask, the identity and the shape-only mask."""
    from robustrep.data import SyntheticSpurious
    from robustrep.losses.triplet import msssim_triplet

    torch.manual_seed(seed)
    dm = SyntheticSpurious(
        size=16, num_attributes=6, noise=0.05, test_size=2 * n, background_sets=True, seed=seed
    )
    pool_set = dm.splits.test[pool]
    source = TripletSource(pool_set)
    x = pool_set.images[:n].float() / 255
    y, shape = pool_set.labels[:n], pool_set.metadata["foreground"][:n].bool().unsqueeze(1)
    model = CIM(backbone="tiny", num_classes=2, image_shape=(3, 16, 16))
    optimizer = torch.optim.Adam(model.tn.parameters(), lr=1e-2)

    def triplet(images: torch.Tensor, draw: int) -> torch.Tensor:
        source.reseed(draw)
        pos, neg = source.sample(y, torch.arange(n))
        return msssim_triplet(images, source.images(pos, "cpu"), source.images(neg, "cpu"))

    for step in range(steps):
        optimizer.zero_grad()
        triplet(model.morph(x), step).backward()
        optimizer.step()
    with torch.no_grad():
        mask = model.mask(x)
        losses = [float(triplet(images, 999)) for images in (model.morph(x), x, shape * x)]
    return float(mask[shape].mean()), float(mask[~shape].mean()), *losses


def test_class_aligned_colour_drives_the_mask_to_the_identity():
    """The failure mode the README reports on Colored MNIST: when the background colour follows
    the class, positives share the anchor's background, so the triplet rewards keeping it: the
    identity beats the shape-only mask and the learned mask converges to ~1 everywhere."""
    on_shape, on_background, learned, identity, shape_only = _triplet_trained_mask("mixed_same")
    assert on_shape > 0.95 and on_background > 0.95
    assert identity < shape_only - 0.05 and learned == pytest.approx(identity, abs=0.01)


def test_class_independent_background_is_masked_more_than_the_shape():
    """Where CIM must help: backgrounds drawn independently of the class (6 colours) tell a
    positive from a negative nothing, the shape does; the learned mask lowers the triplet loss
    well below the identity's, and it falls on the background more than on the shape."""
    on_shape, on_background, learned, identity, _ = _triplet_trained_mask("mixed_rand")
    assert learned < identity - 0.03
    assert on_background < on_shape - 0.08


@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path):
    """fit (with its validation pass through GroupMetrics) under ddp_spawn, then test in-process."""
    pl.seed_everything(0)
    model = _cim(8, vib_beta=0.01, vib_dim=8)
    dm = tiny_synthetic()
    trainer = quick_trainer(
        tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn", limit_train_batches=2
    )
    trainer.fit(model, datamodule=dm)
    assert torch.isfinite(trainer.callback_metrics["train/triplet"])
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    # weights came back from the workers
    results = quick_trainer(tmp_path).test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= results["test/acc"] <= 1.0


# ------------------------------------------------------------------------------------------ configs
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CIM_CONFIGS = sorted(
    p
    for pattern in ("cim_*.yaml", "vib_*.yaml", "sclE2E_*.yaml")
    for p in EXPERIMENTS.glob(pattern)
)


@pytest.fixture(scope="module")
def cim_benchmarks(tmp_path_factory) -> Path:
    """Tiny copies of the on-disk formats of every benchmark CIM's configs use."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from datafixtures import (
        IN9_FOLDERS,
        balanced_labels,
        write_celeba,
        write_image_folder,
        write_mnist_raw,
        write_waterbirds,
    )

    from robustrep.data.vlcs import VLCS_CLASSES, VLCS_DOMAINS

    root = tmp_path_factory.mktemp("cim_benchmarks")
    write_mnist_raw(root, "MNIST", balanced_labels(60), balanced_labels(20))
    write_celeba(root, n=12)
    write_waterbirds(root, {0: [2, 1, 1, 2], 1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})
    write_image_folder(root / "original" / "train", IN9_FOLDERS, 2, tag=1)
    for k, variant in enumerate(["original", "mixed_same", "mixed_rand", "only_fg", "no_fg"]):
        write_image_folder(root / "bg_challenge" / variant / "val", IN9_FOLDERS, 1, tag=10 + k)
    for k, domain in enumerate(VLCS_DOMAINS):
        write_image_folder(root / "VLCS" / domain, VLCS_CLASSES, 2, ext=".jpg", tag=20 + k)
    return root


def test_every_table_row_has_a_config():
    names = {p.stem for p in CIM_CONFIGS}
    for bench in ("colored_mnist", "bg_challenge", "vlcs", "celeba", "waterbirds"):
        assert {f"cim_{bench}", f"cim_vib_{bench}", f"vib_{bench}"} <= names
    assert {"sclE2E_waterbirds", "sclE2E_vlcs", "sclE2E_bg_challenge"} <= names


# Two CIM+VIB configs run in the fast tier (TN, triplets, VIB, both callbacks, in-memory and JPEG
# data); the rest in the slow one.
CONFIG_PARAMS = [
    pytest.param(
        p,
        id=p.stem,
        marks=()
        if p.stem in ("cim_vib_colored_mnist", "cim_vib_bg_challenge")
        else pytest.mark.slow,
    )
    for p in CIM_CONFIGS
]


@pytest.mark.parametrize("config", CONFIG_PARAMS)
def test_config_runs_on_fixture(config, cim_benchmarks, tmp_path):
    """fit (fast_dev_run) + test through the CLI, the configured nets swapped for a tiny one."""
    args = ["fit", "--config", str(config), "--data.init_args.root", str(cim_benchmarks)]
    args += ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4"]
    args += ["--model.init_args.backbone", "tiny", "--model.init_args.backbone_kwargs", "{}"]
    if "resolution:" in config.read_text():
        args += ["--data.init_args.resolution", "16"]
    args += [
        "--trainer.fast_dev_run",
        "1",
        "--trainer.logger",
        "false",
        "--output_root",
        str(tmp_path),
    ]
    assert run_cli(args) == 0
    (results,) = list(tmp_path.rglob("results.json"))
    metrics = json.loads(results.read_text())["metrics"]
    assert np.isfinite(metrics["test/acc"])
    if "bg_challenge" in config.stem:
        assert metrics["test/bg_gap"] == pytest.approx(
            metrics["test/mixed_same/acc"] - metrics["test/mixed_rand/acc"]
        )


@pytest.mark.parametrize("terms", ["positive", "negative"])
def test_one_sided_triplet_reads_only_its_side(terms):
    """Table 5's ablations draw and read only the examples the kept term uses."""
    torch.manual_seed(0)
    model = _cim(8, triplet_terms=terms)
    train = _labelled_dataset(num_classes=2)
    model.set_triplet_source(train)
    model.triplets.reseed(0)
    reads = []
    original = model.triplets.images
    model.triplets.images = lambda idx, device: reads.append(len(idx)) or original(idx, device)
    labels = torch.tensor([0, 1, 0, 1])
    positive, negative = model.draw_triplets(labels, None)
    assert reads == [4]
    kept = positive if terms == "positive" else negative
    assert (positive is None) == (terms == "negative") and (negative is None) == (
        terms == "positive"
    )
    assert kept.shape == (4, 1, 8, 8)
    batch = {"image": torch.rand(4, 1, 8, 8), "label": labels, "index": torch.arange(4)}
    model = CIM(
        num_classes=2, num_groups=2, image_shape=(1, 8, 8), backbone="tiny", triplet_terms=terms
    )
    model.set_triplet_source(train)
    model.triplets.reseed(0)
    loss = model.training_step(batch, 0)
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="margin"):
        _cim(triplet_terms=terms, margin=0.1)
    with pytest.raises(ConfigError, match="triplet_terms"):
        _cim(triplet_terms="neither")


def test_printed_sign_flips_only_the_triplet_term():
    train = _labelled_dataset(num_classes=2)
    batch = {
        "image": torch.rand(6, 1, 8, 8),
        "label": torch.tensor([0, 1, 0, 1, 0, 1]),
        "index": torch.arange(6),
    }
    losses = {}
    for printed in (False, True):
        torch.manual_seed(0)
        model = CIM(
            num_classes=2,
            num_groups=2,
            image_shape=(1, 8, 8),
            backbone="tiny",
            lam=2.0,
            printed_sign=printed,
        )
        with torch.no_grad():
            model.tn.out.weight.normal_(0, 1.0)  # a non-uniform mask
        model.set_triplet_source(train)
        model.triplets.reseed(0)
        losses[printed] = model.training_step(batch, 0)
    ce = torch.nn.functional.cross_entropy(model(batch["image"]), batch["label"])
    torch.testing.assert_close(losses[False] + losses[True], 2 * ce)
    assert not torch.isclose(losses[False], losses[True])


@pytest.mark.parametrize("variant", ["mask", "feature"])
@pytest.mark.parametrize("margin", [None, 0.3])
@pytest.mark.parametrize("printed", [False, True])
def test_triplet_sign_and_margin_against_a_hand_computation(variant, margin, printed):
    from robustrep.losses.msssim import ms_ssim

    g = torch.Generator().manual_seed(3)
    anchor, pos, neg = (torch.rand(5, 1, 16, 16, generator=g) for _ in range(3))
    model = CIM(
        num_classes=2,
        image_shape=(1, 16, 16),
        backbone="tiny",
        variant=variant,
        margin=margin,
        printed_sign=printed,
    )
    got = model._image_triplet(anchor, pos, neg)
    if variant == "feature":  # CIMf compares with the morphed x+ / x-
        pos, neg = model.morph(pos), model.morph(neg)
    ms_pos, ms_neg = ms_ssim(anchor, pos), ms_ssim(anchor, neg)
    # the text: minimise MS(psi, x-) - MS(psi, x+); Eq. 8 as printed: MS(psi, x+) - MS(psi, x-)
    diff = ms_pos - ms_neg if printed else ms_neg - ms_pos
    expected = (diff if margin is None else torch.relu(diff + margin)).mean()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_text_sign_pulls_the_morphed_image_toward_its_positive():
    # structured images (MS-SSIM of pure noise is ~0 and clipped): stripes vs checks
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    pos = (0.5 + 0.4 * torch.sin(xx / 2)).expand(4, 1, 16, 16)
    neg = (0.5 + 0.4 * torch.sin(xx / 2) * torch.sin(yy / 2)).expand(4, 1, 16, 16)
    noise = 0.05 * torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    anchor = (0.5 * pos + 0.5 * neg + noise).requires_grad_()
    model = CIM(num_classes=2, image_shape=(1, 16, 16), backbone="tiny")
    loss = model._image_triplet(anchor, pos, neg)
    (grad,) = torch.autograd.grad(loss, anchor)
    # descending the loss moves psi(x) toward x+ and away from x-
    assert (-grad * (pos - anchor.detach())).sum() > 0
    assert (-grad * (neg - anchor.detach())).sum() < 0
    with torch.no_grad():
        toward_pos = model._image_triplet(0.7 * anchor + 0.3 * pos, pos, neg)
        toward_neg = model._image_triplet(0.7 * anchor + 0.3 * neg, pos, neg)
    assert toward_pos < loss < toward_neg


@pytest.mark.parametrize("variant", ["scl", "gram"])
def test_printed_sign_is_refused_for_the_distance_variants(variant):
    with pytest.raises(ConfigError, match="printed_sign.*already pulls toward x\\+"):
        CIM(
            num_classes=2,
            image_shape=(1, 16, 16),
            backbone="tiny",
            variant=variant,
            printed_sign=True,
            transform_network=variant != "scl",
        )
