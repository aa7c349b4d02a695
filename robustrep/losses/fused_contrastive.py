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
  so ``exp`` runs once, in place, on values in ``[-2/tau, 0]`` (no overflow, no underflow for
  ``tau >= MIN_TAU``, and no slow path for huge negative masked values as with a ``-1e9`` mask);
- the sums of logits over a row's positives (or its instance) are dot products with per-group
  sums of ``z``: ``sum_{p in P} z_i.z_p = z_i.(sum of z over i's class - z_i)``, ``O(N d)``;
  their constant gradient terms go the same way. SupCon and NT-Xent need no ``N x N`` mask at all;
  attract and repel need one (``E`` split into positives and negatives);
- the backward pass needs no autograd graph: the rest of the gradient w.r.t. the logits is ``E_ij``
  times a per-row (or, for attract, per-pair) coefficient, and ``dL/dz = (G + G^T) z / tau`` is
  two GEMMs.

Everything runs in fp32 (the caller switches autocast off).
"""

from __future__ import annotations

import torch

#: The lowest temperature the fused pass takes: below it the logits span more than fp32's ``exp``
#: resolves (a far positive or the negatives underflow to 0), and the per-set log-sum-exps of
#: :func:`robustrep.losses.contrastive.masked_logsumexp` are needed.
MIN_TAU = 1.0 / 30.0

#: Attract / repel loop over the classes' diagonal blocks of ``E`` (rows sorted by class) when the
#: classes average at least this many rows; with more, smaller classes the Python loop costs more
#: than masking the whole matrix.
MIN_BLOCK_ROWS = 16


def _groups(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(group, size)``: each row's group index (0..G-1) and its group's size."""
    _, group = torch.unique(ids, return_inverse=True)
    counts = torch.bincount(group)
    return group, counts[group]


def _others_sum(values: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Row i: the sum of ``values`` over the other rows of i's group (``values`` N or N x d)."""
    totals = values.new_zeros((int(group.max()) + 1, *values.shape[1:]))
    return totals.index_add_(0, group, values)[group] - values


def _block_sums(e, blocks, s_pos, s_neg, log_denom, inv_denom, attract: bool) -> list:
    """Fill the per-row sums over the positives (one diagonal block of ``E`` per class, rows
    sorted by class); for attract also ``sum_n E_in``, ``sum_p log D_ip`` and ``sum_p 1 / D_ip``
    with ``D_ip = E_ip + sum_n E_in``. Returns attract's ``1 / D`` per block (0 on its diagonal)."""
    per_pair: list[torch.Tensor] = []
    sums: dict[str, list[torch.Tensor]] = {"pos": [], "neg": [], "log": [], "inv": []}
    for a, b in blocks:
        block = e[a:b, a:b]
        sums["pos"].append(block.sum(1))
        if attract:
            # the negatives summed directly (s_all - s_pos cancels when they are far away)
            neg = e[a:b, :a].sum(1).add_(e[a:b, b:].sum(1))
            denom = block + neg[:, None]  # >= E_ip > 0 for tau >= MIN_TAU
            denom.diagonal().fill_(1.0)
            sums["neg"].append(neg)
            sums["log"].append(torch.log(denom).sum(1))
            per_pair.append(denom.reciprocal_())
            per_pair[-1].diagonal().zero_()
            sums["inv"].append(per_pair[-1].sum(1))
    for out, key in ((s_pos, "pos"), (s_neg, "neg"), (log_denom, "log"), (inv_denom, "inv")):
        if sums[key]:
            torch.cat(sums[key], out=out)
    return per_pair


def _masked_sums(e, same, s_pos, s_neg, log_denom, inv_denom, attract: bool):
    """:func:`_block_sums` with an ``N x N`` mask of the positives; returns ``1 / D`` on the
    positives (0 elsewhere) or None."""
    e_pos = torch.where(same, e, 0.0)
    s_pos.copy_(e_pos.sum(1))
    if not attract:
        return None
    other = ~same
    s_neg.copy_((e - e_pos).sum(1))
    denom = e_pos.add_(s_neg[:, None])
    log_denom.copy_(torch.log(denom).masked_fill_(other, 0.0).sum(1))
    per_pair = denom.reciprocal_().masked_fill_(other, 0.0)
    inv_denom.copy_(per_pair.sum(1))
    return per_pair


class FusedContrastive(torch.autograd.Function):
    """``w_attract * attract + w_repel * repel + w_supcon * supcon + w_simclr * simclr`` of
    L2-normalised rows ``z`` (N x d, fp32) with ``labels`` and ``instance`` ids (see the module);
    ``tau`` a float ``>= MIN_TAU``."""

    @staticmethod
    def forward(ctx, z, labels, instance, tau, w_attract, w_repel, w_supcon, w_simclr):
        inv_tau = 1.0 / float(tau)
        label_group, label_size = _groups(labels)
        order = None
        if w_attract or w_repel:
            # rows sorted by class: each class's positive pairs are one diagonal block of E
            order = torch.argsort(label_group, stable=True)
            z, labels, instance = z[order], labels[order], instance[order]
            label_group, label_size = label_group[order], label_size[order]
        inst_group, inst_size = _groups(instance)
        n_pos, n_inst = (label_size - 1).to(z.dtype), (inst_size - 1).to(z.dtype)
        has_pos, has_inst = n_pos > 0, n_inst > 0
        inv_pos, inv_inst = 1 / n_pos.clamp(min=1), 1 / n_inst.clamp(min=1)
        # each anchor's weight in the means over anchors
        mean_pos = has_pos.to(z.dtype) / has_pos.sum().clamp(min=1)
        mean_inst = has_inst.to(z.dtype) / has_inst.sum().clamp(min=1)
        # sum of log E over the positives / the instance: dot products with group sums of z
        pos_z, inst_z = _others_sum(z, label_group), _others_sum(z, inst_group)
        pos_log_e = ((z * pos_z).sum(1) - n_pos) * inv_tau
        inst_log_e = ((z * inst_z).sum(1) - n_inst) * inv_tau

        e = torch.addmm(z.new_tensor(-inv_tau), z, z.T, alpha=inv_tau).exp_()
        e.diagonal().zero_()
        loss = z.new_zeros(())
        # G_ij = E_ij * (row_neg_i off the positives, row_pos_i (+ attract's per-pair term) on
        # them) + pos_coef_i on the positives + inst_coef_i on the instance
        row_pos, row_neg = torch.zeros_like(n_pos), torch.zeros_like(n_pos)
        pos_coef, inst_coef = torch.zeros_like(n_pos), torch.zeros_like(n_pos)
        if w_supcon or w_simclr:
            s_all = e.sum(1)
            log_all = torch.log(s_all)
            if w_supcon:
                loss = loss + w_supcon * (mean_pos * (log_all - pos_log_e * inv_pos)).sum()
                row_pos += w_supcon * mean_pos / s_all
                row_neg += w_supcon * mean_pos / s_all
                pos_coef -= w_supcon * mean_pos * inv_pos
            if w_simclr:
                loss = loss + w_simclr * (mean_inst * (log_all - inst_log_e * inv_inst)).sum()
                row_pos += w_simclr * mean_inst / s_all
                row_neg += w_simclr * mean_inst / s_all
                inst_coef -= w_simclr * mean_inst * inv_inst
        blocks, same = [], None
        if order is not None:
            s_pos, s_neg, log_denom, inv_denom = (torch.zeros_like(n_pos) for _ in range(4))
            sizes = torch.bincount(label_group)
            if len(sizes) * MIN_BLOCK_ROWS <= len(z):  # few classes: loop over their blocks
                ends = torch.cumsum(sizes, 0).tolist()
                blocks = list(zip([0, *ends[:-1]], ends, strict=True))
                per_pair = _block_sums(e, blocks, s_pos, s_neg, log_denom, inv_denom, w_attract)
            else:  # many small classes: masks over the whole matrix
                same = label_group[:, None] == label_group[None, :]
                same.diagonal().fill_(False)
                per_pair = _masked_sums(e, same, s_pos, s_neg, log_denom, inv_denom, w_attract)
            if w_repel:
                s_pos.clamp_(min=torch.finfo(z.dtype).tiny)
                term = torch.log(s_pos) - inst_log_e * inv_inst
                loss = loss + w_repel * (mean_inst * term).sum()
                row_pos += w_repel * mean_inst / s_pos
                inst_coef -= w_repel * mean_inst * inv_inst
            if w_attract:
                w = w_attract * mean_pos * inv_pos
                loss = loss + (w * (log_denom - pos_log_e)).sum()
                # d/dlog E_ip: w (E_ip / D_ip - 1); d/dlog E_in: E_in * w * sum_p 1 / D_ip
                row_neg += w * inv_denom
                pos_coef -= w
        if not ctx.needs_input_grad[0]:
            return loss
        if same is not None:
            on_pos = (
                row_pos[:, None]
                if not w_attract
                else per_pair.mul_(w[:, None]).add_(row_pos[:, None])
            )
            g = e.mul_(torch.where(same, on_pos, row_neg[:, None]))
        elif not blocks:  # supcon / simclr: row_pos == row_neg, one coefficient per row
            g = e.mul_(row_neg[:, None])
        else:
            # in place, one class's rows at a time: its block of positives, then its negatives
            for i, (a, b) in enumerate(blocks):
                coef = row_pos[a:b, None]
                if w_attract:
                    coef = per_pair[i].mul_(w[a:b, None]).add_(coef)
                e[a:b, a:b].mul_(coef)
                e[a:b, :a].mul_(row_neg[a:b, None])
                e[a:b, b:].mul_(row_neg[a:b, None])
            g = e
        ctx.save_for_backward(
            z, g, label_group, inst_group, pos_coef, inst_coef, order, pos_z, inst_z
        )
        ctx.inv_tau, ctx.done = inv_tau, False
        return loss

    @staticmethod
    def backward(ctx, grad):
        if ctx.done:
            raise RuntimeError("the fused contrastive loss supports one backward pass per forward")
        ctx.done = True
        z, g, label_group, inst_group, pos_coef, inst_coef, order, pos_z, inst_z = ctx.saved_tensors
        # (G + G^T) z: two GEMMs for the E part (faster than adding a transposed matrix), and the
        # constant terms on the positives / the instance through group sums (symmetric groups)
        sym = torch.mm(g, z).addmm_(g.T, z)
        for group, coef, others_z in (
            (label_group, pos_coef, pos_z),
            (inst_group, inst_coef, inst_z),
        ):
            sym += coef[:, None] * others_z + _others_sum(coef[:, None] * z, group)
        sym.mul_(grad * ctx.inv_tau)
        if order is not None:  # back to the caller's row order
            sym = torch.empty_like(sym).index_copy_(0, order, sym)
        return sym, None, None, None, None, None, None, None


__all__ = ["MIN_TAU", "FusedContrastive"]
