"""Vectorised contrastive losses vs a naive per-anchor Python loop (like the public thanos-code).

Prints, for batch sizes 256 and 1024 (2B = 512 / 2048 rows, d = 128), the time of forward +
backward of each implementation and the speed-up, and checks that both give the same value.

    .venv/bin/python benchmarks/contrastive_losses.py [--batch 256 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from robustrep.losses.contrastive import contrastive_loss, stack_views


def naive_loop(
    z: torch.Tensor,
    labels: torch.Tensor,
    instance: torch.Tensor,
    loss: str,
    tau: float,
    alpha: float,
) -> torch.Tensor:
    """One anchor at a time with boolean indexing and logsumexps (the structure of the public
    code).
    """
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    idx = torch.arange(n)
    att, rep, sup = [], [], []
    for i in range(n):
        s = z @ z[i] / tau
        others = idx != i
        pos = (labels == labels[i]) & others
        neg = labels != labels[i]
        aug = (instance == instance[i]) & others
        if loss in ("spread", "attract"):
            lse_neg = torch.logsumexp(s[neg], 0) if neg.any() else s.new_tensor(-1e9)
            att.append((torch.logaddexp(s[pos], lse_neg) - s[pos]).mean())
        if loss == "spread":
            rep.append((torch.logsumexp(s[pos], 0) - s[aug]).mean())
        if loss == "supcon":
            sup.append((torch.logsumexp(s[others], 0) - s[pos]).mean())
    if loss == "supcon":
        return torch.stack(sup).mean()
    if loss == "attract":
        return torch.stack(att).mean()
    return alpha * torch.stack(att).mean() + (1 - alpha) * torch.stack(rep).mean()


def timed(fn, repeats: int) -> tuple[float, float]:
    best, value = float("inf"), 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        out.backward()
        best = min(best, time.perf_counter() - t0)
        value = out.item()
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"forward + backward, best of {args.repeats}, d = {args.dim}, {args.threads} thread(s)")
    print(
        f"{'loss':<8} {'B':>5} {'rows':>5} {'loop (s)':>10} {'vectorised (s)':>15} "
        f"{'speed-up':>9}  same value"
    )
    for b in args.batch:
        g = torch.Generator().manual_seed(b)
        z1, z2 = torch.randn(b, args.dim, generator=g), torch.randn(b, args.dim, generator=g)
        labels = torch.randint(10, (b,), generator=g)
        for loss in ("spread", "attract", "supcon"):
            z, y, inst = stack_views([z1, z2], labels)
            zl, zv = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
            t_loop, v_loop = timed(
                lambda zl=zl, y=y, inst=inst, loss=loss: naive_loop(zl, y, inst, loss, 0.5, 0.25),
                args.repeats,
            )
            t_vec, v_vec = timed(
                lambda zv=zv, y=y, inst=inst, loss=loss: contrastive_loss(
                    zv, y, inst, loss, 0.5, 0.25
                ),
                args.repeats,
            )
            same = abs(v_loop - v_vec) <= 1e-4 * max(1.0, abs(v_loop))
            print(
                f"{loss:<8} {b:>5} {2 * b:>5} {t_loop:>10.3f} {t_vec:>15.4f} "
                f"{t_loop / t_vec:>8.0f}x  {same}"
            )


if __name__ == "__main__":
    main()
