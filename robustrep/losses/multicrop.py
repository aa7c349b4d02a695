"""Multi-crop InfoNCE: ``m`` views per instance, every view an anchor (CRL-TAC, METHODS.md section
3).

Rows are image-major: row ``k * m + j`` is view ``j`` of instance ``k``. For anchor row ``i`` of
instance ``k`` with similarities ``s_ij = beta * <z_i, z_j>`` on L2-normalised rows:

``loss_i = -(1/(m-1)) sum_{j in same instance, j != i} s_ij + log sum_{j != i} exp(s_ij)``

i.e. the Jensen lower bound of the CRL-TAC objective (paper eqs. 18-19): the positives of a crop
are the other crops of the same image, the denominator runs over every crop of the batch but the
anchor itself. ``beta`` is an inverse temperature (``tau = 1 / beta``); with ``m = 2`` this is
exactly SimCLR's NT-Xent (:func:`robustrep.losses.contrastive.nt_xent` with ``tau = 1 / beta``).
It is :func:`~robustrep.losses.contrastive.masked_info_nce` with instance masks; fp32, autocast off.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robustrep.distributed import gather_no_grad, gather_with_grad, is_distributed, rank
from robustrep.losses.contrastive import masked_info_nce


def multicrop_terms(
    z: torch.Tensor, m: int, beta: float = 0.5, normalize: bool = True
) -> torch.Tensor:
    """Per-anchor multi-crop InfoNCE terms (length ``N = n * m``) for image-major rows ``z`` (N x
    d).

    Args:
        z: embeddings, ``m`` consecutive rows per instance.
        m: views per instance (>= 2).
        beta: inverse temperature of the similarity ``beta * a.b``.
        normalize: L2-normalise the rows first.
    """
    if m < 2:
        raise ValueError(f"multi-crop InfoNCE needs m >= 2 views per instance, got {m}")
    n = z.shape[0]
    if n % m:
        raise ValueError(f"{n} rows are not a whole number of instances with m = {m} views each")
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        if normalize:
            z = F.normalize(z, dim=1)
        sim = beta * (z @ z.T)
        instance = torch.arange(n, device=z.device) // m
        others = ~torch.eye(n, dtype=torch.bool, device=z.device)
        positives = (instance[:, None] == instance[None, :]) & others
        loss, _ = masked_info_nce(sim, positives, others)
    return loss


def weighted_multicrop_terms(
    z: torch.Tensor, log_w: torch.Tensor, m: int, beta: float = 0.5, weight_negatives: bool = True
) -> torch.Tensor:
    """Per-anchor multi-crop InfoNCE terms with importance weights on the positives and negatives.

    The policy step of CRL-TAC evaluates the objective (paper eq. 2, Jensen bound eqs. 18-19) on
    crops drawn *uniformly*, so every expectation over ``T ~ P(T|x)`` becomes a weighted sum with
    ``w_ik = P(t_ik|x_i) / sum_j P(t_ij|x_i)`` (self-normalised importance weights). For anchor
    ``(i, k)``:

    ``l_ik = -sum_{j != k} w_ij / (1 - w_ik) * s_ik,ij``
    ``+ log sum_{(i',j') != (i,k)} m w_i'j' exp(s_ik,i'j')``

    The positives (other crops of the same image) and the negatives (every other crop of the batch)
    are weighted by the policy; the anchor weight ``w_ik`` is applied by the caller. With uniform
    weights (``w = 1/m``) this equals :func:`multicrop_terms`.

    Args:
        z: L2-normalised embeddings (N x d, image-major, ``m`` rows per image); treated as
            constants.
        log_w: log of the per-image renormalised weights, ``N`` values (or ``n x m``); gradients
            flow through it.
        m: crops per image.
        beta: inverse temperature.
        weight_negatives: weight the denominator by ``m w`` (else plain: every other crop counts
            once).
    """
    n = z.shape[0]
    if m < 2 or n % m:
        raise ValueError(
            f"weighted multi-crop InfoNCE needs m >= 2 and whole instances, got N = {n}, m = {m}"
        )
    with torch.autocast(device_type=z.device.type, enabled=False):
        z = z.float()
        log_w = log_w.float().reshape(n)
        sim = beta * (z @ z.T)
        instance = torch.arange(n, device=z.device) // m
        others = ~torch.eye(n, dtype=torch.bool, device=z.device)
        positives = (instance[:, None] == instance[None, :]) & others
        neg_inf = torch.finfo(sim.dtype).min
        # w_ij / (1 - w_ik)
        pos_w = torch.softmax(log_w[None, :].masked_fill(~positives, neg_inf), dim=1)
        pos_term = (pos_w * sim).sum(1)
        logits = sim + log_w[None, :] + math.log(m) if weight_negatives else sim
        log_denom = torch.logsumexp(logits.masked_fill(~others, neg_inf), dim=1)
    return log_denom - pos_term


def cross_multicrop_terms(
    anchors: torch.Tensor, views: torch.Tensor, m: int, beta: float = 0.5
) -> torch.Tensor:
    """Per-anchor InfoNCE terms of ``anchors`` against a separate set of ``views`` of the same
    images.

    Both are image-major with ``m`` rows per image (``n * m`` rows each, L2-normalised). For anchor
    ``(i, k)``: ``-(1/m) sum_j s(a_ik, v_ij) + log sum_{i', j} exp(s(a_ik, v_i'j))``, with
    ``s = beta * a.b``: the positives are the views of the same image, the denominator every view
    of the batch. CRL-TAC's ``policy_objective: sampled`` uses it with uniformly drawn anchors and
    policy-drawn views (eq. 2's ``T' ~ P(T'|x)`` by sampling).
    """
    n = anchors.shape[0]
    if m < 1 or n % m or views.shape[0] != n:
        raise ValueError(
            f"cross multi-crop InfoNCE needs {n} anchors and views, m = {m} rows per image"
        )
    with torch.autocast(device_type=anchors.device.type, enabled=False):
        sim = beta * (anchors.float() @ views.float().T)
        same = (torch.arange(n, device=sim.device) // m)[:, None] == (
            torch.arange(n, device=sim.device) // m
        )[None, :]
        pos = (sim * same).sum(1) / m
        return torch.logsumexp(sim, dim=1) - pos


def multicrop_info_nce(
    z: torch.Tensor, m: int, beta: float = 0.5, normalize: bool = True, gather: bool = False
) -> torch.Tensor:
    """Mean of :func:`multicrop_terms` over every anchor.

    Under DDP with ``gather=True`` the rows of every rank are gathered with gradients (every rank
    must hold the same number of rows) and the loss is that of one process holding the global
    batch; no effect in a single process.
    """
    if gather and is_distributed():
        z = gather_with_grad(z)
    return multicrop_terms(z, m, beta, normalize).mean()


__all__ = [
    "cross_multicrop_terms",
    "multicrop_info_nce",
    "multicrop_terms",
    "weighted_multicrop_terms",
]


#: The per-crop term of CRL-TAC's policy step (see :func:`policy_objective_terms`).
POLICY_OBJECTIVES = ("anchor", "sampled", "full", "positives")


def policy_objective_terms(
    objective: str,
    z: torch.Tensor,
    log_w: torch.Tensor,
    m: int,
    beta: float,
    views: torch.Tensor | None = None,
    gather: bool = False,
) -> torch.Tensor:
    """This rank's per-crop terms ``l_ik`` of CRL-TAC's policy step (``N = n * m`` image-major
    rows).

    Args:
        objective: ``anchor`` = the plain per-crop InfoNCE term (uniform positives and negatives;
            no gradient); ``full`` = positives and negatives importance-weighted by ``w`` (the
            paper's eq. 2 / 18-19, :func:`weighted_multicrop_terms`); ``positives`` = only the
            positives weighted; ``sampled`` = positives and negatives are the policy-drawn
            ``views``.
        z: the uniformly drawn crops' normalised embeddings (fixed encoder), N x d.
        log_w: ``log P(t|x)`` renormalised over each image's crops, n x m (gradient flows into it).
        m, beta: crops per image and inverse temperature.
        views: ``sampled`` only: the policy-drawn crops' embeddings, N x d.
        gather: under DDP, contrast against every rank's crops (their weights enter as constants).
    """
    n_local = z.shape[0]
    if gather and is_distributed():
        z = gather_no_grad(z)
        views = gather_no_grad(views) if views is not None else None
    if objective in ("full", "positives"):
        all_log_w = log_w.reshape(-1)
        if z.shape[0] != n_local:
            gathered = gather_no_grad(all_log_w.detach())
            start = rank() * n_local
            all_log_w = torch.cat([gathered[:start], all_log_w, gathered[start + n_local :]])
        terms = weighted_multicrop_terms(
            z, all_log_w, m, beta, weight_negatives=objective == "full"
        )
    elif objective == "sampled":
        terms = cross_multicrop_terms(z, views, m, beta)
    elif objective == "anchor":
        with torch.no_grad():
            terms = multicrop_terms(z, m, beta, normalize=False)
    else:
        raise ValueError(
            f"unknown policy objective {objective!r}; choose one of {POLICY_OBJECTIVES}"
        )
    if z.shape[0] != n_local:
        terms = terms[rank() * n_local : rank() * n_local + n_local]
    return terms


def policy_step_loss(
    objective: str,
    z: torch.Tensor,
    log_p: torch.Tensor,
    index: torch.Tensor,
    m: int,
    beta: float,
    lambda_h: float,
    views: torch.Tensor | None = None,
    gather: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, entropy)`` of CRL-TAC's policy step: ``mean_i sum_k w_ik l_ik - lambda_h * mean_i
    H(P(T|x_i))`` with ``w_ij = P(t_ij|x_i)`` renormalised over each image's drawn crops.

    ``log_p``: B x T ``log P(t|x)`` (the gradient flows into it); ``index``: B x m numbers of the
    uniformly drawn crops whose fixed embeddings are ``z``; ``objective``, ``views`` and ``gather``
    as in :func:`policy_objective_terms`.
    """
    # P(t|x) renormalised over the sampled crops
    log_w = torch.log_softmax(log_p.gather(1, index), dim=1)
    terms = policy_objective_terms(objective, z, log_w, m, beta, views, gather=gather)
    expected = (log_w.exp() * terms.view(-1, m)).sum(1).mean()
    entropy = -(log_p.exp() * log_p).sum(1).mean()
    return expected - lambda_h * entropy, entropy
