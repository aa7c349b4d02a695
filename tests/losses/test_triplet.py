"""CIM's triplet losses against direct computations, and the sign convention."""

from __future__ import annotations

import pytest
import torch
from pytorch_msssim import ms_ssim as package_ms_ssim

from robustrep.losses.triplet import feature_triplet, gram_triplet, msssim_triplet


def _digit_like(size: int) -> torch.Tensor:
    """Three hand-made 1-channel images: a bar, a ring (the positive is another bar), a cross."""
    coords = torch.linspace(-1, 1, size)
    v, u = torch.meshgrid(coords, coords, indexing="ij")
    bar = (u.abs() < 0.2).float() * (v.abs() < 0.7).float()
    bar2 = ((u - 0.1).abs() < 0.2).float() * (v.abs() < 0.6).float()
    ring = ((u**2 + v**2).sqrt() - 0.5).abs().lt(0.15).float()
    return torch.stack([bar, bar2, ring])[:, None] * 0.9 + 0.05


def test_msssim_triplet_matches_package_computation():
    gen = torch.Generator().manual_seed(0)
    a, p, n = (torch.rand(4, 3, 64, 64, generator=gen) * 0.5 + 0.25 for _ in range(3))
    # positives close to the anchors
    p = (a + 0.1 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    ms_pos = package_ms_ssim(a, p, data_range=1.0, size_average=False, win_size=3)
    ms_neg = package_ms_ssim(a, n, data_range=1.0, size_average=False, win_size=3)
    expected = (ms_neg - ms_pos).mean()
    torch.testing.assert_close(msssim_triplet(a, p, n), expected, atol=1e-4, rtol=1e-4)
    assert msssim_triplet(a, p, n) < 0  # the anchors already look like their positives
    torch.testing.assert_close(
        msssim_triplet(a, p, n, margin=0.5),
        torch.relu(ms_neg - ms_pos + 0.5).mean(),
        atol=1e-4,
        rtol=1e-4,
    )


def test_loss_falls_as_the_anchor_moves_toward_the_positive():
    for size in (28, 64):
        bar, bar2, ring = _digit_like(size)
        pos, neg = bar2[None], ring[None]
        losses = []
        for t in torch.linspace(0, 1, 6):
            anchor = (t * bar + (1 - t) * ring)[None].requires_grad_(True)
            loss = msssim_triplet(anchor, pos, neg)
            losses.append(loss.item())
        assert all(b < a for a, b in zip(losses, losses[1:])), losses
        # A gradient step on the anchor lowers the loss (the sign is a loss, not a reward).
        anchor = (0.5 * bar + 0.5 * ring)[None].requires_grad_(True)
        loss = msssim_triplet(anchor, pos, neg)
        loss.backward()
        stepped = (anchor - 0.05 * anchor.grad / anchor.grad.abs().max()).clamp(0, 1)
        assert msssim_triplet(stepped, pos, neg) < loss


def test_gram_triplet_against_a_loop():
    gen = torch.Generator().manual_seed(1)
    a, p, n = (torch.rand(5, 3, 8, 8, generator=gen) for _ in range(3))
    expected = []
    for i in range(5):
        grams = [x[i].reshape(3, -1) @ x[i].reshape(3, -1).T / 64 for x in (a, p, n)]
        expected.append(((grams[0] - grams[1]) ** 2).sum() - ((grams[0] - grams[2]) ** 2).sum())
    torch.testing.assert_close(gram_triplet(a, p, n), torch.stack(expected).mean())
    assert gram_triplet(a, a, n) < 0 < gram_triplet(a, n, a)


def test_feature_triplet_against_a_loop():
    gen = torch.Generator().manual_seed(2)
    a, p, n = (torch.randn(6, 4, generator=gen) for _ in range(3))
    raw = torch.stack(
        [((a[i] - p[i]) ** 2).sum() - ((a[i] - n[i]) ** 2).sum() for i in range(6)]
    ).mean()
    torch.testing.assert_close(feature_triplet(a, p, n, normalize=False), raw)
    an, pn, nn_ = (x / x.norm(dim=1, keepdim=True) for x in (a, p, n))
    normed = torch.stack(
        [((an[i] - pn[i]) ** 2).sum() - ((an[i] - nn_[i]) ** 2).sum() for i in range(6)]
    ).mean()
    torch.testing.assert_close(feature_triplet(a, p, n), normed)
    assert feature_triplet(a, p, n, margin=0.2) >= 0


def test_one_sided_triplets_keep_one_term():
    """Table 5's "only x+" / "only x-": the mean of d_pos, or of -d_neg, for every triplet loss."""
    gen = torch.Generator().manual_seed(3)
    a, p, n = (torch.rand(4, 3, 64, 64, generator=gen) for _ in range(3))
    ms_pos = package_ms_ssim(a, p, data_range=1.0, size_average=False, win_size=3)
    ms_neg = package_ms_ssim(a, n, data_range=1.0, size_average=False, win_size=3)
    torch.testing.assert_close(
        msssim_triplet(a, p, None), (1 - ms_pos).mean(), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        msssim_triplet(a, None, n), -(1 - ms_neg).mean(), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        msssim_triplet(a, p, None) + msssim_triplet(a, None, n),
        msssim_triplet(a, p, n),
        atol=1e-5,
        rtol=1e-5,
    )
    for loss in (gram_triplet, feature_triplet):
        torch.testing.assert_close(loss(a, p, None) + loss(a, None, n), loss(a, p, n))
    assert feature_triplet(a, p, None) > 0 > feature_triplet(a, None, n)
    with pytest.raises(ValueError, match="margin"):
        msssim_triplet(a, p, None, margin=0.1)
