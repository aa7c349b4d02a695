"""IP-IRM losses: the closed-form IRMv1 penalty and subset-restricted InfoNCE from one similarity
matrix.

**IRM penalty with a scalar dummy scale.** For ``L(w) = CE(w * logits, y)`` the derivative at
``w = 1`` is, per row, ``dL/dw = sum_j softmax_j(logits) * logits_j - logits_y``, so the IRMv1
penalty ``(dL/dw at w=1)^2`` of the batch-mean loss is ``(mean over rows of that)^2`` - no double
backward (:func:`irm_penalty`). IP-IRM uses the scalar scale of the paper (eq. 2,
``theta = 1.0``); the public code multiplies the logits by a ones *vector* over logit columns,
whose columns have no fixed meaning once the positive is moved to column 0, so that variant is not
provided.

**Subset InfoNCE.** For IP-IRM the contrastive loss of a subset ``k`` of a partition is NT-Xent
among the batch members of ``k``: the anchor's positive is its other view, the negatives are the
other rows of the subset. With rows ``z`` (both views, L2-normalised), ``s_ij = <z_i, z_j> / tau``
and a column weight ``c_jk`` (1/0 membership of row ``j`` in subset ``k``; a probability in the
soft maximisation):

``l_ik = -s_i,pos + log(e^{s_i,pos} + sum_{j != i, pos} c_jk e^{s_ij})`` (the positive has weight 1)

``g_ik = dl_ik(w)/dw at w = 1`` for ``s -> w * s`` (computed at the temperature ``irm_tau``).

Every subset of every partition comes from *one* ``R x R`` similarity matrix: with
``E_ij = exp(s_ij - m_i)`` (``m_i`` the row maximum, diagonal zeroed) the denominators of all
subsets are one matrix product ``E @ C`` (``R x S`` for ``S`` subsets), and the weighted sums
``sum_j c_jk e^{s_ij} s_ij`` that give ``g`` are ``(E * s) @ C`` - cost ``O(R^2 (d + S))`` and
memory ``O(R^2)``, independent of the number of partitions. A subset with no member in the batch has
``l = g = 0`` for every anchor and is ignored; so is a subset with one member (its only candidate
is the positive, so ``l = 0``). All arithmetic runs in fp32 with autocast off. Row maxima are taken
over all rows, so for ``tau`` below about 0.02 a subset whose similarities are all ~2/tau below a
row's maximum underflows; its denominator is clamped at 1e-30 (finite, slightly wrong).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TINY = 1.0e-30


def irm_grad(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row ``d CE(w * logits_i, y_i) / dw`` at ``w = 1``:
    ``sum_j softmax_ij logits_ij - logits_i,y``.

    Args:
        logits: N x C (any dtype; computed in fp32).
        targets: N class indices.

    Returns:
        N fp32 values; their mean is the derivative of the batch-mean cross-entropy.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        x = logits.float()
        expected = (torch.softmax(x, dim=1) * x).sum(1)
        return expected - x.gather(1, targets.long()[:, None]).squeeze(1)


def irm_penalty(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IRMv1 penalty ``(d/dw mean_i CE(w * logits_i, y_i) at w = 1)^2`` in closed form (scalar,
    fp32).
    """
    return irm_grad(logits, targets).mean().pow(2)


def view_positive_index(
    batch: int, views: int = 2, device: torch.device | str | None = None
) -> torch.Tensor:
    """For ``views * batch`` rows in view-major order (all of view 0, then view 1), the row of each
    row's positive: the same example in the next view (cyclically; for two views, the other
    view)."""
    rows = torch.arange(views * batch, device=device)
    return (rows + batch) % (views * batch)


def weighted_info_nce(
    z: torch.Tensor,
    pos_index: torch.Tensor,
    weights: torch.Tensor,
    tau: float = 0.5,
    irm_tau: float | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-anchor InfoNCE of every row against weighted denominators, for ``S`` weightings at once.

    Args:
        z: R x d rows (any dtype; computed in fp32).
        pos_index: R, the row index of each row's positive (never the row itself).
        weights: R x S column weights ``c_jk`` in [0, 1]: how much row ``j`` counts as a negative
            in weighting ``k`` (a column of ones = plain NT-Xent over all rows; 0/1 membership =
            negatives restricted to a subset). The positive always has weight 1.
        tau: temperature of the loss.
        irm_tau: temperature of the IRM derivative ``g`` (the public code uses a separate
            ``irm_temp``, 0.5); None = no derivative is computed.
        normalize: L2-normalise the rows first.

    Returns:
        ``(loss, grad)``: R x S per-anchor losses ``l_ik`` and R x S derivatives ``g_ik`` (None when
        ``irm_tau`` is None). See the module docstring for the formulas.
    """
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        if normalize:
            z = F.normalize(z, dim=1)
        c = weights.float()
        cos = z @ z.T
        pos = pos_index.long()[:, None]
        w_pos = c[pos_index.long()]  # R x S: the positive's own column weight, replaced by 1 below
        second = irm_tau is not None and irm_tau != tau
        # frozen features (the maximisation): the last pass over cos may overwrite it
        frozen = not cos.requires_grad
        loss, e, s, denom = _weighted_terms(cos, pos, c, w_pos, tau, frozen and not second)
        if irm_tau is None:
            return loss, None
        if second:
            _, e, s, denom = _weighted_terms(cos, pos, c, w_pos, irm_tau, frozen)
        s_pos = s.gather(1, pos)
        e_pos = e.gather(1, pos)
        # frozen features: s is not needed again, so e * s overwrites it (no R x R allocation)
        e_s = s.mul_(e) if frozen else e * s
        numer = _times_weights(e_s, c) + (e_pos * s_pos) * (1.0 - w_pos)
        return loss, numer / denom - s_pos


def _weighted_terms(
    cos: torch.Tensor,
    pos: torch.Tensor,
    c: torch.Tensor,
    w_pos: torch.Tensor,
    tau: float,
    overwrite: bool = False,
):
    """Per-anchor losses, ``E``, ``s`` and the denominators at temperature ``tau``; ``overwrite``:
    ``cos`` is not needed again (frozen features), so ``s`` is computed in its place."""
    s = cos.div_(tau) if overwrite else cos / tau
    # the row maximum over the other rows; the diagonal (each row with itself) is no term at all
    off = s.detach().clone()
    off.diagonal().fill_(-torch.inf)
    m = off.amax(1, keepdim=True)
    e = off.sub_(m).exp_() if not s.requires_grad else _off_diagonal_exp(s, m)
    e_pos = e.gather(1, pos)
    denom = (_times_weights(e, c) + e_pos * (1.0 - w_pos)).clamp_min(_TINY)
    loss = torch.log(denom) + m - s.gather(1, pos)
    return loss, e, s, denom


class _ColumnsProduct(torch.autograd.Function):
    """``big @ small`` for a constant ``R x R`` matrix and an ``R x S`` one with few columns,
    computed as ``(small^T @ big^T)^T`` from a contiguous ``small^T``, and the gradient
    ``big^T @ grad`` as ``(grad^T @ big)^T`` likewise: BLAS's path for a thin right operand (or a
    transposed big one) is several times slower on some CPUs (one-off timing on the 2-core AMD
    machine, R = 4096, S = 2: 25.6 -> 7.4 ms forward, 169 -> 7.1 ms for the gradient; the epoch it
    buys is in ``benchmarks/ipirm_step.py``). The same sums, so the same values to rounding."""

    @staticmethod
    def forward(ctx, big, small):
        ctx.save_for_backward(big)
        return (small.T.contiguous() @ big.T).T

    @staticmethod
    def backward(ctx, grad):
        (big,) = ctx.saved_tensors
        return None, (grad.T.contiguous() @ big).T


def columns_product(big: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """``big @ small`` (R x R times R x S with small S, e.g. the subset weights), differentiable in
    ``small``, on BLAS's fast path whatever the CPU (see :class:`_ColumnsProduct`). ``big`` must be
    a constant (frozen features): a ``big`` that needs a gradient is refused."""
    if big.requires_grad:
        raise ValueError("columns_product treats `big` as a constant; use big @ small instead")
    return _ColumnsProduct.apply(big, small)


def _times_weights(matrix: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``matrix @ c``: for frozen features (the maximisation, where ``R`` is in the thousands) on
    the thin-product path; the minimisation step (differentiable ``matrix``, ``R`` = the batch)
    keeps the plain product, so its training numbers are the same bit for bit as before."""
    return matrix @ c if matrix.requires_grad else columns_product(matrix, c)


def _off_diagonal_exp(s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``exp(s - m)`` with a zero diagonal, differentiable in ``s``."""
    eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    return torch.exp(s - m).masked_fill(eye, 0.0)


def subset_means(
    values: torch.Tensor, anchor_weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean over anchors of R x S per-anchor ``values`` with R x S ``anchor_weights``;
    returns ``(means S, total weight S)`` (mean 0 where the total weight is 0)."""
    total = anchor_weights.sum(0)
    return (values * anchor_weights).sum(0) / total.clamp_min(_TINY), total


def partition_losses(
    z1: torch.Tensor,
    z2: torch.Tensor,
    assignments: torch.Tensor,
    num_subsets: int = 2,
    tau: float = 0.5,
    irm_tau: float = 0.5,
    full_batch: bool = True,
) -> dict[str, torch.Tensor]:
    """IP-IRM's minimisation terms for two views of ``B`` examples and ``P`` stored partitions.

    Args:
        z1, z2: B x d embeddings of the two views (row ``i`` of each is example ``i``).
        assignments: P x B subset of each example in each partition (values in ``[0, num_subsets)``;
            -1 = the example is in no subset of that partition, e.g. not covered by it).
        num_subsets: K, subsets per partition.
        tau: temperature of the losses; ``irm_tau``: temperature of the IRM derivative.
        full_batch: also return the NT-Xent over the whole batch (``full``), from the same matrix.

    Returns:
        A dict of fp32 tensors: ``full`` (scalar, if requested), ``subset_loss`` (P x K, mean
        NT-Xent of each subset over its member anchors), ``subset_grad`` (P x K, the IRM derivative
        of that loss; both 0 for subsets that are not ``valid``), ``count`` (P x K examples of the
        batch in each subset) and ``valid`` (P x K bool, at least two examples - only these subsets
        count).
    """
    b = z1.shape[0]
    p = assignments.shape[0]
    device = z1.device
    # P x B x K
    onehot = (
        F.one_hot(assignments.clamp_min(0).long(), num_subsets).float()
        * (assignments >= 0)[..., None].float()
    )
    members = onehot.permute(1, 0, 2).reshape(b, p * num_subsets)  # B x (P*K)
    weights = members.repeat(2, 1)  # both views
    if full_batch:
        weights = torch.cat([weights.new_ones(2 * b, 1), weights], dim=1)
    z = torch.cat([z1, z2])
    loss, grad = weighted_info_nce(z, view_positive_index(b, 2, device), weights, tau, irm_tau)
    out: dict[str, torch.Tensor] = {}
    if full_batch:
        out["full"] = loss[:, 0].mean()
        loss, grad, weights = loss[:, 1:], grad[:, 1:], weights[:, 1:]  # type: ignore[index]
    subset_loss, _ = subset_means(loss, weights)
    subset_grad, _ = subset_means(grad, weights)  # type: ignore[arg-type]
    count = members.sum(0)
    valid = count >= 2
    zero = subset_loss.new_zeros(())
    out.update(
        subset_loss=torch.where(valid, subset_loss, zero).reshape(p, num_subsets),
        subset_grad=torch.where(valid, subset_grad, zero).reshape(p, num_subsets),
        count=count.reshape(p, num_subsets),
        valid=valid.reshape(p, num_subsets),
    )
    return out


def soft_partition_objective(
    z1: torch.Tensor,
    z2: torch.Tensor,
    probs: torch.Tensor,
    tau: float = 0.5,
    irm_tau: float = 0.5,
    lambda2: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The quantity IP-IRM's maximisation step maximises, for a soft partition of ``M`` examples.

    Each subset's soft loss weights every negative by its probability of being in the subset and
    every anchor by its own probability (the positive keeps weight 1), so for a 0/1 ``probs`` it is
    exactly the hard subset NT-Xent of :func:`partition_losses`:
    ``L_k = sum_i p_k(i) l_ik / sum_i p_k(i)``, ``G_k`` the same mean of ``g_ik``.

    Args:
        z1, z2: M x d features of two views (frozen: no gradient is needed through them).
        probs: M x K soft assignment (rows sum to 1).
        tau, irm_tau: temperatures of the loss and of the IRM derivative.
        lambda2: weight of the penalty ``G_k^2``.

    Returns:
        ``(objective, L, G)``: ``mean_k L_k + lambda2 * mean_k G_k^2`` and the K-vectors ``L``,
        ``G``.
    """
    m = z1.shape[0]
    weights = probs.float().repeat(2, 1)
    loss, grad = weighted_info_nce(
        torch.cat([z1, z2]), view_positive_index(m, 2, z1.device), weights, tau, irm_tau
    )
    subset_loss, _ = subset_means(loss, weights)
    subset_grad, _ = subset_means(grad, weights)  # type: ignore[arg-type]
    return subset_loss.mean() + lambda2 * subset_grad.pow(2).mean(), subset_loss, subset_grad


def split_entropy(num_subsets: int = 2, ratio: float = 2.0) -> float:
    """Entropy (nats) of a split where one subset is ``ratio`` times as large as each of the others;
    for K = 2, ratio 2 this is the public code's balance target 0.6365 (a 2:1 split)."""
    sizes = torch.tensor([ratio] + [1.0] * (num_subsets - 1), dtype=torch.float64)
    p = sizes / sizes.sum()
    return float(-(p * p.log()).sum())


def balance_penalty(probs: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """``relu(target_entropy - H(mean_i probs_i))``: zero while the average soft assignment is at
    least as balanced as the target (e.g. :func:`split_entropy`)."""
    mean = probs.float().mean(0)
    entropy = -(mean * torch.log(mean.clamp_min(_TINY))).sum()
    return torch.relu(target_entropy - entropy)


def min_share(num_subsets: int = 2, ratio: float = 2.0) -> float:
    """Smallest subset share allowed by a ``ratio`` balance target (1/3 for K = 2, ratio 2)."""
    return 1.0 / (ratio + num_subsets - 1) if num_subsets > 1 else 1.0


__all__ = [
    "balance_penalty",
    "irm_grad",
    "irm_penalty",
    "min_share",
    "partition_losses",
    "soft_partition_objective",
    "split_entropy",
    "subset_means",
    "view_positive_index",
    "weighted_info_nce",
]
