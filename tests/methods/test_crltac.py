"""CRL-TAC / SimCLR-on-crops: objective, crops, the two update steps, pooling, metrics, fit,
configs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import quick_trainer, run_cli, tiny_synthetic

from robustrep.callbacks.crltac_metrics import (
    CRLTACMetrics,
    boxes_crop_mask,
    gaussian_potential,
    ink_crop_mask,
)
from robustrep.data import GridMNIST
from robustrep.data.crops import crop_offsets, oracle_weights, take_crops
from robustrep.losses.contrastive import nt_xent
from robustrep.losses.multicrop import (
    cross_multicrop_terms,
    multicrop_info_nce,
    multicrop_terms,
    weighted_multicrop_terms,
)
from robustrep.methods.crltac import CRLTAC

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def small_model(**kw) -> CRLTAC:
    args = dict(
        image_shape=(1, 12, 12),
        num_classes=2,
        crop_size=6,
        crop_stride=3,
        m=4,
        backbone_kwargs={"channels": (4, 4), "out_dim": 8},
    )
    args.update(kw)
    args.setdefault("projection_hidden", 8)
    args.setdefault("projection_dim", 6)
    return CRLTAC(**args)


# ------------------------------------------------------------------------------------ objective
def test_m2_uniform_objective_is_nt_xent():
    torch.manual_seed(0)
    z1, z2 = torch.randn(7, 5), torch.randn(7, 5)
    rows = torch.stack([z1, z2], 1).reshape(14, 5)  # image-major: (img0 v0, img0 v1, img1 v0, ...)
    for beta in (0.5, 1.0, 3.0):
        torch.testing.assert_close(multicrop_info_nce(rows, 2, beta), nt_xent(z1, z2, tau=1 / beta))


def test_multicrop_terms_match_naive_loop():
    torch.manual_seed(1)
    n, m, beta = 3, 4, 0.7
    z = F.normalize(torch.randn(n * m, 6), dim=1)
    got = multicrop_terms(z, m, beta)
    for i in range(n * m):
        others = [j for j in range(n * m) if j != i]
        positives = [j for j in others if j // m == i // m]
        denom = math.log(sum(math.exp(beta * float(z[i] @ z[j])) for j in others))
        expected = denom - sum(beta * float(z[i] @ z[p]) for p in positives) / len(positives)
        assert abs(float(got[i]) - expected) < 1e-5


def test_weighted_terms_match_naive_loop_and_reduce_to_plain_terms():
    torch.manual_seed(2)
    n, m, beta = 3, 4, 0.7
    z = F.normalize(torch.randn(n * m, 6), dim=1)
    w = torch.softmax(torch.randn(n, m), dim=1)
    got = weighted_multicrop_terms(z, w.log(), m, beta)
    flat = w.reshape(-1)
    for i in range(n * m):
        others = [j for j in range(n * m) if j != i]
        positives = [j for j in others if j // m == i // m]
        denom = math.log(
            sum(m * float(flat[j]) * math.exp(beta * float(z[i] @ z[j])) for j in others)
        )
        pos = sum(float(flat[p]) * beta * float(z[i] @ z[p]) for p in positives) / sum(
            float(flat[p]) for p in positives
        )
        assert abs(float(got[i]) - (denom - pos)) < 1e-5
    uniform = torch.full((n, m), 1.0 / m)
    torch.testing.assert_close(
        weighted_multicrop_terms(z, uniform.log(), m, beta), multicrop_terms(z, m, beta)
    )


def test_cross_terms_match_naive_loop():
    torch.manual_seed(4)
    n, m, beta = 3, 2, 0.9
    a, v = F.normalize(torch.randn(n * m, 5), dim=1), F.normalize(torch.randn(n * m, 5), dim=1)
    got = cross_multicrop_terms(a, v, m, beta)
    for i in range(n * m):
        denom = math.log(sum(math.exp(beta * float(a[i] @ v[j])) for j in range(n * m)))
        pos = sum(beta * float(a[i] @ v[j]) for j in range(n * m) if j // m == i // m) / m
        assert abs(float(got[i]) - (denom - pos)) < 1e-5


def test_multicrop_rejects_bad_shapes():
    with pytest.raises(ValueError):
        multicrop_terms(torch.randn(7, 3), 2)
    with pytest.raises(ValueError):
        multicrop_terms(torch.randn(4, 3), 1)


# ------------------------------------------------------------------------------------ crops
def test_crops_equal_slicing_at_offsets():
    offsets = crop_offsets((84, 84), 20, 4)
    assert offsets.shape == (289, 2)
    images = torch.rand(3, 2, 84, 84)
    index = torch.tensor([[0, 288, 17], [5, 100, 16], [272, 1, 144]])
    crops = take_crops(images, index, 20, 4)
    assert crops.shape == (3, 3, 2, 20, 20)
    for b in range(3):
        for k in range(3):
            top, left = offsets[index[b, k]].tolist()
            assert (top, left) == (4 * (int(index[b, k]) // 17), 4 * (int(index[b, k]) % 17))
            assert torch.equal(crops[b, k], images[b, :, top : top + 20, left : left + 20])


def test_oracle_is_the_nine_crops_inside_the_digit_cell():
    images = torch.zeros(2, 1, 84, 84)
    images[0, :, 30:50, 60:80] = 1.0  # cell 5 (row 1, col 2): box 28..56 x 56..84
    images[1, :, 2:20, 3:25] = 1.0  # cell 0
    offsets = crop_offsets((84, 84), 20, 4)
    w = oracle_weights(images, offsets, 20)
    assert torch.allclose(w.sum(1), torch.ones(2))
    for b, (top, left) in enumerate([(28, 56), (0, 0)]):
        chosen = {tuple(o) for o in offsets[w[b] > 0].tolist()}
        assert chosen == {(top + dy, left + dx) for dy in (0, 4, 8) for dx in (0, 4, 8)}


# ------------------------------------------------------------------------------------ the two steps
def test_policy_step_changes_only_policy_and_encoder_step_only_encoder():
    torch.manual_seed(0)
    model = small_model()
    images = torch.rand(6, 1, 12, 12)
    model.encoder_loss(images).backward()
    assert all(p.grad is None for p in model.policy.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder_parameters())
    model.zero_grad(set_to_none=True)
    model.policy_loss(images)[0].backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.parameters())
    enc_opt, pol_opt = model.configure_optimizers()
    assert {id(p) for g in enc_opt.param_groups for p in g["params"]} == {
        id(p) for p in model.encoder_parameters()
    }
    assert {id(p) for g in pol_opt.param_groups for p in g["params"]} == {
        id(p) for p in model.policy.parameters()
    }


@pytest.mark.parametrize("objective", ["anchor", "sampled", "full"])
def test_policy_loss_is_weighted_terms_minus_entropy_bonus(objective):
    torch.manual_seed(0)
    model = small_model(lambda_h=0.0, policy_objective=objective)
    with torch.no_grad():
        model.policy.fc[-1].bias.copy_(torch.randn(model.num_crops))  # a non-uniform policy
    images = torch.rand(5, 1, 12, 12)
    torch.manual_seed(3)
    plain, entropy = model.policy_loss(images)
    torch.manual_seed(3)  # same uniform crops (and policy-drawn views)
    index, crops = model.sample_crops(images, uniform=True)
    log_p = model.policy_log_probs(images)
    model.eval()  # the policy step embeds with the encoder in eval mode (policy_step_eval)
    z = model.encode(crops)[1]
    if objective == "sampled":
        views = model.encode(model.sample_crops(images, log_p=log_p)[1])[1]
    model.train()
    p_sel = log_p.exp().gather(1, index)
    w = p_sel / p_sel.sum(1, keepdim=True)
    if objective == "full":
        terms = weighted_multicrop_terms(z, w.log(), model.m, model.beta).view(5, model.m)
    elif objective == "sampled":
        terms = cross_multicrop_terms(z, views, model.m, model.beta).view(5, model.m)
    else:
        terms = multicrop_terms(z, model.m, model.beta, normalize=False).view(5, model.m)
    expected = (w * terms).sum(1).mean()
    torch.testing.assert_close(plain, expected)
    torch.testing.assert_close(entropy, -(log_p.exp() * log_p).sum(1).mean())
    model.lambda_h = 0.5
    torch.manual_seed(3)
    bonus, _ = model.policy_loss(images)
    # minimising the loss raises the entropy
    torch.testing.assert_close(bonus, plain - 0.5 * entropy)


def test_policy_step_keeps_batchnorm_statistics_and_training_mode():
    torch.manual_seed(0)
    model = small_model()
    images = torch.rand(6, 1, 12, 12)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" in k}
    model.policy_loss(images)[0].backward()
    after = {k: v for k, v in model.backbone.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
    assert all(mod.training for mod in model.modules())


def test_constant_crops_are_encoded_once_with_the_same_result():
    torch.manual_seed(0)
    model = small_model().eval()
    images = torch.zeros(3, 1, 12, 12)
    images[:, :, 2:6, 3:7] = torch.rand(3, 1, 4, 4)
    images[2, :, 6:, :] = 0.5  # a second constant value
    crops = take_crops(
        images, torch.arange(model.num_crops).expand(3, -1), model.crop_size, model.crop_stride
    ).reshape(-1, 1, 6, 6)
    fast = model.encode_no_grad(crops)
    model.dedupe_constant_crops = False
    slow = model.encode_no_grad(crops)
    torch.testing.assert_close(fast, slow)


def test_entropy_bonus_spreads_a_peaked_policy():
    torch.manual_seed(0)
    model = small_model(lambda_h=100.0)
    with torch.no_grad():
        model.policy.fc[-1].bias.copy_(torch.linspace(0, 4, model.num_crops))
    images = torch.rand(4, 1, 12, 12)
    opt = torch.optim.SGD(model.policy.parameters(), lr=1e-3)
    before = model.policy_loss(images)[1].item()
    for _ in range(5):
        opt.zero_grad()
        model.policy_loss(images)[0].backward()
        opt.step()
    assert model.policy_loss(images)[1].item() > before + 0.01


# ----------------------------------------------------------------------------------- representation
def test_weighted_representation_is_explicit_weighted_sum():
    torch.manual_seed(0)
    model = small_model().eval()
    with torch.no_grad():
        model.policy.fc[-1].bias.copy_(torch.randn(model.num_crops))
    images = torch.rand(3, 1, 12, 12)
    got = model.embed_variants(
        images, [("head", "policy"), ("trunk", "policy"), ("head", "top_n"), ("trunk", "uniform")]
    )
    probs = model.policy_log_probs(images).exp()
    for b in range(3):
        head, trunk, hs = 0, 0, []
        for t, (top, left) in enumerate(model.offsets.tolist()):
            f, h = model.encode(images[b : b + 1, :, top : top + 6, left : left + 6])
            head, trunk = head + probs[b, t] * h[0], trunk + probs[b, t] * f[0]
            hs.append((h[0], f[0]))
        torch.testing.assert_close(
            got[("head", "policy")][b], F.normalize(head, dim=0), atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(got[("trunk", "policy")][b], trunk, atol=1e-5, rtol=1e-5)
        top = probs[b].topk(model.top_n).indices.tolist()
        torch.testing.assert_close(
            got[("head", "top_n")][b],
            F.normalize(sum(hs[t][0] for t in top) / len(top), dim=0),
            atol=1e-5,
            rtol=1e-5,
        )
        torch.testing.assert_close(
            got[("trunk", "uniform")][b], sum(x[1] for x in hs) / len(hs), atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(model.embed(images), got[("head", "policy")])


def test_simclr_has_no_policy_and_uniform_pooling():
    model = small_model(policy="uniform")
    assert model.policy is None and len(model.configure_optimizers()) == 1
    images = torch.rand(2, 1, 12, 12)
    torch.testing.assert_close(
        model.policy_log_probs(images).exp(), torch.full((2, model.num_crops), 1 / model.num_crops)
    )


# ------------------------------------------------------------------------------------ metrics
def test_metric_helpers_against_naive():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(6, 3), dim=1)
    naive = (
        sum(
            math.exp(-2 * float((z[i] - z[j]).pow(2).sum()))
            for i in range(6)
            for j in range(i + 1, 6)
        )
        / 15
    )
    assert abs(float(gaussian_potential(z)) - naive) < 1e-6
    offsets = crop_offsets((12, 12), 6, 3)
    images = torch.zeros(2, 1, 12, 12)
    images[0, 0, 7, 1] = 1.0
    ink = ink_crop_mask(images, offsets, 6, 0.5)
    naive_ink = torch.tensor(
        [
            [bool((images[b, :, y : y + 6, x : x + 6] > 0.5).any()) for y, x in offsets.tolist()]
            for b in range(2)
        ]
    )
    assert torch.equal(ink, naive_ink) and not ink[1].any()
    boxes = torch.tensor([[0, 0, 4, 4], [6, 6, 12, 12]])
    mask = boxes_crop_mask(offsets, 6, boxes)
    naive_box = torch.tensor(
        [
            [
                (y < bx[2] and y + 6 > bx[0] and x < bx[3] and x + 6 > bx[1])
                for y, x in offsets.tolist()
            ]
            for bx in boxes.tolist()
        ]
    )
    assert torch.equal(mask, naive_box)


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_and_test_on_tiny_data(tmp_path, precision):
    torch.manual_seed(0)
    # 16-px images and 8-px crops: with 4-px crops the last conv sees a 1x1 map, and PyTorch's CPU
    # bf16 weight gradient of a padded 3x3 conv on a 1x1 input reads uninitialised memory (NaN or
    # not from one run to the next on the same inputs; torch 2.14.1)
    dm = tiny_synthetic(num_attributes=1, size=16)
    model = CRLTAC(
        image_shape=dm.image_shape,
        num_classes=dm.num_classes,
        crop_size=8,
        crop_stride=4,
        m=2,
        backbone_kwargs={"channels": (4, 4), "out_dim": 8},
    )
    metrics = CRLTACMetrics(
        variants=["head", "f", "head_topn", "f_oracle"], max_examples=32, heatmaps=2
    )
    trainer = quick_trainer(
        tmp_path, max_epochs=2, precision=precision, callbacks=[metrics], limit_val_batches=1
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, datamodule=dm)
    after = model.state_dict()
    assert not torch.equal(before["policy.fc.2.bias"], after["policy.fc.2.bias"])
    assert not torch.equal(before["projection.2.weight"], after["projection.2.weight"])
    trainer.test(model, datamodule=dm)
    for key in (
        "probe/head/acc",
        "probe/f/acc",
        "probe/head_topn/acc",
        "probe/f_oracle/acc",
        "crltac/uniformity",
        "crltac/policy_mass_ink",
    ):
        assert key in metrics.last and math.isfinite(metrics.last[key])
    assert 0.0 <= metrics.last["crltac/uniformity"] <= 1.0
    assert list((tmp_path / "images").glob("crltac_policy_heatmaps_*.png"))


def test_policy_mass_on_grid_mnist_digit_cells(tmp_path):
    dm = GridMNIST(digits_source="sklearn", batch_size=16, train_fraction=0.05)
    model = CRLTAC(
        image_shape=dm.image_shape,
        num_classes=10,
        crop_stride=16,
        m=2,
        backbone_kwargs={"channels": (4, 4), "out_dim": 8},
    )
    metrics = CRLTACMetrics(variants=["head"], max_examples=24, heatmaps=0)
    trainer = quick_trainer(tmp_path, max_steps=1, callbacks=[metrics], limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    # a zero-initialised last layer = uniform policy: its mass on the digit equals the share of
    # digit crops
    assert metrics.last["crltac/uniform_mass_digit"] > 0
    assert (
        abs(metrics.last["crltac/policy_mass_digit"] - metrics.last["crltac/uniform_mass_digit"])
        < 0.05
    )


@pytest.mark.parametrize(
    "name",
    [
        "simclr_mnist_crops",
        pytest.param("crltac_mnist", marks=pytest.mark.slow),
        pytest.param("crltac_grid_mnist", marks=pytest.mark.slow),
        pytest.param("simclr_grid_mnist", marks=pytest.mark.slow),
    ],
)
def test_configs_run_through_the_cli(tmp_path, name):
    status = run_cli(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / f"{name}.yaml"),
            "--trainer.logger",
            "false",
            "--trainer.fast_dev_run",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.eval_batch_size",
            "64",
            "--data.init_args.train_fraction",
            "0.05",
            "--model.init_args.crop_stride",
            "16" if "grid" in name else "8",
            "--model.init_args.m",
            "2",
            "--run_dir",
            str(tmp_path / "run"),
        ]
    )
    assert status == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert any("probe" in k for k in json.dumps(results).split('"'))


# ------------------------------------------------------------------------------------ DDP (slow)
@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path):
    from lightning.pytorch.strategies import DDPStrategy

    dm = tiny_synthetic(num_attributes=1)
    model = CRLTAC(
        image_shape=dm.image_shape,
        num_classes=dm.num_classes,
        crop_size=4,
        crop_stride=2,
        m=2,
        backbone_kwargs={"channels": (4, 4), "out_dim": 8},
    )
    trainer = quick_trainer(
        tmp_path,
        devices=2,
        strategy=DDPStrategy(start_method="spawn", find_unused_parameters=True),
        max_epochs=1,
        limit_val_batches=1,
        limit_test_batches=1,
    )
    trainer.fit(model, datamodule=dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert math.isfinite(float(trainer.callback_metrics["train/policy_loss"]))
