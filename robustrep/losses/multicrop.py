"""Multi-crop InfoNCE: ``m`` views per instance, every view an anchor (CRL-TAC, METHODS.md section 3).

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

import torch
import torch.nn.functional as F

from robustrep.distributed import gather_with_grad, is_distributed
from robustrep.losses.contrastive import masked_info_nce


def multicrop_terms(z: torch.Tensor, m: int, beta: float = 0.5, normalize: bool = True) -> torch.Tensor:
    """Per-anchor multi-crop InfoNCE terms (length ``N = n * m``) for image-major rows ``z`` (N x d).

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


def multicrop_info_nce(z: torch.Tensor, m: int, beta: float = 0.5, normalize: bool = True, gather: bool = False) -> torch.Tensor:
    """Mean of :func:`multicrop_terms` over every anchor.

    Under DDP with ``gather=True`` the rows of every rank are gathered with gradients (every rank
    must hold the same number of rows) and the loss is that of one process holding the global
    batch; no effect in a single process.
    """
    if gather and is_distributed():
        z = gather_with_grad(z)
    return multicrop_terms(z, m, beta, normalize).mean()


__all__ = ["multicrop_info_nce", "multicrop_terms"]
