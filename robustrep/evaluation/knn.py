"""Two kNN classifiers on frozen features, named by what they compute.

- :func:`euclidean_knn_votes`: Euclidean distance, ``k`` nearest neighbours, uniform votes (the
  fractions scikit-learn's ``KNeighborsClassifier(algorithm="brute").predict_proba`` returns);
  Chroma-VAE's stage 2 and ``analyze chroma-latents``. :func:`knn_indices` is its neighbour search.
- :func:`cosine_knn_scores`: cosine similarity on normalised features, votes weighted by
  ``exp(similarity / temperature)`` (the InstDisc / IP-IRM monitor,
  :class:`~robustrep.callbacks.KNNMonitor`).

Both run on the bank's device in blocks whose size bounds the memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smallest_k(d: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, indices)`` of the ``k`` smallest entries of each row of ``d`` (in no particular
    order; any valid choice among exact ties), faster than ``topk`` on long rows.

    The row is cut into blocks of ``b`` columns; the ``k`` smallest entries lie in the ``k`` blocks
    with the smallest minima (an entry below the k-th smallest block minimum is in a block whose
    minimum is below it too), so ``topk`` runs over those ``k * b`` entries only.
    """
    m, n = d.shape
    b = min(32, n // (4 * k)) if k > 0 else 0
    if b < 4:
        return d.topk(k, dim=1, largest=False, sorted=False)
    blocks = -(-n // b)
    if blocks * b != n:  # pad the last block with +inf
        d = torch.cat([d, d.new_full((m, blocks * b - n), float("inf"))], 1)
    minima = d.view(m, blocks, b).amin(2)
    picked = minima.topk(k, dim=1, largest=False, sorted=False).indices  # m x k blocks
    columns = (picked[:, :, None] * b + torch.arange(b, device=d.device)).flatten(1)
    values, pos = d.gather(1, columns).topk(k, dim=1, largest=False, sorted=False)
    return values, columns.gather(1, pos)


@torch.no_grad()
def knn_indices(
    bank: torch.Tensor, queries: torch.Tensor, k: int, max_elements: int = 2**25
) -> torch.Tensor:
    """Indices (M x min(k, N)) of the ``k`` nearest bank rows (Euclidean, brute force) of each
    query.

    Distances are computed for as many queries at a time as fit in ``max_elements`` floats
    (default 128 MB) against the whole bank; if one query row alone is larger, the bank is also
    chunked and the running top-k merged. So 160k-example banks fit anywhere. Runs on ``bank``'s
    device.
    """
    bank = bank.float()
    queries = queries.to(bank.device).float()
    n = bank.shape[0]
    k = min(k, n)
    bank_sq = bank.square().sum(1)
    bank_chunk = min(n, max(k, max_elements))
    query_chunk = max(1, max_elements // bank_chunk)
    out = []
    # one distance buffer for every block: a fresh allocation of this size costs more than the
    # matrix product itself on a CPU (its pages are faulted in anew each time)
    buffer = torch.empty(min(query_chunk, queries.shape[0]) * bank_chunk, device=bank.device)
    for q in queries.split(query_chunk):
        # ||q||^2 is constant per row and does not change the ranking: rank by ||b||^2 - 2 q.b
        best_d = torch.empty((q.shape[0], 0), device=bank.device)
        best_i = torch.empty((q.shape[0], 0), dtype=torch.long, device=bank.device)
        for start in range(0, n, bank_chunk):
            block = bank[start : start + bank_chunk]
            d = buffer[: q.shape[0] * block.shape[0]].view(q.shape[0], block.shape[0])
            torch.addmm(bank_sq[start : start + bank_chunk], q, block.T, alpha=-2.0, out=d)
            if start == 0 and bank_chunk >= n:
                best_i = smallest_k(d, k)[1]
                break
            idx = torch.arange(start, start + d.shape[1], device=bank.device).expand(q.shape[0], -1)
            cand_d, cand_i = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            best_d, pos = cand_d.topk(min(k, cand_d.shape[1]), dim=1, largest=False)
            best_i = cand_i.gather(1, pos)
        out.append(best_i)
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=bank.device)


def knn_votes(neighbour_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """M x C vote fractions from the M x k labels of each query's neighbours (uniform votes)."""
    return F.one_hot(neighbour_labels, num_classes).sum(1).float() / neighbour_labels.shape[1]


@torch.no_grad()
def euclidean_knn_votes(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    num_classes: int,
    max_elements: int = 2**25,
) -> torch.Tensor:
    """Euclidean kNN with uniform votes (Chroma-VAE's stage 2), brute force on the device of
    ``bank``, in chunks (:func:`knn_indices`). Matches scikit-learn's
    ``KNeighborsClassifier(algorithm="brute")`` (ties between classes go to the lower class index).

    Args:
        bank: N x D training features; bank_labels: N ints.
        queries: M x D features to classify.
        k: number of neighbours (clipped to N).
        num_classes: number of classes C.
        max_elements: size of one distance block (speed/memory trade-off only).

    Returns:
        M x C vote fractions (``predict_proba``); ``argmax`` is the prediction.
    """
    if queries.shape[0] == 0:
        return torch.zeros(0, num_classes, device=bank.device)
    idx = knn_indices(bank, queries, k, max_elements)
    return knn_votes(bank_labels.to(bank.device)[idx], num_classes)


@torch.no_grad()
def cosine_knn_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 200,
    temperature: float = 0.5,
    num_classes: int | None = None,
    max_block_elements: int = 2**25,
) -> torch.Tensor:
    """Cosine kNN with similarity-weighted votes (InstDisc / IP-IRM's monitor): class scores.

    Args:
        bank: N x D features of the labelled examples (normalised here).
        bank_labels: N labels (examples with label < 0 are dropped).
        queries: M x D features to classify (normalised here), on any device (moved to ``bank``'s).
        k: neighbours per query (capped at N).
        temperature: vote weight ``exp(cos / temperature)`` (IP-IRM's monitor uses its contrastive
            temperature, 0.5).
        num_classes: number of classes (default ``max(label) + 1``).
        max_block_elements: bound on the elements of one query-chunk x bank similarity block.

    Returns:
        M x C summed vote weights (argmax = the prediction).
    """
    keep = bank_labels >= 0
    bank, bank_labels = (
        F.normalize(bank[keep].float(), dim=1),
        bank_labels[keep].long().to(bank.device),
    )
    c = num_classes or int(bank_labels.max()) + 1
    k = min(k, bank.shape[0])
    chunk = max(1, max_block_elements // max(bank.shape[0], 1))
    scores = []
    for q in queries.split(chunk):
        sim = F.normalize(q.to(bank.device).float(), dim=1) @ bank.T
        top, idx = sim.topk(k, dim=1)
        votes = torch.zeros(q.shape[0], c, device=bank.device)
        votes.scatter_add_(1, bank_labels[idx], torch.exp(top / temperature))
        scores.append(votes)
    return torch.cat(scores) if scores else torch.zeros(0, c, device=bank.device)
