"""IP-IRM's maximisation step: find the partition of a fixed feature bank on which the per-subset
contrastive losses are least invariant (METHODS.md section 5), chunked so memory is bounded; and the
partitions as a ``P x N`` tensor of subset ids (:func:`append_partition`,
:func:`subset_assignments`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm

from robustrep.losses.irm import balance_penalty, min_share, soft_partition_objective, split_entropy


def maximise_partition(
    f1: torch.Tensor,
    f2: torch.Tensor,
    num_subsets: int = 2,
    tau: float = 0.5,
    irm_tau: float = 0.5,
    lambda2: float = 0.5,
    epochs: int = 60,
    lr: float = 0.5,
    milestones: Sequence[int] = (5, 35),
    batch_size: int = 2048,
    patience: int = 5,
    balance_ratio: float = 2.0,
    balance_weight: float = 1.0,
    enforce_balance: bool = True,
    seed: int = 0,
    progress: str | None = None,
    history: list[float] | None = None,
) -> torch.Tensor:
    """IP-IRM's maximisation step on a fixed feature bank; returns the hard partition (N subset
    ids).

    Optimises logits ``Q`` (N x K, N(0, 1) start) with Adam so that, chunk by chunk,
    ``soft_partition_objective(f1, f2, softmax(Q)) - balance_weight * balance_penalty`` grows; keeps
    the epoch with the best mean objective, thresholds it by argmax and (``enforce_balance``)
    repairs subsets below ``min_share``. Memory is O(``batch_size``^2 + N (d + K)). ``progress``: a
    tqdm bar label (None = no bar); ``history``: filled with each epoch's mean objective.
    """
    n = f1.shape[0]
    device = f1.device
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_subsets, generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.2)
    target = split_entropy(num_subsets, balance_ratio)
    best, best_logits, stale = -float("inf"), logits.detach().clone(), 0
    f1, f2 = f1.detach().float(), f2.detach().float()
    bar = tqdm(range(epochs), desc=progress, disable=progress is None, leave=False)
    with torch.enable_grad():
        for _ in bar:
            order = torch.randperm(n, generator=gen).to(device)
            total, chunks = 0.0, 0
            for chunk in order.split(batch_size):
                if chunk.numel() < 2:
                    continue
                probs = torch.softmax(logits[chunk], dim=1)
                objective, _, _ = soft_partition_objective(
                    f1[chunk], f2[chunk], probs, tau, irm_tau, lambda2
                )
                risk = -objective + balance_weight * balance_penalty(probs, target)
                opt.zero_grad(set_to_none=True)
                risk.backward()
                opt.step()
                total += float(-risk.detach())
                chunks += 1
            sched.step()
            value = total / max(chunks, 1)
            if history is not None:
                history.append(value)
            bar.set_postfix(objective=f"{value:.4f}")
            if value > best:
                best, best_logits, stale = value, logits.detach().clone(), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    assign = best_logits.argmax(1)
    if enforce_balance:
        assign = rebalance(
            assign, torch.softmax(best_logits, 1), min_share(num_subsets, balance_ratio)
        )
    return assign


def rebalance(assign: torch.Tensor, probs: torch.Tensor, share: float) -> torch.Tensor:
    """Move examples into every subset holding fewer than ``share * N`` of them, taking from the
    largest subset its members most probable for the small one (one move per deficient subset and
    round; K rounds at most)."""
    assign = assign.clone()
    n, k = probs.shape
    need = int(torch.ceil(torch.tensor(share * n)).item())
    for _ in range(k):
        counts = torch.bincount(assign, minlength=k)
        small = int(counts.argmin())
        if counts[small] >= need:
            break
        donor = int(counts.argmax())
        movable = int(min(need - counts[small], counts[donor] - need))
        if movable <= 0:
            break
        members = (assign == donor).nonzero().squeeze(1)
        take = members[probs[members, small].argsort(descending=True)[:movable]]
        assign[take] = small
    return assign


def append_partition(partitions: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """``partitions`` (P x N subset ids by dataset index, -1 = not covered) with ``assignment`` (N')
    appended as row P + 1; the shorter side is padded with -1 to ``max(N, N')`` columns."""
    assignment = assignment.to(partitions.device, torch.long)
    rows, cols = partitions.shape
    n = max(cols, assignment.shape[0])
    grown = torch.full((rows + 1, n), -1, dtype=torch.long, device=partitions.device)
    grown[:rows, :cols] = partitions
    grown[-1, : assignment.shape[0]] = assignment
    return grown


def subset_assignments(partitions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``P x B``: the subset of each of the ``B`` dataset indices ``index`` in each partition (-1
    for an index the partitions do not cover)."""
    if partitions.shape[0] == 0:
        return partitions.new_zeros(0, index.shape[0])
    covered = index < partitions.shape[1]
    out = partitions[:, index.clamp(max=max(partitions.shape[1] - 1, 0))]
    return torch.where(covered[None, :], out, torch.full_like(out, -1))


__all__ = ["append_partition", "maximise_partition", "rebalance", "subset_assignments"]
