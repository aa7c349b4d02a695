"""The contrastive losses (``robustrep.losses.contrastive``) against two references written here.

- **plain SupCon**: the 2B x 2B formulation most SupCon code uses (HobbitLong's ``SupConLoss``:
  both views as anchors, a dense ``N x N`` positive mask, logits shifted by the row maximum,
  ``log_softmax`` over all other rows, the mean over each anchor's positives), reimplemented.
  Every loss here must cost no more than it: ratio ``loss / plain SupCon <= 1``.
- **the L_spread paper's per-anchor loop**: one anchor at a time, one direction only (view 1 as
  anchors against both views), the paper's formula reimplemented in that structure. The ratio
  ``loop / spread`` (a speed-up; target >= 30 at B = 1024) counts our symmetric ``spread`` (both
  views as anchors: twice the loop's work).

Values are checked where the conventions match: ``supcon`` equals plain SupCon; the loop equals
the package's masked attract / repel terms on the same cross-view matrix. Each round times
every candidate once (forward + backward on the same 2B x 128 embeddings) and the verdicts are on
the median per-round ratio.

    python benchmarks/contrastive_losses.py               # quick: B = 256, 1024, fp32
    python benchmarks/contrastive_losses.py --full        # also B = 4096 and bf16 autocast
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from timing import Target, alternate, per_round, verdict

from robustrep.losses.contrastive import (
    LOSSES,
    attract_terms,
    contrastive_loss,
    masked_info_nce,
)

TAU, ALPHA = 0.1, 0.5  # a common SupCon temperature; spread's attract/repel mix
AT_MOST_1 = Target(1.0)  # no slower than plain SupCon


def plain_supcon(z: torch.Tensor, labels: torch.Tensor, tau: float) -> torch.Tensor:
    """SupCon over all 2B rows with a dense positive mask (the common public formulation)."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0]
    logits = z @ z.T / tau
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    not_self = ~torch.eye(n, dtype=torch.bool)
    positives = (labels[:, None] == labels[None, :]) & not_self
    exp = torch.exp(logits) * not_self
    log_prob = logits - torch.log(exp.sum(1, keepdim=True))
    n_pos = positives.sum(1)
    has = n_pos > 0
    mean_log_prob = (positives * log_prob).sum(1)[has] / n_pos[has]
    return -mean_log_prob.mean()


def spread_loop(z: torch.Tensor, labels: torch.Tensor, b: int, tau: float, alpha: float):
    """L_spread in the structure of the paper's public code: one direction (view-1 anchors against
    view-0 rows, ``s = a c^T / tau``), one anchor at a time; the positives of anchor i are the
    view-0 rows of its class (its own other view included), the negatives the other classes. For
    each positive its own denominator (itself and every negative) is gathered and reduced:
    attract_i = mean_p [logsumexp(s_ip, s_iNeg) - s_ip], repel_i = logsumexp_p s_ip - s_ii."""
    z = F.normalize(z.float(), dim=1)
    anchors, contrast, y = z[b:], z[:b], labels[:b]
    sim = anchors @ contrast.T / tau
    attract, repel = [], []
    for i in range(b):
        row = sim[i]
        pos = torch.where(y == y[i])[0]
        neg = torch.where(y != y[i])[0]
        denominators = torch.cat([pos[:, None], neg.expand(len(pos), -1)], 1)
        attract.append((torch.logsumexp(row[denominators], 1) - row[pos]).mean())
        repel.append(torch.logsumexp(row[pos], 0) - row[i])
    return alpha * torch.stack(attract).mean() + (1 - alpha) * torch.stack(repel).mean()


def spread_cross_view(z, labels, b, tau, alpha) -> float:
    """The loop's loss from this package's masked building blocks on the same cross-view matrix."""
    z = F.normalize(z.float(), dim=1)
    sim = z[b:] @ z[:b].T / tau
    same = labels[:b, None] == labels[None, :b]
    att, _ = attract_terms(sim, same, ~same)
    rep, _ = masked_info_nce(sim, torch.eye(b, dtype=torch.bool), same)
    return float(alpha * att.mean() + (1 - alpha) * rep.mean())


def embeddings(b: int, dim: int, classes: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(b)
    z = torch.randn(2 * b, dim, generator=gen)
    labels = torch.randint(classes, (b,), generator=gen).repeat(2)
    instance = torch.arange(b).repeat(2)
    return z, labels, instance


def fwd_bwd(fn, z: torch.Tensor, bf16: bool):
    def run() -> None:
        leaf = z.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = fn(leaf)
        out.backward()

    return run


def bench_batch(b: int, args, bf16: bool) -> list[bool]:
    z, labels, instance = embeddings(b, args.dim, args.classes)
    tag = f"B={b}{' bf16' if bf16 else ''}"
    ref = float(plain_supcon(z, labels, TAU))
    ours = float(contrastive_loss(F.normalize(z, dim=1), labels, instance, "supcon", TAU))
    print(f"\n{tag}: supcon {ours:.6f} vs plain SupCon {ref:.6f} (|diff| {abs(ours - ref):.1e})")
    assert abs(ours - ref) <= 1e-4 * max(1.0, abs(ref)), "supcon differs from plain SupCon"
    candidates = {"plain": fwd_bwd(lambda x: plain_supcon(x, labels, TAU), z, bf16)}
    for loss in LOSSES:
        candidates[loss] = fwd_bwd(
            lambda x, loss=loss: contrastive_loss(
                F.normalize(x, dim=1), labels, instance, loss, TAU, ALPHA
            ),
            z,
            bf16,
        )
    with_loop = b == args.loop_batch and not bf16
    if with_loop:
        loop = float(spread_loop(z, labels, b, TAU, ALPHA))
        masked = spread_cross_view(z, labels, b, TAU, ALPHA)
        print(f"  one-direction L_spread: loop {loop:.6f} vs masked terms {masked:.6f}")
        assert abs(loop - masked) <= 1e-4 * max(1.0, abs(loop)), "the loop differs"
        candidates["loop"] = fwd_bwd(lambda x: spread_loop(x, labels, b, TAU, ALPHA), z, False)
    times = alternate(candidates, rounds=args.rounds, calls=args.calls)
    for name, t in times.items():
        print(f"  {name:<7} median {1000 * sorted(t)[len(t) // 2]:9.2f} ms (forward + backward)")
    met = [
        verdict(f"{loss} / plain SupCon, {tag}", per_round(times[loss], times["plain"]), AT_MOST_1)
        for loss in LOSSES
    ]
    if with_loop:
        met.append(
            verdict(
                f"loop / spread (speed-up), {tag}",
                per_round(times["loop"], times["spread"]),
                Target(30.0, at_most=False),
            )
        )
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="B per view")
    parser.add_argument("--full", action="store_true", help="B = 256, 1024, 4096; fp32 and bf16")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2, help="calls per candidate per round")
    parser.add_argument("--loop-batch", type=int, default=1024, help="B at which the loop runs")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = args.batch or ([256, 1024, 4096] if args.full else [256, 1024])
    print(f"d = {args.dim}, {args.classes} classes, tau {TAU}, {args.threads} thread(s)")
    met = []
    for bf16 in (False, True) if args.full else (False,):
        for b in batches:
            rounds = args.rounds if b <= 1024 else max(3, args.rounds // 2)
            met += bench_batch(b, argparse.Namespace(**{**vars(args), "rounds": rounds}), bf16)
    print(f"\n{sum(met)} of {len(met)} targets met")


if __name__ == "__main__":
    main()
