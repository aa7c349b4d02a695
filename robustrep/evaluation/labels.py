"""Label noise and labelled fractions for the L_spread downstream studies (SpreadSupCon's
``contrastive_label_noise`` and ``ce_labelled_fraction``, ``analyze noisy-labels|coreset``).
"""

from __future__ import annotations

import torch


def symmetric_noise(
    labels: torch.Tensor, rate: float, num_classes: int, seed: int = 0
) -> torch.Tensor:
    """Replace exactly ``round(rate * N)`` labels, chosen uniformly, by a uniformly drawn *other*
    class.
    """
    gen = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    flip = torch.randperm(n, generator=gen)[: round(rate * n)]
    noisy = labels.clone()
    shift = torch.randint(1, num_classes, (flip.shape[0],), generator=gen)
    noisy[flip] = (labels[flip] + shift) % num_classes
    return noisy


#: Added to the seed of :func:`labelled_subset` so that, with equal seeds and fractions, the
#: labelled examples are not the ones :func:`symmetric_noise` flips (both draw a permutation).
LABELLED_STREAM = 7919


def labelled_subset(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Positions ``0..n-1`` of exactly ``round(fraction * n)`` examples drawn uniformly (not
    stratified by class), sorted: the examples whose labels a head may see.

    The draw is seeded by ``seed + LABELLED_STREAM``, a stream distinct from the noise draw's.
    ``fraction`` 1 gives every position.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labelled fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed + LABELLED_STREAM)
    return torch.randperm(n, generator=gen)[: round(fraction * n)].sort().values
