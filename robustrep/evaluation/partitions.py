"""How well a partition of the training set matches a known attribute (label, spurious attribute,
stratum): normalised mutual information and best-match accuracy.

IP-IRM's maximisation step should find the partition along which the representation breaks
invariance; on a benchmark with a planted attribute, these two numbers say whether it did.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score


def partition_alignment(assignment: torch.Tensor, attribute: torch.Tensor) -> dict[str, float]:
    """``{"nmi", "match"}`` of a partition against an attribute, over the examples both define.

    Args:
        assignment: N subset ids (``-1``: the example is in no subset, e.g. not in the training
            bank).
        attribute: N attribute values (``-1``: unknown).

    Returns:
        ``nmi``: scikit-learn's normalised mutual information (arithmetic mean; 1 = the same
        partition up to renaming, 0 = independent). ``match``: the share of examples whose subset
        is paired with their attribute value by the best one-to-one pairing of subsets and values
        (the Hungarian algorithm on the contingency table; 1 = identical up to renaming, with two
        subsets and a binary attribute at least 0.5).
    """
    assignment, attribute = assignment.cpu().long(), attribute.cpu().long()
    keep = (assignment >= 0) & (attribute >= 0)
    a, b = assignment[keep].numpy(), attribute[keep].numpy()
    if a.size == 0:
        raise ValueError("no example has both a subset and an attribute value")
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return {
        "nmi": float(normalized_mutual_info_score(b, a)),
        "match": float(table[rows, cols].sum() / a.size),
    }


__all__ = ["partition_alignment"]
