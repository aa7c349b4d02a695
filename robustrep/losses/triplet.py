"""Triplet losses of CIM and its baselines (METHODS.md section 1), vectorised over the batch.

Each loss takes an anchor batch and one positive (same class) and one negative (other class) per
anchor and returns the mean over anchors of ``d(anchor, positive) - d(anchor, negative)``, or with a
``margin`` the hinge ``max(0, d_pos - d_neg + margin)``. Lower is better: the loss falls as the
anchor moves toward its positive and away from its negative. Passing ``None`` for the positive or
the negative keeps one side, for the paper's Table 5 ablations: "only x+" (the mean of ``d_pos``) or
"only x-" (the mean of ``-d_neg``); a margin needs both.

* :func:`msssim_triplet` (CIM): ``d = 1 - MS-SSIM``, i.e. ``MS(a, x-) - MS(a, x+)``. The paper's
  Eq. 8 prints the opposite sign, which would push the morphed image away from its positives;
  METHODS.md explains why we follow the text instead.
* :func:`gram_triplet` (CIMg): ``d`` = squared Frobenius distance between channel Gram matrices
  normalised by the number of pixels (style statistics).
* :func:`feature_triplet` (SCL-E2E): ``d`` = squared Euclidean distance between feature vectors,
  optionally L2-normalised first.

Image losses run in fp32 with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robustrep.losses.msssim import ms_ssim_triplet_scores


def _reduce(
    d_pos: torch.Tensor | None, d_neg: torch.Tensor | None, margin: float | None
) -> torch.Tensor:
    if (d_pos is None or d_neg is None) and margin is not None:
        raise ValueError("a triplet margin needs both a positive and a negative")
    if d_neg is None:
        return d_pos.mean()
    if d_pos is None:
        return -d_neg.mean()
    diff = d_pos - d_neg
    if margin is not None:
        diff = F.relu(diff + margin)
    return diff.mean()


def msssim_triplet(
    anchor: torch.Tensor,
    positive: torch.Tensor | None,
    negative: torch.Tensor | None,
    margin: float | None = None,
    data_range: float = 1.0,
    win_size: int | None = None,
    levels: int | None = None,
) -> torch.Tensor:
    """CIM's triplet loss ``mean(MS(a, x-) - MS(a, x+))`` on images N x C x H x W in
    ``[0, data_range]``.

    Args:
        anchor: the morphed images ``psi(x)``.
        positive, negative: one same-class and one other-class image per anchor (either may be
            None: that side is left out and not computed).
        margin: None (default, the plain difference, in [-1, 1]) or a hinge margin.
        data_range: value range of the images.
        win_size, levels: forwarded to :func:`robustrep.losses.msssim.ms_ssim` (None = chosen from
            the image size).
    """
    # Both pairs in one pass, fp32 with autocast off (see ms_ssim_triplet_scores).
    sim_pos, sim_neg = ms_ssim_triplet_scores(
        anchor, positive, negative, data_range=data_range, win_size=win_size, levels=levels
    )
    return _reduce(
        None if sim_pos is None else 1.0 - sim_pos,
        None if sim_neg is None else 1.0 - sim_neg,
        margin,
    )


def gram_matrix(images: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrices N x C x C of images N x C x H x W, divided by ``H * W``."""
    flat = images.flatten(2)
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def gram_triplet(
    anchor: torch.Tensor,
    positive: torch.Tensor | None,
    negative: torch.Tensor | None,
    margin: float | None = None,
) -> torch.Tensor:
    """CIMg's triplet loss on normalised channel Gram matrices (squared Frobenius distances)."""
    with torch.autocast(device_type=anchor.device.type, enabled=False):
        ga = gram_matrix(anchor.float())
        d_pos, d_neg = (
            (ga - gram_matrix(o.float())).square().flatten(1).sum(1) if o is not None else None
            for o in (positive, negative)
        )
        return _reduce(d_pos, d_neg, margin)


def feature_triplet(
    anchor: torch.Tensor,
    positive: torch.Tensor | None,
    negative: torch.Tensor | None,
    margin: float | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """SCL-E2E's triplet ``||E(x)-E(x+)||^2 - ||E(x)-E(x-)||^2`` on feature vectors N x D.

    Args:
        normalize: L2-normalise the features first (default). Without it and without a margin the
            loss is unbounded below (the encoder can scale its features up), so turn it off only
            together with a ``margin``.
        positive, negative: either may be None (one-sided ablation).
    """

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.float().flatten(1)
        return F.normalize(x, dim=1) if normalize else x

    with torch.autocast(device_type=anchor.device.type, enabled=False):
        a = prepare(anchor)
        d_pos, d_neg = (
            (a - prepare(o)).square().sum(1) if o is not None else None
            for o in (positive, negative)
        )
        return _reduce(d_pos, d_neg, margin)


def split_like(
    stacked: torch.Tensor, positive: torch.Tensor | None, negative: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Undo ``torch.cat`` of the present ones of ``(positive, negative)`` (None stays None): the
    sides of a triplet computed in one pass."""
    if positive is not None and negative is not None:
        return stacked.chunk(2)  # type: ignore[return-value]
    return (stacked, None) if positive is not None else (None, stacked)
