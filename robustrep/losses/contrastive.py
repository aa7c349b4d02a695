"""Contrastive losses as vectorised masked tensor ops: L_spread, L_attract, L_repel, SupCon,
NT-Xent.

Every loss works on a set of ``N`` embedding rows (usually the ``2B`` rows of two augmented views),
each with a class ``label`` and an ``instance`` id (rows of the same image share it). For an anchor
row ``i`` (every row is an anchor, so both views are anchors):

- ``P(i)``: every *other* row with the same label (includes the other view(s) of ``i``);
- ``N(i)``: every row with a different label;
- ``A(i)``: every other row of the same instance (the other view, ``aug(i)``).

With ``s_ij = <z_i, z_j> / tau`` on L2-normalised rows (METHODS.md section 4):

- ``attract``: ``-(1/|P|) sum_{p in P} log[e^s_ip / (e^s_ip + sum_{n in N} e^s_in)]`` - each
  positive is contrasted with the negatives only;
- ``repel`` (class-conditional InfoNCE):
  ``-(1/|A|) sum_{a in A} log[e^s_ia / sum_{p in P} e^s_ip]``;
- ``spread``: ``alpha * attract + (1 - alpha) * repel``;
- ``supcon`` (Khosla et al., L_out): ``-(1/|P|) sum_{p in P} log[e^s_ip / sum_{j != i} e^s_ij]``;
- ``simclr`` / NT-Xent: ``-(1/|A|) sum_{a in A} log[e^s_ia / sum_{j != i} e^s_ij]`` (labels
  ignored).

Anchors for which a term is undefined (no positive, e.g. a singleton class with one view) contribute
nothing to that term, and the term is averaged over the anchors for which it is defined; with two
views every anchor has ``aug(i)``, so every term is the plain mean over all ``2B`` anchors. An
anchor without negatives (a batch of one class) gets ``attract = 0``.

All arithmetic runs in fp32 with autocast off. Under DDP pass ``gather=True``: embeddings are
gathered from every rank with gradients (:func:`robustrep.distributed.gather_with_grad`), labels
without, and the loss is computed on the global batch - identical to one process holding it.

Differences from the public thanos-code (reference_code.md section 4.2), on purpose: rows are
L2-normalised before the dot product (its "cosine" divides by the wrong norms), no positive-logit
clamp (its clamp is inverted), both views are anchors and same-view pairs count (it uses only
view-1 anchors against view-0 rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from robustrep.distributed import gather_no_grad, gather_with_grad, is_distributed
from robustrep.losses.fused_contrastive import MIN_TAU, FusedContrastive

#: The loss names accepted by :func:`contrastive_loss` and :class:`~robustrep.methods.SpreadSupCon`.
LOSSES = ("spread", "attract", "repel", "supcon", "simclr")

# The value of a masked log-sum-exp over an empty set: finite, so gradients stay finite.
_MASKED = -1.0e9


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log sum_{j: mask_j} exp(x_j)`` along ``dim``; ``-1e9`` where the mask is empty (so
    ``logaddexp(s, result) == s``) with a zero gradient there.

    The masked entries are filled with ``e^-80`` times the row's largest unmasked term (no change
    in fp32, and no gradient through them): ``exp`` of huge negative values (a ``-1e9`` fill)
    takes a slow path on some CPUs, 10x the cost of the whole row."""
    top = x.detach().masked_fill(~mask, float("-inf")).amax(dim, keepdim=True)
    empty = torch.isinf(top)
    floor = torch.where(empty, torch.zeros_like(top), top) - 80.0
    lse = torch.logsumexp(torch.where(mask, x, floor), dim=dim, keepdim=True)
    return torch.where(empty, torch.full_like(lse, _MASKED), lse).squeeze(dim)


def pair_masks(
    labels: torch.Tensor, instance: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boolean N x N masks ``(others, positives, negatives, same_instance)`` for rows with these
    ``labels`` and ``instance`` ids; ``others`` excludes the diagonal, so do ``positives`` and
    ``same_instance``."""
    n = labels.shape[0]
    others = ~torch.eye(n, dtype=torch.bool, device=labels.device)
    same_label = labels[:, None] == labels[None, :]
    same_instance = (instance[:, None] == instance[None, :]) & others
    return others, same_label & others, ~same_label, same_instance


def masked_info_nce(
    sim: torch.Tensor, pos_mask: torch.Tensor, denom_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The general InfoNCE family over a similarity matrix.

    ``loss_i = -(1/|pos_i|) sum_{p in pos_i} [sim_ip - log sum_{j in denom_i} exp(sim_ij)]``.
    SupCon is ``pos = same label, denom = all others``; NT-Xent ``pos = same instance, denom = all
    others``; L_repel ``pos = same instance, denom = same label``.

    Args:
        sim: N x M logits (already divided by the temperature).
        pos_mask: bool N x M, the positives of each anchor (should be a subset of ``denom_mask``).
        denom_mask: bool N x M, the terms of each anchor's denominator.

    Returns:
        ``(loss, valid)``: per-anchor losses (0 where the anchor has no positive) and a bool mask
        of the anchors that have at least one positive.
    """
    n_pos = pos_mask.sum(1)
    log_denom = masked_logsumexp(sim, denom_mask, dim=1)
    pos_sum = (sim * pos_mask).sum(1)
    valid = n_pos > 0
    loss = torch.where(valid, log_denom - pos_sum / n_pos.clamp(min=1), torch.zeros_like(log_denom))
    return loss, valid


def attract_terms(
    sim: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor L_attract: ``(1/|P|) sum_p [log(e^s_ip + sum_n e^s_in) - s_ip]``; returns
    ``(loss, valid)`` like :func:`masked_info_nce`."""
    n_pos = pos_mask.sum(1)
    log_neg = masked_logsumexp(sim, neg_mask, dim=1)  # N
    rows, cols = pos_mask.nonzero(as_tuple=True)  # only the positive pairs need the per-pair term
    s_pos = sim[rows, cols]
    # -log of each positive's softmax against the negatives
    per_pair = torch.logaddexp(s_pos, log_neg[rows]) - s_pos
    valid = n_pos > 0
    loss = torch.zeros_like(log_neg).index_add(0, rows, per_pair) / n_pos.clamp(min=1)
    return loss, valid


def _mean_valid(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def contrastive_loss(
    z: torch.Tensor,
    labels: torch.Tensor | None = None,
    instance: torch.Tensor | None = None,
    loss: str = "spread",
    tau: float = 0.5,
    alpha: float = 0.5,
    normalize: bool = True,
    gather: bool = False,
) -> torch.Tensor:
    """One of the contrastive losses over ``N`` rows (all rows are anchors), averaged over anchors.

    Args:
        z: N x d embeddings (any dtype; computed in fp32).
        labels: N class labels; None = every instance its own class (required for every loss but
            ``simclr``, which ignores them).
        instance: N instance ids (rows of one image share an id). None = every row its own
            instance, which leaves ``repel``/``simclr`` without positives (loss 0).
        loss: ``spread``, ``attract``, ``repel``, ``supcon`` or ``simclr``.
        tau: temperature; the paper uses 0.5 for L_spread, SimCLR-style runs 0.1-0.5.
        alpha: weight of ``attract`` in ``spread`` (1 = ``attract``, 0 = ``repel``); paper values
            per dataset are in METHODS.md (0.16-0.67).
        normalize: L2-normalise the rows first (turn off only for already-normalised input).
        gather: under DDP, gather ``z`` (with gradients), ``labels`` and ``instance`` from every
            rank before computing the loss. Instance ids must be unique per rank (they are offset by
            the rank so that they stay distinct globally). No effect in a single process.

    Returns:
        A scalar fp32 tensor.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown contrastive loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if labels is None and loss != "simclr":
        raise ValueError(f"the {loss!r} loss needs labels")
    n = z.shape[0]
    device = z.device
    if instance is None:
        instance = torch.arange(n, device=device)
    with torch.autocast(device_type=device.type, enabled=False):
        z = z.float()
        if normalize:
            z = F.normalize(z, dim=1)
        if gather and is_distributed():
            sizes = gather_no_grad(instance.max().reshape(1) + 1)
            shift = torch.cumsum(sizes, 0) - sizes  # ranks' instance ids become disjoint
            instance = gather_no_grad(instance + shift[torch.distributed.get_rank()])
            labels = None if labels is None else gather_no_grad(labels)
            z = gather_with_grad(z)
        if labels is None or loss == "simclr":
            labels = instance
        weights = term_weights(loss, alpha)
        if (isinstance(tau, torch.Tensor) and tau.requires_grad) or float(tau) < MIN_TAU:
            # differentiated w.r.t. the temperature (IRM's dummy scale), maybe twice, or a
            # temperature too low for one exp pass: the composable autograd formulation
            return _autograd_contrastive(z, labels, instance, tau, weights)
        return FusedContrastive.apply(z, labels, instance, tau, *weights)


def term_weights(loss: str, alpha: float = 0.5) -> tuple[float, float, float, float]:
    """The weights of the (attract, repel, supcon, simclr) terms that make up ``loss``."""
    return {
        "spread": (alpha, 1.0 - alpha, 0.0, 0.0),
        "attract": (1.0, 0.0, 0.0, 0.0),
        "repel": (0.0, 1.0, 0.0, 0.0),
        "supcon": (0.0, 0.0, 1.0, 0.0),
        "simclr": (0.0, 0.0, 0.0, 1.0),
    }[loss]


def _autograd_contrastive(z, labels, instance, tau, weights) -> torch.Tensor:
    """The same losses from masks and autograd (any order of derivative; slower)."""
    w_attract, w_repel, w_supcon, w_simclr = weights
    sim = z @ z.T / tau
    others, positives, negatives, same_instance = pair_masks(labels, instance)
    total = sim.new_zeros(())
    if w_attract:
        total = total + w_attract * _mean_valid(*attract_terms(sim, positives, negatives))
    if w_repel:
        total = total + w_repel * _mean_valid(*masked_info_nce(sim, same_instance, positives))
    if w_supcon:
        total = total + w_supcon * _mean_valid(*masked_info_nce(sim, positives, others))
    if w_simclr:
        total = total + w_simclr * _mean_valid(*masked_info_nce(sim, same_instance, others))
    return total


def stack_views(
    views: Sequence[torch.Tensor], labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Rows, labels and instance ids for ``V`` views of ``B`` examples (each B x d): ``V*B`` rows in
    view-major order (all of view 0, then view 1, ...), row ``v*B + i`` has instance ``i``."""
    b = views[0].shape[0]
    z = torch.cat(list(views))
    instance = torch.arange(b, device=z.device).repeat(len(views))
    return z, None if labels is None else labels.repeat(len(views)), instance


def spread(
    z1: torch.Tensor,
    z2: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.5,
    alpha: float = 0.5,
    gather: bool = False,
) -> torch.Tensor:
    """L_spread on two views (B x d each) with class ``labels`` (B); see
    :func:`contrastive_loss`.
    """
    z, y, inst = stack_views([z1, z2], labels)
    return contrastive_loss(z, y, inst, "spread", tau, alpha, gather=gather)


def attract(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, tau: float = 0.5, gather: bool = False
) -> torch.Tensor:
    """L_attract on two views (``spread`` with ``alpha = 1``)."""
    z, y, inst = stack_views([z1, z2], labels)
    return contrastive_loss(z, y, inst, "attract", tau, gather=gather)


def repel(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, tau: float = 0.5, gather: bool = False
) -> torch.Tensor:
    """L_repel, the class-conditional InfoNCE, on two views (``spread`` with ``alpha = 0``)."""
    z, y, inst = stack_views([z1, z2], labels)
    return contrastive_loss(z, y, inst, "repel", tau, gather=gather)


def supcon(
    z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, tau: float = 0.1, gather: bool = False
) -> torch.Tensor:
    """SupCon (Khosla et al., L_out, without the tau/tau_base scaling of the reference code) on two
    views.
    """
    z, y, inst = stack_views([z1, z2], labels)
    return contrastive_loss(z, y, inst, "supcon", tau, gather=gather)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5, gather: bool = False
) -> torch.Tensor:
    """SimCLR's NT-Xent on two views (B x d each): row ``i`` of ``z1`` and of ``z2`` are the
    positive pair, the other ``2B - 2`` rows the negatives; both views are anchors; mean over ``2B``
    anchors.

    This is the reusable self-supervised loss (IP-IRM, CRL-TAC). For a weighted or partitioned
    variant build the masks yourself and call :func:`masked_info_nce` on ``z @ z.T / tau``.
    """
    z, _, inst = stack_views([z1, z2])
    return contrastive_loss(z, None, inst, "simclr", tau, gather=gather)


simclr = nt_xent

__all__ = [
    "LOSSES",
    "attract",
    "attract_terms",
    "contrastive_loss",
    "masked_info_nce",
    "masked_logsumexp",
    "nt_xent",
    "pair_masks",
    "repel",
    "simclr",
    "spread",
    "stack_views",
    "supcon",
    "term_weights",
]


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor
) -> torch.Tensor:
    """SimSiam: ``-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2``, mean over the batch, in fp32."""
    with torch.autocast(device_type=p1.device.type, enabled=False):
        a = F.cosine_similarity(p1.float(), z2.detach().float(), dim=1).mean()
        b = F.cosine_similarity(p2.float(), z1.detach().float(), dim=1).mean()
        return -(a + b) / 2
