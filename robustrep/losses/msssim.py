"""Multi-scale SSIM that works from 8 px up, built on ``pytorch_msssim``.

``pytorch_msssim.ms_ssim`` always downsamples four times and asserts
``min(H, W) > (win_size - 1) * 16``: at 64 px only a 3-px window runs and at 28-32 px no window
does (METHODS.md section 1). :func:`ms_ssim` therefore follows one rule at every size:

* **when the package's own ``ms_ssim`` runs** (``min(H, W) > 32``), call it with the largest odd
  window ``<= 11`` that satisfies its assertion (3 at 33-64 px, 5 up to 96 px, 7 up to 128 px,
  9 up to 160 px, 11 above) and its five standard scale weights;
* **below that** (8-32 px), build the same score from the package's single-scale ``_ssim``
  (which returns the SSIM and the contrast-structure term of one scale): contrast-structure at
  every scale but the last, full SSIM at the last, 2x2 average pooling between scales, negative
  scores set to 0 and a weighted geometric mean — exactly the package's arithmetic. The window is
  the largest of 7, 5, 3 that fits at least two scales (``min(H, W) >= 2 * win``), and the number of
  scales is the largest (at most 5) whose smallest side is still ``>= win`` — the same "the coarsest
  scale must hold one window" rule the package's assertion encodes. The weights are the first
  ``levels`` standard weights, renormalised to sum to one.

At 8 px this gives window 3 over 2 scales, at 16 px window 7 over 2, at 28 and 32 px window 7 over
3 scales. ``multiscale_ssim`` with ``win_size=3, levels=5`` reproduces ``pytorch_msssim.ms_ssim``
(window 3, standard weights) where both run; the tests check it.

Inputs must be in ``[0, data_range]`` (robustrep's images are in [0, 1]). The computation runs in
fp32 with autocast disabled, whatever the caller's precision (``multiscale_ssim`` and the triplet
keep fp64 inputs in fp64: the tests' precise references).

CIM's triplet (:func:`ms_ssim_triplet_scores`) is one autograd function with its backward written
out (:class:`_TripletLevelScores`); ``benchmarks/msssim_triplet.py`` times it against the same
arithmetic recorded by autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as _package_ms_ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim
from torch.autograd.function import once_differentiable

#: The five scale weights of Wang et al. (2003), as used by ``pytorch_msssim``.
STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _combine(scores: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Weighted geometric mean over scales of per-channel scores (levels x N x C), as the package
    does it (negative scores ReLU'd to 0), then the mean over channels."""
    stacked = torch.relu(torch.stack(scores))
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (the tests' precise references)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def package_window(side: int) -> int | None:
    """Largest odd window ``<= 11`` for which ``pytorch_msssim.ms_ssim`` runs at ``side`` px, or
    None.
    """
    for win in (11, 9, 7, 5, 3):
        if side > (win - 1) * 16:
            return win
    return None


def small_image_scales(side: int) -> tuple[int, int]:
    """``(win_size, levels)`` used below the package's range (see the module docstring)."""
    if side < 3:
        raise ValueError(
            f"MS-SSIM needs images of at least 3 x 3 pixels, got a smallest side of {side}"
        )
    win = next((w for w in (7, 5, 3) if side >= 2 * w), 3)
    levels = 1
    while levels < 5 and side // 2**levels >= win:
        levels += 1
    return win, levels


def multiscale_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    win_size: int,
    levels: int,
    weights: Sequence[float] | None = None,
    data_range: float = 1.0,
    win_sigma: float = 1.5,
) -> torch.Tensor:
    """MS-SSIM per image (N) with an explicit window and number of scales.

    Args:
        x, y: images N x C x H x W in ``[0, data_range]``.
        win_size: odd Gaussian window size.
        levels: number of scales (1 = single-scale SSIM).
        weights: one weight per scale; default the first ``levels`` standard weights renormalised
            to sum to one (exactly the standard weights when ``levels = 5``).
        data_range: the value range of the images.
        win_sigma: standard deviation of the Gaussian window.

    Returns:
        Tensor of shape N: the score of each image pair, averaged over channels, in fp32 (fp64
        for fp64 inputs).
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            "need two N x C x H x W tensors of the same shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    dtype = _compute_dtype(x)
    if weights is None:
        w = torch.tensor(STANDARD_WEIGHTS[:levels], dtype=dtype)
        weights_t = w / w.sum()
    else:
        if len(weights) != levels:
            raise ValueError(f"got {len(weights)} weights for {levels} levels")
        weights_t = torch.tensor(list(weights), dtype=dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.to(dtype), y.to(dtype)
        win = _fspecial_gauss_1d(win_size, win_sigma).repeat([x.shape[1], 1, 1, 1]).to(x)
        scores = []
        for level in range(levels):
            ssim_c, cs_c = _ssim(x, y, data_range=data_range, win=win, size_average=False)
            if level < levels - 1:
                scores.append(cs_c)
                padding = [s % 2 for s in x.shape[2:]]
                x = F.avg_pool2d(x, kernel_size=2, padding=padding)
                y = F.avg_pool2d(y, kernel_size=2, padding=padding)
            else:
                scores.append(ssim_c)
        return _combine(scores, weights_t.to(x))


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int | None = None,
    levels: int | None = None,
) -> torch.Tensor:
    """MS-SSIM per image (N) at any size >= 3 px, scales and window chosen from the image size.

    Args:
        x, y: images N x C x H x W in ``[0, data_range]``.
        data_range: the value range of the images (1.0 for robustrep's images).
        win_size: force a window size (odd); None = the rule in the module docstring.
        levels: force the number of scales; None = the rule in the module docstring. Giving either
            uses :func:`multiscale_ssim` (the package's ``ms_ssim`` only with both left None).

    Returns:
        Tensor of shape N in fp32; 1 for identical images.
    """
    side = min(x.shape[-2:])
    if win_size is None and levels is None:
        win = package_window(side)
        if win is not None:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return _package_ms_ssim(
                    x.float(), y.float(), data_range=data_range, size_average=False, win_size=win
                )
    auto_win, auto_levels = small_image_scales(side)
    win = win_size if win_size is not None else auto_win
    if levels is None:
        levels = 1
        while levels < 5 and side // 2**levels >= win:
            levels += 1
    return multiscale_ssim(x, y, win_size=win, levels=levels, data_range=data_range)


@functools.lru_cache(maxsize=128)
def _cached_band(
    size: int, taps: tuple[float, ...], device: torch.device, dtype: torch.dtype, transposed: bool
) -> torch.Tensor:
    k = len(taps)
    rows = torch.arange(size - k + 1, device=device)[:, None]
    band = torch.zeros(size - k + 1, size, device=device, dtype=dtype)
    band[rows, rows + torch.arange(k, device=device)] = torch.tensor(taps, dtype=dtype)
    return band.T.contiguous() if transposed else band


def _band(
    size: int, win_1d: torch.Tensor, dtype: torch.dtype = torch.float32, transposed: bool = False
) -> torch.Tensor:
    """The ``(size - k + 1) x size`` matrix of a 'valid' 1-D convolution with a ``k``-tap window,
    or (``transposed``) its transpose stored contiguously: a transposed view as a matrix-product
    operand takes a slower BLAS path on some CPUs. Built once per size, window, device and dtype."""
    return _cached_band(size, tuple(win_1d.flatten().tolist()), win_1d.device, dtype, transposed)


def _gaussian_filter(stack: torch.Tensor, win_1d: torch.Tensor) -> torch.Tensor:
    """The package's ``gaussian_filter`` over the last two dimensions of ``stack`` (valid padding,
    the height first; a side shorter than the window is left unfiltered, as there), as two matrix
    products by banded matrices (2-3x faster than its grouped convolutions on a CPU)."""
    height, width = stack.shape[-2:]
    k = win_1d.numel()
    if height >= k:
        stack = torch.matmul(_band(height, win_1d, stack.dtype), stack)
    if width >= k:
        stack = torch.matmul(stack, _band(width, win_1d, stack.dtype, transposed=True))
    return stack


def _gaussian_filter_transposed(
    stack: torch.Tensor, win_1d: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """The adjoint of :func:`_gaussian_filter` for inputs of ``height x width``: maps filtered maps
    back to the input grid (the backward pass of the filter)."""
    k = win_1d.numel()
    if height >= k:
        stack = torch.matmul(_band(height, win_1d, stack.dtype, transposed=True), stack)
    if width >= k:
        stack = torch.matmul(stack, _band(width, win_1d, stack.dtype))
    return stack


def _pool_padding(x: torch.Tensor) -> tuple[int, int]:
    """The package's padding between scales: one pixel on both sides of an odd side."""
    return x.shape[-2] % 2, x.shape[-1] % 2


def _pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.avg_pool2d(x, 2, padding=_pool_padding(x))`` (zero padding counted), as four strided
    slices: 2-3x faster on a CPU, the same sum in the same order."""
    ph, pw = _pool_padding(x)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    oh, ow = x.shape[-2] // 2, x.shape[-1] // 2
    x = x[..., : 2 * oh, : 2 * ow]
    total = x[..., 0::2, 0::2] + x[..., 0::2, 1::2]
    return total.add_(x[..., 1::2, 0::2]).add_(x[..., 1::2, 1::2]).div_(4)


def _unpool2(grad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The adjoint of :func:`_pool2` for an input of ``height x width``."""
    oh, ow = grad.shape[-2:]
    spread = grad[..., :, None, :, None].expand(*grad.shape[:-2], oh, 2, ow, 2) / 4
    ph, pw = height % 2, width % 2
    return spread.reshape(*grad.shape[:-2], 2 * oh, 2 * ow)[..., ph : ph + height, pw : pw + width]


class _TripletLevelScores(torch.autograd.Function):
    """Per-scale scores of ``(anchor, other_j)`` pairs, ``k x levels x N x C``: contrast-structure
    at every scale but the last, full SSIM at the last (before the ReLU and the geometric mean).

    The local statistics of all pairs (``a, a^2, a o_j, o_j, o_j^2``) go through the Gaussian filter
    in one batched pass per scale, the anchor's shared by every pair. The backward pass is written
    out (the derivative of each map with respect to the filtered statistics, then one transposed
    filter pass per scale): a fraction of the operations autograd records for the same
    arithmetic. Gradients flow to the anchor only; ``others`` are constants (raw ``x+``/``x-``).
    """

    @staticmethod
    def forward(ctx, a, others, win, levels, c1, c2):
        k = others.shape[0]
        saved, scores = [], []
        for level in range(levels):
            stats = a.new_empty((2 + 3 * k, *a.shape))
            stats[0] = a
            torch.mul(a, a, out=stats[1])
            torch.mul(a, others, out=stats[2 : 2 + k])
            stats[2 + k : 2 + 2 * k] = others
            torch.mul(others, others, out=stats[2 + 2 * k :])
            stats = _gaussian_filter(stats, win)
            mu_a, e_aa, e_ao = stats[0], stats[1], stats[2 : 2 + k]
            mu_o, e_oo = stats[2 + k : 2 + 2 * k], stats[2 + 2 * k :]
            # in place where a statistic is not needed again (fewer passes over the maps)
            mu_a2, mu_o2, mu_ao = mu_a * mu_a, mu_o * mu_o, mu_a * mu_o
            den = e_oo.sub_(mu_o2).add_(e_aa.sub_(mu_a2).add_(c2))  # var_a + var_o + c2
            cs = e_ao.sub_(mu_ao).mul_(2).add_(c2).div_(den)
            saved += [a, others, mu_a, mu_o, cs, den]
            if level < levels - 1:
                scores.append(cs.mean((-2, -1)))
                a, others = _pool2(a), _pool2(others)
            else:
                lum_den = mu_o2.add_(mu_a2).add_(c1)
                lum = mu_ao.mul_(2).add_(c1).div_(lum_den)
                scores.append((lum * cs).mean((-2, -1)))
                saved += [lum, lum_den]
        ctx.save_for_backward(*saved)
        ctx.win, ctx.levels = win, levels
        return torch.stack(scores, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        saved, levels = ctx.saved_tensors, ctx.levels
        grad_a = None
        for level in reversed(range(levels)):
            a, others, mu_a, mu_o, cs, den = saved[6 * level : 6 * level + 6]
            per_pixel = grad[:, level, :, :, None, None] / (cs.shape[-2] * cs.shape[-1])
            # back: the derivatives of the map with respect to mu_a, E[a^2] and E[a o_j]
            back = cs.new_empty((2 + others.shape[0], *cs.shape[1:]))
            d_e_ao = torch.div(2 * per_pixel, den, out=back[2:])
            d_mu_a = (mu_a * cs).sub_(mu_o)
            if level == levels - 1:
                lum, lum_den = saved[6 * levels :]
                d_e_ao.mul_(lum)
                d_mu_a.mul_(d_e_ao).add_(2 * per_pixel * cs * (mu_o - mu_a * lum) / lum_den)
            else:
                d_mu_a.mul_(d_e_ao)
            torch.sum(d_mu_a, 0, out=back[0])
            torch.sum(torch.mul(d_e_ao, cs, out=d_mu_a), 0, out=back[1]).div_(-2)
            back = _gaussian_filter_transposed(back, ctx.win, *a.shape[-2:])
            grad_level = (others * back[2:]).sum(0).add_(back[0]).addcmul_(a, back[1], value=2)
            if grad_a is not None:
                grad_level += _unpool2(grad_a, *a.shape[-2:])
            grad_a = grad_level
        return grad_a, None, None, None, None, None


def auto_scales(side: int) -> tuple[int, int]:
    """``(win_size, levels)`` :func:`ms_ssim` uses at ``side`` px (the package's 5 scales above 32
    px).
    """
    win = package_window(side)
    return (win, 5) if win is not None else small_image_scales(side)


def ms_ssim_triplet_scores(
    anchor: torch.Tensor,
    positive: torch.Tensor | None,
    negative: torch.Tensor | None,
    data_range: float = 1.0,
    win_size: int | None = None,
    levels: int | None = None,
    win_sigma: float = 1.5,
    K: tuple[float, float] = (0.01, 0.03),
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(MS(anchor, positive), MS(anchor, negative))`` per anchor, in one pass.

    The same score as :func:`ms_ssim` on the two pairs (the tests check values and gradients),
    computed faster: the statistics of both pairs share one filter pass per scale and the
    anchor's (see :class:`_TripletLevelScores`). ``positive`` or ``negative`` may be None (the
    one-sided ablations): its score is then neither computed nor returned. The gradient reaches
    the anchor only. Runs in fp32 (fp64 inputs stay fp64) with autocast disabled.
    """
    others = [o for o in (positive, negative) if o is not None]
    if not others:
        raise ValueError("ms_ssim_triplet_scores needs a positive or a negative batch")
    side = min(anchor.shape[-2:])
    auto_win, auto_levels = auto_scales(side)
    win_size = win_size if win_size is not None else auto_win
    if levels is None:
        levels = auto_levels if win_size == auto_win else small_image_scales(side)[1]
    dtype = _compute_dtype(anchor)
    w = torch.tensor(STANDARD_WEIGHTS[:levels], dtype=dtype)
    weights = (w / w.sum()).to(anchor.device)
    c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a, o = anchor.to(dtype), torch.stack([t.to(dtype) for t in others])
        win = _fspecial_gauss_1d(win_size, win_sigma).to(a.device)
        per_level = _TripletLevelScores.apply(a, o, win, levels, c1, c2)  # k x levels x N x C
        combined = iter([_combine(list(scores), weights) for scores in per_level])
        return (next(combined) if positive is not None else None), (
            next(combined) if negative is not None else None
        )
