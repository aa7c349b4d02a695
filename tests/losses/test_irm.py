"""IP-IRM losses against naive references: separate NT-Xent per subset, autograd IRM derivatives."""

import math

import pytest
import torch
import torch.nn.functional as F

from robustrep.losses.contrastive import nt_xent
from robustrep.losses.irm import (
    balance_penalty,
    columns_product,
    irm_grad,
    irm_penalty,
    min_share,
    partition_losses,
    soft_partition_objective,
    split_entropy,
    view_positive_index,
    weighted_info_nce,
)


def _autograd_irm_penalty(logits, targets):
    w = torch.tensor(1.0, requires_grad=True)
    loss = F.cross_entropy(logits * w, targets)
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    return g.pow(2)


def test_closed_form_penalty_equals_autograd_value_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(13, 7, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (13,))
    ours = irm_penalty(logits.float(), targets)
    ref = _autograd_irm_penalty(logits, targets)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    # fp32 inside; compare gradients too
    (g_ours,) = torch.autograd.grad(irm_penalty(logits, targets), logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(g_ours.double(), g_ref, atol=1e-5)
    assert irm_grad(logits, targets).shape == (13,)


def _naive_subset_reference(z1, z2, members, tau):
    """NT-Xent and its dummy-scale derivative computed separately on the subset's members."""
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss = nt_xent(z1[members].double(), z2[members].double(), tau / w)
    (g,) = torch.autograd.grad(loss, w)
    return loss.item(), g.item()


def test_per_subset_losses_equal_separate_nt_xent_on_members():
    torch.manual_seed(1)
    b, tau = 20, 0.5
    z1, z2 = torch.randn(b, 6), torch.randn(b, 6)
    assign = torch.randint(0, 3, (4, b))
    out = partition_losses(z1, z2, assign, num_subsets=3, tau=tau, irm_tau=tau)
    assert out["full"].item() == pytest.approx(nt_xent(z1, z2, tau).item(), rel=1e-5)
    for p in range(4):
        for k in range(3):
            members = assign[p] == k
            assert out["count"][p, k] == members.sum()
            if members.sum() < 2:
                continue
            loss, grad = _naive_subset_reference(z1, z2, members, tau)
            assert out["subset_loss"][p, k].item() == pytest.approx(loss, rel=1e-4, abs=1e-5)
            assert out["subset_grad"][p, k].item() == pytest.approx(grad, rel=1e-3, abs=1e-5)


def test_irm_temperature_is_separate_from_the_loss_temperature():
    torch.manual_seed(2)
    z1, z2 = torch.randn(10, 4), torch.randn(10, 4)
    assign = (torch.arange(10) % 2)[None]
    out = partition_losses(z1, z2, assign, 2, tau=0.2, irm_tau=0.7)
    members = assign[0] == 1
    loss, _ = _naive_subset_reference(z1, z2, members, 0.2)
    _, grad = _naive_subset_reference(z1, z2, members, 0.7)
    assert out["subset_loss"][0, 1].item() == pytest.approx(loss, rel=1e-4)
    assert out["subset_grad"][0, 1].item() == pytest.approx(grad, rel=1e-3)


def test_empty_and_singleton_subsets_contribute_nothing_and_stay_finite():
    torch.manual_seed(3)
    z1 = torch.randn(6, 5, requires_grad=True)
    z2 = torch.randn(6, 5, requires_grad=True)
    # empty, singleton, uncovered example
    assign = torch.tensor([[0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0], [2, 2, -1, 2, 2, 2]])
    out = partition_losses(z1, z2, assign, num_subsets=3)
    valid = out["valid"]
    assert valid.tolist() == [[True, False, False], [True, False, False], [False, False, True]]
    # the singleton: only its positive
    assert out["subset_loss"][1, 1] == 0 and out["subset_grad"][1, 1] == 0
    assert out["subset_loss"][0, 1] == 0 and out["subset_loss"][0, 2] == 0  # empty subsets
    total = (out["subset_loss"] * valid).sum() + (out["subset_grad"].pow(2) * valid).sum()
    total.backward()
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    members = assign[2] == 2  # the uncovered example (-1) is nobody's negative
    loss, _ = _naive_subset_reference(z1.detach(), z2.detach(), members, 0.5)
    assert out["subset_loss"][2, 2].item() == pytest.approx(loss, rel=1e-4)


def test_subset_terms_gradients_match_naive_reference():
    torch.manual_seed(4)
    z1 = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)
    members = torch.tensor([1, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
    out = partition_losses(z1, z2, members.long()[None], 2)
    (out["subset_loss"][0, 1] + 0.2 * out["subset_grad"][0, 1] ** 2).backward()
    ours = z1.grad.clone()
    z1.grad = None
    w = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss = nt_xent(z1[members], z2[members], 0.5 / w)
    (g,) = torch.autograd.grad(loss, w, create_graph=True)
    (loss + 0.2 * g**2).backward()
    assert torch.allclose(ours, z1.grad, atol=1e-5)


def test_soft_objective_with_hard_assignment_is_the_hard_subset_loss():
    torch.manual_seed(5)
    z1, z2 = F.normalize(torch.randn(16, 4), dim=1), F.normalize(torch.randn(16, 4), dim=1)
    assign = torch.randint(0, 2, (16,))
    assign[:2] = torch.tensor([0, 1])
    objective, losses, grads = soft_partition_objective(
        z1, z2, F.one_hot(assign, 2).float(), 0.5, 0.5, lambda2=0.5
    )
    hard = partition_losses(z1, z2, assign[None], 2, full_batch=False)
    assert torch.allclose(losses, hard["subset_loss"][0], atol=1e-5)
    assert torch.allclose(grads, hard["subset_grad"][0], atol=1e-5)
    assert objective.item() == pytest.approx(
        (losses.mean() + 0.5 * grads.pow(2).mean()).item(), rel=1e-6
    )


def test_weighted_info_nce_column_of_ones_is_nt_xent_per_anchor_and_works_under_bf16():
    torch.manual_seed(6)
    z = torch.randn(12, 5).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grad = weighted_info_nce(z, view_positive_index(6), torch.ones(12, 1), 0.5, 0.5)
    assert loss.dtype == torch.float32 and torch.isfinite(grad).all()
    assert loss.mean().item() == pytest.approx(
        nt_xent(z[:6].float(), z[6:].float(), 0.5).item(), rel=1e-5
    )


def test_weighted_info_nce_frozen_features_path_equals_the_differentiable_one():
    # the maximisation step's features carry no gradient and take a leaner path (no R x R mask)
    torch.manual_seed(7)
    z = torch.randn(16, 6)
    weights = torch.rand(16, 3)
    pos = view_positive_index(8)
    frozen = weighted_info_nce(z, pos, weights, 0.5, 0.3)
    live = weighted_info_nce(z.clone().requires_grad_(True), pos, weights, 0.5, 0.3)
    for a, b in zip(frozen, live):
        assert torch.allclose(a, b.detach(), atol=1e-6)
    # and with identical rows (every similarity equal: the row maximum is not the diagonal's)
    same = torch.ones(16, 6)
    loss, grad = weighted_info_nce(same, pos, weights, 0.5, 0.5)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert torch.allclose(loss, weighted_info_nce(same.requires_grad_(True), pos, weights)[0])


def _naive_weighted_info_nce(z, pos, c, tau, irm_tau):
    # per anchor i and weighting k: the positive with weight 1, every other row j != i with c_jk
    z = F.normalize(z, dim=1)
    r = z.shape[0]
    weight = c[None, :, :].expand(r, r, c.shape[1]).clone()  # anchor x row x k
    weight[torch.arange(r), torch.arange(r)] = 0.0
    weight[torch.arange(r), pos] = 1.0

    def terms(t):
        s = (z @ z.T / t)[:, :, None]
        denom = (weight * s.exp()).sum(1)
        return s, denom, s[torch.arange(r), pos]

    s, denom, s_pos = terms(tau)
    loss = denom.log() - s_pos
    s, denom, s_pos = terms(irm_tau)
    grad = (weight * s.exp() * s).sum(1) / denom - s_pos
    return loss, grad


@pytest.mark.parametrize("irm_tau", [0.5, 0.3])
@pytest.mark.parametrize("frozen", [True, False])
def test_weighted_info_nce_values_and_weight_gradients_equal_the_naive_formula(frozen, irm_tau):
    # the maximisation differentiates in the weights with frozen features (its in-place path and
    # the thin-matrix products); the minimisation in the features
    torch.manual_seed(8)
    z = torch.randn(24, 5, dtype=torch.float64)
    pos = view_positive_index(12)
    weights = torch.rand(24, 3, dtype=torch.float64)
    upstream = torch.randn(2, 24, 3, dtype=torch.float64)
    grads = []
    for fn in (weighted_info_nce, _naive_weighted_info_nce):
        zz = z.clone().requires_grad_(not frozen)
        c = weights.clone().requires_grad_(True)
        loss, grad = fn(zz, pos, c, 0.5, irm_tau)
        ((loss * upstream[0]).sum() + (grad * upstream[1]).sum()).backward()
        grads.append((loss.detach(), grad.detach(), c.grad, None if frozen else zz.grad))
    for ours, naive in zip(*grads):
        if ours is not None:
            assert torch.allclose(ours.double(), naive, atol=1e-5), (ours - naive).abs().max()


def test_columns_product_is_the_matrix_product_with_its_gradient_and_refuses_a_live_matrix():
    torch.manual_seed(9)
    big, small = torch.randn(40, 40), torch.randn(40, 3, requires_grad=True)
    upstream = torch.randn(40, 3)
    (columns_product(big, small) * upstream).sum().backward()
    ours = small.grad.clone()
    small.grad = None
    ((big @ small) * upstream).sum().backward()
    torch.testing.assert_close(ours, small.grad)
    torch.testing.assert_close(columns_product(big, small), big @ small)
    with pytest.raises(ValueError, match="constant"):
        columns_product(big.requires_grad_(True), small)


def test_balance_targets():
    assert split_entropy(2, 2.0) == pytest.approx(0.6365, abs=1e-4)  # the public code's constant
    assert min_share(2, 2.0) == pytest.approx(1 / 3)
    balanced = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    skewed = torch.tensor([[0.95, 0.05], [0.9, 0.1]])
    assert balance_penalty(balanced, split_entropy()) == 0
    assert balance_penalty(skewed, split_entropy()) > 0
    assert split_entropy(4, 1.0) == pytest.approx(math.log(4))
