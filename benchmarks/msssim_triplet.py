"""CIM's MS-SSIM triplet scores (``robustrep.losses.msssim.ms_ssim_triplet_scores``) against two
references written here, forward + backward on ``MS(a, x+)`` and ``MS(a, x-)`` per anchor.

- **autograd, banded**: the same arithmetic (the statistics of both pairs through the Gaussian
  filter as products by banded matrices, ``avg_pool2d`` between scales) recorded by autograd -
  robustrep's implementation before the backward pass was written out. Target: ours no slower
  (``ours / autograd <= 1``).
- **the package's arithmetic**: two ``multiscale_ssim`` calls (``pytorch_msssim``'s ``_ssim``
  per scale, grouped convolutions), for scale.

Values and anchor gradients of all three are checked against the package's arithmetic in fp64
before timing. Settings:
CIM's Colored MNIST (128 x 3 x 28 x 28: window 7, 3 scales) and 64 px (32 x 3 x 64 x 64: the
package's window 3, 5 scales).

    .venv/bin/python benchmarks/msssim_triplet.py [--settings mnist28 rgb64] [--rounds 9]
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
import torch.nn.functional as F
from pytorch_msssim.ssim import _fspecial_gauss_1d
from timing import Target, alternate, per_round, verdict

from robustrep.losses.msssim import (
    STANDARD_WEIGHTS,
    _combine,
    _gaussian_filter,
    auto_scales,
    ms_ssim_triplet_scores,
    multiscale_ssim,
)

SETTINGS = {"mnist28": (128, 28), "rgb64": (32, 64)}


def autograd_banded(anchor, positive, negative, win_size, levels, c1=1e-4, c2=9e-4):
    """``(MS(a, x+), MS(a, x-))`` with every operation recorded by autograd."""
    w = torch.tensor(STANDARD_WEIGHTS[:levels])
    weights = w / w.sum()
    a, o = anchor, torch.stack([positive, negative])
    win = _fspecial_gauss_1d(win_size, 1.5)
    scores = []
    for level in range(levels):
        anchor_stats = _gaussian_filter(torch.cat([a[None], (a * a)[None], a * o]), win)
        other_stats = _gaussian_filter(torch.cat([o, o * o]), win)
        mu_a, e_aa, e_ao = anchor_stats[0], anchor_stats[1], anchor_stats[2:]
        mu_o, e_oo = other_stats[:2], other_stats[2:]
        cs = (2 * (e_ao - mu_a * mu_o) + c2) / (e_aa - mu_a.square() + e_oo - mu_o.square() + c2)
        if level < levels - 1:
            scores.append(cs.flatten(3).mean(-1))
            padding = [s % 2 for s in a.shape[2:]]
            a = F.avg_pool2d(a, kernel_size=2, padding=padding)
            o = F.avg_pool2d(o.flatten(0, 1), kernel_size=2, padding=padding).view(2, *a.shape)
        else:
            lum = (2 * mu_a * mu_o + c1) / (mu_a.square() + mu_o.square() + c1)
            scores.append((lum * cs).flatten(3).mean(-1))
    stacked = torch.stack(scores, 1)
    return _combine(list(stacked[0]), weights), _combine(list(stacked[1]), weights)


def package(anchor, positive, negative, win_size, levels):
    return tuple(multiscale_ssim(anchor, o, win_size, levels) for o in (positive, negative))


def ours(anchor, positive, negative, win_size, levels):
    return ms_ssim_triplet_scores(anchor, positive, negative, win_size=win_size, levels=levels)


def fwd_bwd(fn, a0, positive, negative, scales):
    """Scores and the anchor's gradient of ``mean(MS(a, x-) - MS(a, x+))``."""
    anchor = a0.clone().requires_grad_(True)
    s_pos, s_neg = fn(anchor, positive, negative, *scales)
    (s_neg - s_pos).mean().backward()
    return s_pos.detach(), s_neg.detach(), anchor.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch", type=int, default=None, help="override the settings' batch")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=3, help="calls per candidate per round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.settings:
        batch, side = SETTINGS[name]
        batch = args.batch or batch
        gen = torch.Generator().manual_seed(0)
        a0, negative = (torch.rand(batch, 3, side, side, generator=gen) for _ in range(2))
        positive = (a0 + 0.2 * torch.randn(a0.shape, generator=gen)).clamp(0, 1)
        scales = auto_scales(side)
        fns = {"ours": ours, "autograd": autograd_banded, "package": package}
        # every fp32 candidate against the package's arithmetic in fp64: scores and gradients
        # within 2e-3 of the largest entry (on noise images the fp32 gradients of all three lose
        # up to ~8e-4 of it to the cancellation in E[a^2] - mu^2)
        exact = fwd_bwd(package, *(t.double() for t in (a0, positive, negative)), scales)
        for k, fn in fns.items():
            for mine, truth in zip(fwd_bwd(fn, a0, positive, negative, scales), exact, strict=True):
                error = float((mine.double() - truth).abs().max() / truth.abs().max())
                assert error < 2e-3, f"{k} is {error:.2g} of the largest entry off fp64"
        inputs = (a0, positive, negative, scales)
        times = alternate(
            {k: functools.partial(fwd_bwd, fn, *inputs) for k, fn in fns.items()},
            rounds=args.rounds,
            calls=args.calls,
        )
        print(f"\n{name}: {batch} x 3 x {side} x {side}, window {scales[0]}, {scales[1]} scales")
        for k, t in times.items():
            print(f"  {k:<9} {1000 * statistics.median(t):8.1f} ms forward + backward")
        verdict(
            f"MS-SSIM triplet / autograd, {name}",
            per_round(times["ours"], times["autograd"]),
            Target(1.0),
        )


if __name__ == "__main__":
    main()
