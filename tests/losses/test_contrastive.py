"""The vectorised contrastive losses against a naive per-anchor loop written from METHODS.md section
4.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import free_port

from robustrep.losses.contrastive import (
    attract,
    contrastive_loss,
    masked_info_nce,
    masked_logsumexp,
    nt_xent,
    repel,
    spread,
    stack_views,
    supcon,
)
from robustrep.losses.fused_contrastive import MIN_TAU


def naive(
    z: torch.Tensor,
    labels: torch.Tensor,
    instance: torch.Tensor,
    kind: str,
    tau: float,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Per-anchor Python loop, straight from the formulas; mean over the anchors where a term
    exists.
    """
    z = F.normalize(z.double(), dim=1)
    n = len(z)
    s = lambda i, j: float(z[i] @ z[j]) / tau  # noqa: E731
    att, rep, sup, sim = [], [], [], []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(n) if labels[j] != labels[i]]
        aug = [j for j in range(n) if j != i and instance[j] == instance[i]]
        others = [j for j in range(n) if j != i]
        if pos:
            terms = []
            for p in pos:
                denom = math.exp(s(i, p)) + sum(math.exp(s(i, a)) for a in neg)
                terms.append(-math.log(math.exp(s(i, p)) / denom))
            att.append(sum(terms) / len(pos))
            all_denom = sum(math.exp(s(i, a)) for a in others)
            sup.append(sum(-math.log(math.exp(s(i, p)) / all_denom) for p in pos) / len(pos))
        if aug:
            class_denom = sum(math.exp(s(i, p)) for p in pos)
            rep.append(sum(-math.log(math.exp(s(i, a)) / class_denom) for a in aug) / len(aug))
            all_denom = sum(math.exp(s(i, a)) for a in others)
            sim.append(sum(-math.log(math.exp(s(i, a)) / all_denom) for a in aug) / len(aug))
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    value = {
        "attract": mean(att),
        "repel": mean(rep),
        "spread": alpha * mean(att) + (1 - alpha) * mean(rep),
        "supcon": mean(sup),
        "simclr": mean(sim),
    }[kind]
    return torch.tensor(value, dtype=torch.float64)


LABEL_PATTERNS = {
    "random": lambda b, g: torch.randint(3, (b,), generator=g),
    "all_distinct": lambda b, g: torch.arange(b),
    "one_class": lambda b, g: torch.zeros(b, dtype=torch.long),
    "singletons": lambda b, g: torch.tensor([0, 0, 0, 1, 2, 3, 3, 4])[:b],
}


@pytest.mark.parametrize("kind", ["spread", "attract", "repel", "supcon", "simclr"])
@pytest.mark.parametrize("pattern", list(LABEL_PATTERNS))
def test_two_view_losses_match_naive_loop(kind, pattern):
    g = torch.Generator().manual_seed(len(kind) * 10 + list(LABEL_PATTERNS).index(pattern))
    b, d, tau, alpha = 8, 5, 0.5, 0.3
    z1, z2 = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    labels = LABEL_PATTERNS[pattern](b, g)
    z, y, inst = stack_views([z1, z2], labels)
    expected = naive(z, y, inst, kind, tau, alpha)
    got = contrastive_loss(z, y, inst, kind, tau=tau, alpha=alpha)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["spread", "attract", "supcon"])
def test_single_view_rows_with_singletons_are_safe(kind):
    """One view per example: singletons have no positive; the loss stays finite with finite
    gradients.
    """
    g = torch.Generator().manual_seed(3)
    z = torch.randn(7, 4, generator=g, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    loss = contrastive_loss(z, labels, None, kind, tau=0.3)
    expected = naive(z.detach(), labels, torch.arange(7), kind, 0.3)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_no_positive_at_all_gives_zero_and_finite_grad():
    z = torch.randn(4, 3, requires_grad=True)
    loss = contrastive_loss(z, torch.arange(4), None, "supcon")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(z.grad).all()


def test_alpha_one_is_attract_and_alpha_zero_is_repel():
    g = torch.Generator().manual_seed(1)
    z1, z2, y = (
        torch.randn(16, 8, generator=g),
        torch.randn(16, 8, generator=g),
        torch.randint(4, (16,), generator=g),
    )
    torch.testing.assert_close(spread(z1, z2, y, tau=0.4, alpha=1.0), attract(z1, z2, y, tau=0.4))
    torch.testing.assert_close(spread(z1, z2, y, tau=0.4, alpha=0.0), repel(z1, z2, y, tau=0.4))
    mix = 0.25 * attract(z1, z2, y, tau=0.4) + 0.75 * repel(z1, z2, y, tau=0.4)
    torch.testing.assert_close(spread(z1, z2, y, tau=0.4, alpha=0.25), mix)


def test_supcon_on_distinct_labels_is_nt_xent():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(12, 6, generator=g), torch.randn(12, 6, generator=g)
    torch.testing.assert_close(supcon(z1, z2, torch.arange(12), tau=0.2), nt_xent(z1, z2, tau=0.2))
    # labels are ignored by nt_xent; supcon with shared labels differs
    assert not torch.allclose(
        supcon(z1, z2, torch.zeros(12, dtype=torch.long), tau=0.2), nt_xent(z1, z2, tau=0.2)
    )


def test_nt_xent_closed_form_for_identical_views():
    """Orthogonal examples, identical views: loss = -s + log(e^s + (2B-2) e^0) with s = 1/tau."""
    b, tau = 4, 0.5
    z = torch.eye(b, 8)
    expected = -1 / tau + math.log(math.exp(1 / tau) + (2 * b - 2))
    torch.testing.assert_close(
        nt_xent(z, z.clone(), tau=tau), torch.tensor(expected, dtype=torch.float32)
    )


def test_scale_invariance_and_symmetry():
    """Rows are L2-normalised first (the public code's norm bug would break this); swapping views
    changes nothing.
    """
    g = torch.Generator().manual_seed(4)
    z1, z2, y = (
        torch.randn(10, 4, generator=g),
        torch.randn(10, 4, generator=g),
        torch.randint(3, (10,), generator=g),
    )
    base = spread(z1, z2, y, alpha=0.3)
    torch.testing.assert_close(spread(z1 * 5.0, z2 * 0.1, y, alpha=0.3), base)
    torch.testing.assert_close(spread(z2, z1, y, alpha=0.3), base)


def test_masked_info_nce_general_form():
    sim = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    pos = torch.tensor([[False, True, False], [False, False, False], [True, True, False]])
    denom = ~torch.eye(3, dtype=torch.bool)
    loss, valid = masked_info_nce(sim, pos, denom)
    assert valid.tolist() == [True, False, True]
    torch.testing.assert_close(loss[0], torch.logsumexp(torch.tensor([1.0, 2.0]), 0) - 1.0)
    assert loss[1] == 0
    torch.testing.assert_close(loss[2], torch.logsumexp(torch.tensor([2.0, 3.0]), 0) - 2.5)


def test_masked_logsumexp_equals_the_sum_over_the_mask_with_no_gradient_outside():
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(6, 9, generator=g) * 30).requires_grad_()  # spans far beyond exp's range
    mask = torch.rand(6, 9, generator=g) < 0.4
    mask[0] = False  # an empty row
    mask[1] = True
    got = masked_logsumexp(x, mask, dim=1)
    assert got[0].item() == -1e9
    for i in range(1, 6):
        torch.testing.assert_close(got[i], torch.logsumexp(x[i][mask[i]], 0), rtol=0, atol=1e-5)
    (grad,) = torch.autograd.grad(got.sum(), x)
    assert grad[0].abs().sum() == 0 and grad[~mask].abs().sum() == 0
    torch.testing.assert_close(grad.sum(1)[1:], torch.ones(5))  # a softmax per non-empty row


def test_bf16_inputs_run_in_fp32():
    g = torch.Generator().manual_seed(5)
    z1, z2, y = (
        torch.randn(8, 4, generator=g),
        torch.randn(8, 4, generator=g),
        torch.randint(2, (8,), generator=g),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = spread(z1.bfloat16(), z2.bfloat16(), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, spread(z1.bfloat16().float(), z2.bfloat16().float(), y))


def test_unknown_loss_and_missing_labels_raise():
    with pytest.raises(ValueError, match="unknown"):
        contrastive_loss(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), loss="nope")
    with pytest.raises(ValueError, match="needs labels"):
        contrastive_loss(torch.randn(4, 2), None, loss="spread")


def _reference(z, labels, instance, kind, tau, alpha=0.5):
    """The masked autograd formulation (the implementation before the fused pass), in fp32."""
    from robustrep.losses.contrastive import _autograd_contrastive, term_weights

    weights = term_weights(kind, alpha)
    zn = F.normalize(z.float(), dim=1)
    return _autograd_contrastive(
        zn, instance if kind == "simclr" else labels, instance, tau, weights
    )


@pytest.fixture(params=["blocks", "masks"])
def positives_path(request, monkeypatch):
    """Attract / repel over the classes' diagonal blocks (few classes) or whole-matrix masks."""
    from robustrep.losses import fused_contrastive

    monkeypatch.setattr(
        fused_contrastive, "MIN_BLOCK_ROWS", 1 if request.param == "blocks" else 10**9
    )
    return request.param


@pytest.mark.parametrize("tau", [0.5, 0.1, 0.04])  # 0.04: near the fused pass's lowest tau
@pytest.mark.parametrize("kind", ["spread", "attract", "repel", "supcon", "simclr"])
@pytest.mark.parametrize("pattern", list(LABEL_PATTERNS))
def test_fused_pass_equals_the_masked_formulation_values_and_gradients(
    kind, pattern, tau, positives_path
):
    g = torch.Generator().manual_seed(7 + len(kind) + list(LABEL_PATTERNS).index(pattern))
    b = 8
    z1, z2 = torch.randn(b, 6, generator=g), torch.randn(b, 6, generator=g)
    z, y, inst = stack_views([z1, z2], LABEL_PATTERNS[pattern](b, g))
    a, r = z.clone().requires_grad_(), z.clone().requires_grad_()
    fused = contrastive_loss(a, y, inst, kind, tau=tau, alpha=0.3)
    ref = _reference(r, y, inst, kind, tau, alpha=0.3)
    fused.backward()
    ref.backward()
    torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["spread", "attract", "repel", "supcon", "simclr"])
def test_fused_pass_is_safe_on_degenerate_batches(kind, positives_path):
    """Identical embeddings, one class, no positive at all, zero vectors: finite values and
    gradients equal to the masked formulation's."""
    cases = [
        (torch.ones(8, 4), torch.tensor([0, 1, 0, 1] * 2), torch.arange(4).repeat(2)),  # identical
        (
            torch.randn(8, 4),
            torch.zeros(8, dtype=torch.long),
            torch.arange(4).repeat(2),
        ),  # one class
        (torch.randn(6, 4), torch.arange(6), torch.arange(6)),  # no positive, no instance partner
        (torch.zeros(8, 4), torch.tensor([0, 1] * 4), torch.arange(4).repeat(2)),  # zero vectors
    ]
    for z, y, inst in cases:
        a, r = z.clone().requires_grad_(), z.clone().requires_grad_()
        fused = contrastive_loss(a, y, inst, kind, tau=0.5)
        fused.backward()
        ref = _reference(r, y, inst, kind, 0.5)
        ref.backward()
        assert torch.isfinite(fused) and torch.isfinite(a.grad).all()
        torch.testing.assert_close(fused, ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["spread", "attract", "repel", "supcon", "simclr"])
def test_fused_pass_stays_finite_when_exp_underflows_at_a_tiny_temperature(kind):
    # tau 0.002: logits span 1000, so most E_ij (positives included) would underflow to 0 in
    # fp32 in one exp pass; below MIN_TAU the per-set log-sum-exp formulation takes over
    g = torch.Generator().manual_seed(4)
    z, y, inst = stack_views(
        [torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)], torch.arange(16) % 3
    )
    a = z.clone().requires_grad_()
    loss = contrastive_loss(a, y, inst, kind, tau=0.002)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()
    assert MIN_TAU > 0.002
    torch.testing.assert_close(loss, _reference(z, y, inst, kind, 0.002), rtol=1e-6, atol=1e-6)


def test_fused_pass_under_bf16_autocast_matches_fp32_within_bf16_rounding():
    """bf16 embeddings from an autocast forward: the loss runs in fp32; against fp32 inputs the
    difference is the bf16 rounding of the inputs only (relative 1e-2)."""
    g = torch.Generator().manual_seed(9)
    z = torch.randn(64, 16, generator=g)
    y, inst = torch.randint(4, (32,), generator=g).repeat(2), torch.arange(32).repeat(2)
    a = z.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = contrastive_loss(a, y, inst, "spread", tau=0.1)
    low.backward()
    b = z.clone().requires_grad_()
    high = contrastive_loss(b, y, inst, "spread", tau=0.1)
    high.backward()
    assert low.dtype == torch.float32 and torch.isfinite(a.grad.float()).all()
    torch.testing.assert_close(low, high, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(a.grad.float(), b.grad, rtol=5e-2, atol=5e-3)


def _ddp_worker(rank: int, world: int, port: int, z1, z2, y, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    b = z1.shape[0] // world
    sl = slice(rank * b, (rank + 1) * b)
    out = {}
    for kind in ("spread", "supcon", "simclr"):
        a1, a2 = z1[sl].clone().requires_grad_(True), z2[sl].clone().requires_grad_(True)
        z, yy, inst = stack_views([a1, a2], y[sl])
        loss = contrastive_loss(z, yy, inst, kind, tau=0.5, alpha=0.3, gather=True)
        loss.backward()
        out[kind] = (loss.item(), a1.grad.numpy().copy(), a2.grad.numpy().copy())
    # numpy arrays pickle by value: no shared-memory handle outlives this process
    queue.put((rank, out))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gathered_loss_equals_one_process():
    import torch.multiprocessing as mp

    g = torch.Generator().manual_seed(6)
    z1, z2, y = (
        torch.randn(8, 5, generator=g),
        torch.randn(8, 5, generator=g),
        torch.randint(3, (8,), generator=g),
    )
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, z1, z2, y, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    for kind in ("spread", "supcon", "simclr"):
        a1, a2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
        z, yy, inst = stack_views([a1, a2], y)
        ref = contrastive_loss(z, yy, inst, kind, tau=0.5, alpha=0.3)
        ref.backward()
        for rank in range(2):
            loss, g1, g2 = results[rank][kind]
            g1, g2 = torch.as_tensor(g1), torch.as_tensor(g2)
            assert loss == pytest.approx(ref.item(), rel=1e-5)
            sl = slice(rank * 4, (rank + 1) * 4)
            # DDP averages gradients over ranks, so each rank's gradient is world_size x its share
            torch.testing.assert_close(g1 / 2, a1.grad[sl], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(g2 / 2, a2.grad[sl], rtol=1e-4, atol=1e-6)
