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
fp32 with autocast disabled, whatever the caller's precision.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim as _package_ms_ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

#: The five scale weights of Wang et al. (2003), as used by ``pytorch_msssim``.
STANDARD_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _combine(scores: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Weighted geometric mean over scales of per-channel scores (levels x N x C), as the package
    does it (negative scores ReLU'd to 0), then the mean over channels."""
    stacked = torch.relu(torch.stack(scores))
    return torch.prod(stacked ** weights.view(-1, 1, 1), dim=0).mean(1)


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
        Tensor of shape N: the score of each image pair, averaged over channels, in fp32.
    """
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            "need two N x C x H x W tensors of the same shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if win_size % 2 != 1:
        raise ValueError(f"win_size must be odd, got {win_size}")
    if weights is None:
        w = torch.tensor(STANDARD_WEIGHTS[:levels], dtype=torch.float32)
        weights_t = w / w.sum()
    else:
        if len(weights) != levels:
            raise ValueError(f"got {len(weights)} weights for {levels} levels")
        weights_t = torch.tensor(list(weights), dtype=torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        win = _fspecial_gauss_1d(win_size, win_sigma).repeat([x.shape[1], 1, 1, 1]).to(x.device)
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
        return _combine(scores, weights_t.to(x.device))


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


@functools.lru_cache(maxsize=64)
def _cached_band(size: int, taps: tuple[float, ...], device: torch.device) -> torch.Tensor:
    k = len(taps)
    rows = torch.arange(size - k + 1, device=device)[:, None]
    band = torch.zeros(size - k + 1, size, device=device)
    band[rows, rows + torch.arange(k, device=device)] = torch.tensor(taps, device=device)
    return band


def _band(size: int, win_1d: torch.Tensor) -> torch.Tensor:
    """The ``(size - k + 1) x size`` matrix of a 'valid' 1-D convolution with a ``k``-tap window
    (built once per size, window and device)."""
    return _cached_band(size, tuple(win_1d.flatten().tolist()), win_1d.device)


def _gaussian_filter(stack: torch.Tensor, win_1d: torch.Tensor) -> torch.Tensor:
    """The package's ``gaussian_filter`` over the last two dimensions of ``stack`` (valid padding,
    the height first; a side shorter than the window is left unfiltered, as there), as two matrix
    products by banded matrices (2-3x faster than its grouped convolutions on a CPU)."""
    height, width = stack.shape[-2:]
    k = win_1d.numel()
    if height >= k:
        stack = torch.matmul(_band(height, win_1d), stack)
    if width >= k:
        stack = torch.matmul(stack, _band(width, win_1d).T)
    return stack


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

    The same score as :func:`ms_ssim` on the two pairs (the tests check it), computed faster: the
    local statistics a triplet needs (``a, p, n, a^2, p^2, n^2, a p, a n``) go through the
    package's Gaussian filter in one batched pass per scale (:func:`_filter_groups`), and the
    anchor's statistics are shared by both pairs. ``positive`` or ``negative`` may be None (the
    one-sided ablations): its score is then neither computed nor returned.
    """
    others = [o for o in (positive, negative) if o is not None]
    if not others:
        raise ValueError("ms_ssim_triplet_scores needs a positive or a negative batch")
    side = min(anchor.shape[-2:])
    auto_win, auto_levels = auto_scales(side)
    win_size = win_size if win_size is not None else auto_win
    if levels is None:
        levels = auto_levels if win_size == auto_win else small_image_scales(side)[1]
    w = torch.tensor(STANDARD_WEIGHTS[:levels], dtype=torch.float32)
    weights = (w / w.sum()).to(anchor.device)
    c1, c2 = (K[0] * data_range) ** 2, (K[1] * data_range) ** 2
    k = len(others)
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a, o = anchor.float(), torch.stack([t.float() for t in others])  # o: k x N x C x H x W
        win = _fspecial_gauss_1d(win_size, win_sigma).to(a.device)
        scores: list[list[torch.Tensor]] = [[] for _ in others]
        for level in range(levels):
            # The statistics of the constant images (raw x+/x-) are filtered apart from the
            # anchor's, so the backward pass only runs through the ones that need a gradient; the
            # positive and the negative go through every step together (a leading axis of k).
            anchor_stats = _gaussian_filter(torch.cat([a[None], (a * a)[None], a * o]), win)
            other_stats = _gaussian_filter(torch.cat([o, o * o]), win)
            mu_a, e_aa, e_ao = anchor_stats[0], anchor_stats[1], anchor_stats[2:]
            mu_o, e_oo = other_stats[:k], other_stats[k:]
            cs_map = (2 * (e_ao - mu_a * mu_o) + c2) / (
                e_aa - mu_a.square() + e_oo - mu_o.square() + c2
            )
            if level < levels - 1:
                score = cs_map.flatten(3).mean(-1)
            else:
                lum = (2 * mu_a * mu_o + c1) / (mu_a.square() + mu_o.square() + c1)
                score = (lum * cs_map).flatten(3).mean(-1)
            for j, out in enumerate(scores):
                out.append(score[j])
            if level < levels - 1:
                padding = [s % 2 for s in a.shape[2:]]
                a = F.avg_pool2d(a, kernel_size=2, padding=padding)
                pooled = F.avg_pool2d(o.flatten(0, 1), kernel_size=2, padding=padding)
                o = pooled.view(k, *a.shape)
        combined = iter([_combine(s, weights) for s in scores])
        return (next(combined) if positive is not None else None), (
            next(combined) if negative is not None else None
        )
