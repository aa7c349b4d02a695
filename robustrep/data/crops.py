"""A fixed grid of square crops, cut on the device (CRL-TAC's augmentation set ``T``).

Crops are numbered row-major by their top-left corner on a ``stride`` grid of the image;
:func:`take_crops` gathers any of them for a batch from one ``unfold`` view, and
:func:`oracle_weights` marks the crops that cover the grid cell holding the most ink (Grid MNIST's
digit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from robustrep.errors import ConfigError


def crop_offsets(canvas: tuple[int, int], crop_size: int, stride: int) -> torch.Tensor:
    """``T x 2`` (top, left) pixel offsets of every crop, row-major over the ``stride`` grid."""
    h, w = canvas
    if crop_size > min(h, w):
        raise ConfigError(f"crop_size {crop_size} is larger than the {h} x {w} image")
    if stride < 1:
        raise ConfigError(f"crop_stride must be >= 1, got {stride}")
    rows = torch.arange(0, h - crop_size + 1, stride)
    cols = torch.arange(0, w - crop_size + 1, stride)
    return torch.cartesian_prod(rows, cols)


def take_crops(
    images: torch.Tensor, index: torch.Tensor, crop_size: int, stride: int
) -> torch.Tensor:
    """Crops ``index`` (B x k crop numbers, row-major on the stride grid) of ``images`` (B x C x H x
    W) as a ``B x k x C x crop_size x crop_size`` tensor, gathered from an ``unfold`` view in one
    op."""
    # B x C x nH x nW x c x c
    windows = images.unfold(2, crop_size, stride).unfold(3, crop_size, stride)
    n_cols = windows.shape[3]
    b = torch.arange(images.shape[0], device=images.device)[:, None].expand_as(index)
    # advanced indices split by a slice -> B x k x C x c x c
    return windows[b, :, index // n_cols, index % n_cols]


def oracle_weights(
    images: torch.Tensor, offsets: torch.Tensor, crop_size: int, grid: int = 3, n: int = 9
) -> torch.Tensor:
    """``B x T`` weights, uniform over the ``n`` crops with the largest overlap with the cell (of a
    ``grid`` x ``grid`` partition of the image) that holds the most ink (ties: lowest crop
    number)."""
    bsz, _, h, w = images.shape
    ch, cw = h // grid, w // grid
    ink = (
        images.float()
        .abs()
        .sum(1)[:, : ch * grid, : cw * grid]
        .reshape(bsz, grid, ch, grid, cw)
        .sum((2, 4))
        .flatten(1)
    )
    cell = ink.argmax(1)
    top, left = (cell // grid) * ch, (cell % grid) * cw  # B
    offsets = offsets.to(images.device)
    dy = (
        torch.minimum(offsets[None, :, 0] + crop_size, top[:, None] + ch)
        - torch.maximum(offsets[None, :, 0], top[:, None])
    ).clamp(min=0)
    dx = (
        torch.minimum(offsets[None, :, 1] + crop_size, left[:, None] + cw)
        - torch.maximum(offsets[None, :, 1], left[:, None])
    ).clamp(min=0)
    # stable tie-break
    overlap = (dy * dx).float() - 1e-6 * torch.arange(offsets.shape[0], device=images.device)
    keep = overlap.topk(min(n, offsets.shape[0]), dim=1).indices
    return torch.zeros(bsz, offsets.shape[0], device=images.device).scatter_(
        1, keep, 1.0 / keep.shape[1]
    )


#: How a representation pools the crops of an image (see :func:`pooling_weights`).
POOLINGS = ("policy", "top_n", "uniform", "oracle")


def pooling_weights(
    weighting: str,
    images: torch.Tensor,
    probs: torch.Tensor,
    offsets: torch.Tensor,
    crop_size: int,
    top_n: int = 8,
    grid: int = 3,
    n: int = 9,
) -> torch.Tensor:
    """``B x T`` weights that pool each image's crops: ``policy`` = the policy's ``P(t|x)``
    (``probs``); ``top_n`` = uniform over its ``top_n`` most probable crops; ``uniform`` = the plain
    mean; ``oracle`` = :func:`oracle_weights` (the crops covering the cell with the most ink)."""
    if weighting == "policy":
        return probs
    if weighting == "uniform":
        return torch.full_like(probs, 1.0 / probs.shape[1])
    if weighting == "top_n":
        keep = probs.topk(min(top_n, probs.shape[1]), dim=1).indices
        return torch.zeros_like(probs).scatter_(1, keep, 1.0 / keep.shape[1])
    if weighting == "oracle":
        return oracle_weights(images, offsets, crop_size, grid, n)
    raise ConfigError(f"unknown crop pooling {weighting!r}; choose one of {', '.join(POOLINGS)}")


def pool_crops(
    outputs: dict[str, torch.Tensor],
    variants: Sequence[tuple[str, str]],
    weights: Callable[[str], torch.Tensor],
) -> dict[tuple[str, str], torch.Tensor]:
    """``{(output, weighting): B x D}``: the per-crop ``outputs["h"]`` (``output == "head"``;
    L2-normalised after pooling) or ``outputs["f"]`` (B x T x D), averaged with the B x T
    ``weights(weighting)`` (e.g. :func:`pooling_weights`)."""
    result = {}
    for output, weighting in variants:
        w = weights(weighting)
        values = outputs["h"] if output == "head" else outputs["f"]
        pooled = torch.einsum("bt,btd->bd", w, values)
        result[(output, weighting)] = F.normalize(pooled, dim=1) if output == "head" else pooled
    return result
