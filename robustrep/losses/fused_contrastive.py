"""The contrastive losses of :mod:`robustrep.losses.contrastive` in one fused pass, with the
gradient written out: as fast as the plain SupCon formulation or faster
(``benchmarks/contrastive_losses.py``).

Every loss is a weighted sum of four per-anchor terms over the ``N x N`` logits
``s_ij = <z_i, z_j> / tau`` of L2-normalised rows (``P``: other rows with the anchor's label,
``Neg``: rows with another label, ``A``: other rows of the anchor's instance, ``E_ij = e^{s_ij}``,
``j != i`` throughout)::

    attract_i = mean_{p in P} [log(E_ip + sum_{n in Neg} E_in) - s_ip]
    repel_i   = log sum_{p in P} E_ip - mean_{a in A} s_ia
    supcon_i  = log sum_{j != i} E_ij - mean_{p in P} s_ip
    simclr_i  = log sum_{j != i} E_ij - mean_{a in A} s_ia

each averaged over the anchors for which it is defined (attract and supcon: ``|P| > 0``; repel and
simclr: ``|A| > 0``). What makes it fast:

- one GEMM gives the logits already shifted by ``1/tau`` (every row's maximum: the self-similarity),
  so ``exp`` runs once, in place, on values in ``[-2/tau, 0]`` (no overflow, and no slow path for
  huge negative masked values as with a ``-1e9`` mask);
- the positive pairs come from the labels in ``O(pairs)`` (no ``N x N`` mask), and every per-pair
  quantity is computed on them only;
- the backward pass needs no autograd graph: the gradient w.r.t. the logits is ``E_ij`` times a
  per-row coefficient everywhere, plus per-pair corrections on the positive pairs, and
  ``dL/dz = (G + G^T) z / tau`` is two GEMMs.

Everything runs in fp32 (the caller switches autocast off).
"""

from __future__ import annotations

import torch

#: Below this temperature the logits span more than exp's comfortable range; shift by the row max.
_MIN_CONSTANT_SHIFT_TAU = 1.0 / 30.0


def same_label_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of every ordered pair ``i != j`` with ``labels[i] == labels[j]``, in
    ``O(pairs)`` (labels are any integers)."""
    n = labels.shape[0]
    _, labels = torch.unique(labels, return_inverse=True)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    per_row = counts[labels]
    rows = torch.repeat_interleave(torch.arange(n, device=labels.device), per_row)
    first = torch.cumsum(per_row, 0) - per_row
    offset = torch.arange(rows.shape[0], device=labels.device) - torch.repeat_interleave(
        first, per_row
    )
    cols = order[torch.repeat_interleave(starts[labels], per_row) + offset]
    keep = rows != cols
    return rows[keep], cols[keep]


def _row_sum(rows: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, device=values.device, dtype=values.dtype).index_add_(0, rows, values)


class FusedContrastive(torch.autograd.Function):
    """``w_attract * attract + w_repel * repel + w_supcon * supcon + w_simclr * simclr`` of
    L2-normalised rows ``z`` (N x d, fp32) with ``labels`` and ``instance`` ids (see the module)."""

    @staticmethod
    def forward(ctx, z, labels, instance, tau, w_attract, w_repel, w_supcon, w_simclr):
        # ``tau`` may be a tensor (the IRM penalty differentiates w.r.t. a scale on it)
        ctx.tau_is_tensor = isinstance(tau, torch.Tensor)
        tau = float(tau)
        n = z.shape[0]
        inv_tau = 1.0 / tau
        if tau >= _MIN_CONSTANT_SHIFT_TAU:  # log E_ij = (z_i.z_j - 1) / tau <= 0
            log_e = torch.addmm(z.new_tensor(-inv_tau), z, z.T, alpha=inv_tau)
        else:  # very low temperature: shift each row by its largest off-diagonal logit
            log_e = torch.mm(z, z.T).mul_(inv_tau)
            log_e.diagonal().fill_(float("-inf"))
            log_e.sub_(log_e.amax(1, keepdim=True))
        rows, cols = same_label_pairs(labels)
        flat = rows * n + cols  # the positive pairs in the flattened N x N matrix
        log_e_pos = log_e.view(-1).index_select(0, flat)
        in_instance = instance[rows] == instance[cols]
        inst_rows, log_e_inst = rows[in_instance], log_e_pos[in_instance]
        e = log_e.exp_()  # in place: the logits are no longer needed
        e.diagonal().zero_()
        s_all = e.sum(1)
        e_pos = log_e_pos.exp()
        n_pos = _row_sum(rows, torch.ones_like(e_pos), n)
        n_inst = _row_sum(inst_rows, torch.ones_like(log_e_inst), n)
        s_pos = _row_sum(rows, e_pos, n)
        same = None
        if w_attract:  # summed directly: s_all - s_pos cancels when the negatives are far away
            same = labels[:, None] == labels[None, :]
            s_neg = torch.where(same, 0.0, e).sum(1)
        has_pos, has_inst = n_pos > 0, n_inst > 0
        inv_pos, inv_inst = 1 / n_pos.clamp(min=1), 1 / n_inst.clamp(min=1)
        # each anchor's weight in the means over anchors
        mean_pos = has_pos.to(z.dtype) / has_pos.sum().clamp(min=1)
        mean_inst = has_inst.to(z.dtype) / has_inst.sum().clamp(min=1)
        # gradient w.r.t. the logits: E_ij * row_neg[i] on every entry, E_ij * row_pos[i] instead
        # on positive pairs, plus the per-pair terms
        loss = z.new_zeros(())
        row_pos, row_neg = torch.zeros_like(s_all), torch.zeros_like(s_all)
        pair = torch.zeros_like(e_pos)
        inst_coef = torch.zeros_like(s_all)
        if w_attract:
            d = e_pos + s_neg[rows]
            w = w_attract * mean_pos * inv_pos
            loss = loss + (w * _row_sum(rows, torch.log(d) - log_e_pos, n)).sum()
            pair += w[rows] * (e_pos / d - 1)
            row_neg += w * _row_sum(rows, 1 / d, n)
        if w_repel:
            s_pos_safe = s_pos.clamp_min(torch.finfo(s_pos.dtype).tiny)
            term = torch.log(s_pos_safe) - _row_sum(inst_rows, log_e_inst, n) * inv_inst
            loss = loss + w_repel * (mean_inst * term).sum()
            row_pos += w_repel * mean_inst / s_pos_safe
            inst_coef -= w_repel * mean_inst * inv_inst
        if w_supcon:
            term = torch.log(s_all) - _row_sum(rows, log_e_pos, n) * inv_pos
            loss = loss + w_supcon * (mean_pos * term).sum()
            row_pos += w_supcon * mean_pos / s_all
            row_neg += w_supcon * mean_pos / s_all
            pair -= (w_supcon * mean_pos * inv_pos)[rows]
        if w_simclr:
            term = torch.log(s_all) - _row_sum(inst_rows, log_e_inst, n) * inv_inst
            loss = loss + w_simclr * (mean_inst * term).sum()
            row_pos += w_simclr * mean_inst / s_all
            row_neg += w_simclr * mean_inst / s_all
            inst_coef -= w_simclr * mean_inst * inv_inst
        # with attract on, the dense part puts row_neg on the negatives only (there it is large
        # where positives are far away; adding then subtracting it on the positives loses digits)
        pair += e_pos * (row_pos if same is not None else row_pos - row_neg)[rows]
        pair[in_instance] += inst_coef[inst_rows]
        ctx.save_for_backward(z, e, row_neg, flat, pair, same)
        ctx.inv_tau, ctx.done = inv_tau, False
        return loss

    @staticmethod
    def backward(ctx, grad):
        if ctx.done:
            raise RuntimeError("the fused contrastive loss supports one backward pass per forward")
        ctx.done = True
        z, e, row_neg, flat, pair, same = ctx.saved_tensors
        g = e.mul_(row_neg[:, None])  # in place: E is not needed again
        if same is not None:
            g.masked_fill_(same, 0.0)
        g.view(-1).index_add_(0, flat, pair)
        # (G + G^T) z as two GEMMs (adding a transposed matrix is far slower than a GEMM)
        sym = torch.mm(g, z).addmm_(g.T, z)
        grad_tau = None
        if ctx.tau_is_tensor:  # ds_ij/dtau = -s_ij/tau; sum_ij G_ij z_i.z_j = sum(z * sym) / 2
            grad_tau = grad * (-0.5 * ctx.inv_tau**2) * (z * sym).sum()
        return sym.mul_(grad * ctx.inv_tau), None, None, grad_tau, None, None, None, None


__all__ = ["FusedContrastive", "same_label_pairs"]
