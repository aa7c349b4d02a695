"""Label noise for the noisy-label studies (SpreadSupCon's ``contrastive_label_noise``,
``analyze noisy-labels``).
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
