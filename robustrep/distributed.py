"""DDP helpers: sums and gathers that are the identity in a single process, and the end of a spawned
worker.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks (no gradient); returns ``x`` unchanged in a single process."""
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and returns this rank's
    slice (so a loss computed identically on every rank from the gathered tensor gets the same
    gradient as one process holding the whole global batch, once DDP averages over ranks)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks along dim 0, with gradients.

    Identity in a single process. Use it for contrastive losses whose negatives span the global
    batch; gather labels/indices with :func:`gather_no_grad`.
    """
    return _GatherWithGrad.apply(x) if is_distributed() else x


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (labels, indices); identity in one process."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def close_spawned_process_group(trainer: Any) -> None:
    """Destroy the process group of a ``ddp_spawn``/``ddp_fork`` worker once its trainer call is
    done.

    Lightning leaves a gloo group to the interpreter's exit, where its threads sometimes abort the
    worker ("terminate called without an active exception", SIGABRT) after the work has finished:
    21 of 150 two-process runs, 0 of 150 with this call (``python benchmarks/ddp_spawn_exit.py``).
    A worker of the multiprocessing launcher exits right after the call, so both ranks meet at a
    barrier and close the group here. With the other launchers (``ddp``: the processes live on for
    the next call) this does nothing.
    """
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    if (
        isinstance(launcher, _MultiProcessingLauncher)
        and dist.is_available()
        and dist.is_initialized()
    ):
        dist.barrier()
        dist.destroy_process_group()


def first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions (sorted) of the first occurrence of each value of ``index``: drops the repeats that
    padded ``DistributedSampler`` shards add to a gathered result."""
    order = torch.argsort(index, stable=True)
    sorted_idx = index[order]
    first = torch.ones_like(sorted_idx, dtype=torch.bool)
    first[1:] = sorted_idx[1:] != sorted_idx[:-1]
    return order[first].sort().values
