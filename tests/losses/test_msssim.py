"""MS-SSIM at every image size: agreement with pytorch_msssim where both run, and behaviour
below.
"""

from __future__ import annotations

import pytest
import torch
from pytorch_msssim import ms_ssim as package_ms_ssim
from pytorch_msssim import ssim as package_ssim

from robustrep.losses.msssim import (
    _pool2,
    auto_scales,
    ms_ssim,
    ms_ssim_triplet_scores,
    multiscale_ssim,
    package_window,
    small_image_scales,
)


def _pair(
    n: int, c: int, size: int, noise: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # Smooth images (upsampled noise) so SSIM is far from 0 and 1.
    base = torch.nn.functional.interpolate(
        torch.rand(n, c, max(2, size // 4), max(2, size // 4), generator=gen),
        size=(size, size),
        mode="bilinear",
    )
    other = (base + noise * torch.randn(base.shape, generator=gen)).clamp(0, 1)
    return base, other


@pytest.mark.parametrize("size", [48, 64, 100])
def test_auto_path_equals_package_where_it_runs(size):
    x, y = _pair(4, 3, size, 0.15)
    win = package_window(size)
    expected = package_ms_ssim(x, y, data_range=1.0, size_average=False, win_size=win)
    torch.testing.assert_close(ms_ssim(x, y), expected)


@pytest.mark.parametrize("size", [64, 80])
def test_small_image_construction_equals_package_ms_ssim(size):
    """The multi-scale score built from the single-scale pieces is the package's MS-SSIM."""
    x, y = _pair(3, 3, size, 0.2, seed=1)
    expected = package_ms_ssim(x, y, data_range=1.0, size_average=False, win_size=3)
    torch.testing.assert_close(
        multiscale_ssim(x, y, win_size=3, levels=5), expected, atol=1e-5, rtol=1e-5
    )


def test_one_scale_is_the_package_ssim():
    x, y = _pair(4, 1, 28, 0.2, seed=2)
    expected = package_ssim(x, y, data_range=1.0, size_average=False, win_size=7)
    torch.testing.assert_close(multiscale_ssim(x, y, win_size=7, levels=1), expected)


def test_scale_rule_for_small_images():
    assert small_image_scales(8) == (3, 2)
    assert small_image_scales(16) == (7, 2)
    assert small_image_scales(28) == (7, 3)
    assert small_image_scales(32) == (7, 3)
    assert package_window(32) is None and package_window(64) == 3 and package_window(200) == 11


def test_triplet_under_bf16_autocast_is_an_fp32_island_with_gradients():
    """A bf16 anchor under autocast: fp32 scores equal to fp32 arithmetic on the bf16 values, and
    the anchor's gradient comes back in bf16, equal to the fp32 gradient rounded."""
    x, p = _pair(3, 3, 28, 0.2)
    n = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
    anchor = x.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s_pos, s_neg = ms_ssim_triplet_scores(anchor, p.bfloat16(), n.bfloat16())
    (s_neg - s_pos).sum().backward()
    reference = x.bfloat16().float().requires_grad_(True)
    r_pos, r_neg = ms_ssim_triplet_scores(reference, p.bfloat16().float(), n.bfloat16().float())
    (r_neg - r_pos).sum().backward()
    assert s_pos.dtype == torch.float32 and anchor.grad.dtype == torch.bfloat16
    torch.testing.assert_close(s_pos, r_pos)
    torch.testing.assert_close(anchor.grad, reference.grad.bfloat16())


@pytest.mark.parametrize("size", [8, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_works_at_small_sizes(size, channels):
    x, _ = _pair(5, channels, size, 0.0, seed=3)
    assert torch.allclose(ms_ssim(x, x), torch.ones(5), atol=1e-5)
    scores = []
    for noise in (0.05, 0.15, 0.4):
        _, y = _pair(5, channels, size, noise, seed=3)
        scores.append(ms_ssim(x, y).mean().item())
    assert 1.0 > scores[0] > scores[1] > scores[2] >= 0.0  # more noise, less similar
    a = x.clone().requires_grad_(True)
    _, y = _pair(5, channels, size, 0.05, seed=3)
    out = ms_ssim(a, y)
    assert out.shape == (5,) and out.dtype == torch.float32
    out.sum().backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_runs_in_fp32_under_autocast():
    x, y = _pair(2, 3, 32, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ms_ssim(x.bfloat16(), y.bfloat16())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, ms_ssim(x.bfloat16().float(), y.bfloat16().float()))


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_triplet_scores_equal_two_ms_ssim_calls(size):
    """The fused triplet computation is the same score as ms_ssim on each pair (also on noise, where
    some contrast-structure terms are negative and get ReLU'd to 0 as in the package)."""
    gen = torch.Generator().manual_seed(size)
    a, n = torch.rand(6, 3, size, size, generator=gen), torch.rand(6, 3, size, size, generator=gen)
    p = (a + 0.2 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    s_pos, s_neg = ms_ssim_triplet_scores(a, p, n)
    torch.testing.assert_close(s_pos, ms_ssim(a, p), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s_neg, ms_ssim(a, n), atol=1e-4, rtol=1e-4)
    if size == 64:
        torch.testing.assert_close(
            s_neg,
            package_ms_ssim(a, n, data_range=1.0, size_average=False, win_size=3),
            atol=1e-4,
            rtol=1e-4,
        )


@pytest.mark.parametrize(
    ("size", "scales"), [(28, {}), (8, {}), (13, {}), (64, {}), (20, {"win_size": 3, "levels": 3})]
)
def test_triplet_gradients_equal_autograd_through_the_package_arithmetic(size, scales):
    """The written-out backward pass gives autograd's gradient of the naive reference (two
    multiscale_ssim calls, i.e. the package's _ssim per scale and avg_pool2d between scales),
    odd sizes (padded pooling) included; the one-sided form too. In fp64 they agree to 1e-10; in
    fp32 ours is within 2e-6 of the fp64 gradient (max |gradient| 0.008-0.3 here; the fp32 naive
    reference and the former autograd version of ours are 1e-7 to 8e-7 away from it).
    """
    gen = torch.Generator().manual_seed(size)
    a0 = torch.rand(4, 3, size, size, generator=gen, dtype=torch.float64)
    p = (a0 + 0.1 * torch.randn(a0.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    n = torch.rand(4, 3, size, size, generator=gen, dtype=torch.float64)
    win, levels = scales.get("win_size"), scales.get("levels")
    if win is None:
        win, levels = auto_scales(size)
    weights = torch.tensor([0.3, -1.7, 0.5, 0.9], dtype=torch.float64)

    def ours(dtype, positive, negative):
        anchor = a0.to(dtype, copy=True).requires_grad_(True)
        s_pos, s_neg = ms_ssim_triplet_scores(
            anchor, positive.to(dtype), None if negative is None else negative.to(dtype), **scales
        )
        loss = -2 * s_pos if s_neg is None else s_neg - 2 * s_pos
        (weights.to(dtype) * loss).sum().backward()
        return s_pos.double(), anchor.grad.double()

    for negative in (n, None):
        naive = a0.clone().requires_grad_(True)
        r_pos = multiscale_ssim(naive, p, win_size=win, levels=levels)
        loss = -2 * r_pos
        if negative is not None:
            loss = loss + multiscale_ssim(naive, negative, win_size=win, levels=levels)
        (weights * loss).sum().backward()
        s_pos, grad = ours(torch.float64, p, negative)
        torch.testing.assert_close(s_pos, r_pos.detach(), atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(grad, naive.grad, atol=1e-10, rtol=1e-8)
        s_pos, grad = ours(torch.float32, p, negative)
        torch.testing.assert_close(s_pos, r_pos.detach(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(grad, naive.grad, atol=2e-6, rtol=1e-5)


def test_triplet_backward_passes_gradcheck_in_double_precision():
    """Finite differences agree with the written-out backward (fp64 inputs stay fp64), at an odd
    size where the pooling pads."""
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 2, 13, 11, dtype=torch.float64, generator=gen, requires_grad=True)
    p, n = (torch.rand(2, 2, 13, 11, dtype=torch.float64, generator=gen) for _ in range(2))
    assert torch.autograd.gradcheck(
        lambda x: torch.cat(ms_ssim_triplet_scores(x, p, n, win_size=3, levels=3)), (a,)
    )


@pytest.mark.parametrize("size", [(28, 28), (7, 7), (14, 9)])
def test_strided_pooling_is_avg_pool2d_with_the_package_padding(size):
    x = torch.rand(3, 2, *size, generator=torch.Generator().manual_seed(1))
    padding = [s % 2 for s in size]
    expected = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=padding)
    torch.testing.assert_close(_pool2(x), expected, atol=1e-7, rtol=0)


def test_anticorrelated_images_score_zero_like_the_package():
    """A negative contrast-structure term is set to 0 (the package's ReLU), so the score is 0."""
    x, _ = _pair(2, 1, 64, 0.0, seed=5)
    inverted = 1.0 - x
    assert torch.all(ms_ssim(x, inverted) == 0)
    assert torch.all(
        package_ms_ssim(x, inverted, data_range=1.0, size_average=False, win_size=3) == 0
    )
    assert torch.all(
        multiscale_ssim(x[..., :28, :28], inverted[..., :28, :28], win_size=7, levels=3) == 0
    )
