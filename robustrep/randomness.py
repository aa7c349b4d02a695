"""Where training's random numbers come from (DESIGN.md, contract 6).

Every random draw a training run makes is a function of *where* it happens, not of what ran before:

- the order of the training examples in epoch ``e``: a permutation seeded by ``(run seed, e)``
  (:class:`robustrep.data.sampling.EpochSampler`);
- the augmentation of example ``i`` in epoch ``e``: torch's CPU generator seeded by
  ``(run seed, e, i)`` around that example's transform
  (:class:`robustrep.data.sampling.SeededExamples`);
- everything a training step draws (dropout, crops or triplets a method samples, reparameterisation
  noise): torch's, NumPy's and Python's generators reseeded by ``(run seed, epoch, batch, rank)``
  before the step (:class:`TrainingSeeds`);
- what an epoch-start hook draws (IP-IRM's partition step): reseeded by ``(run seed, epoch, rank)``.

Consequences: a run resumed from any checkpoint (epoch end or mid-epoch) continues exactly as the
uninterrupted run; validation, tests and evaluation callbacks cannot move training (they run between
steps and the next step reseeds); the number of DataLoader workers does not change the
augmentations. The run seed is ``seed_everything``'s (``PL_GLOBAL_SEED``; 0 when unset).
"""

from __future__ import annotations

import hashlib
import os
import random

import lightning.pytorch as pl
import numpy as np
import torch

_MASK_63 = (1 << 63) - 1


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends on every part (a stable hash: the same on every machine and
    run).
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK_63


def run_seed() -> int:
    """The run's seed: ``seed_everything``'s value (Lightning exports it as ``PL_GLOBAL_SEED``),
    else 0.
    """
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", "0"))
    except ValueError:
        return 0


def seed_generators(seed: int) -> None:
    """Reseed torch (CPU and the current accelerator), NumPy and Python's ``random`` from ``seed``.

    Uses ``torch.default_generator.manual_seed`` (about 1 us) rather than ``torch.manual_seed``
    (about 65 us: it also visits every accelerator backend), so reseeding every step is free.
    """
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():  # (is_available() loads NVML: ~0.3 ms per call)
        torch.cuda.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def _rank(trainer: pl.Trainer) -> int:
    return int(getattr(trainer, "global_rank", 0) or 0)


class TrainingSeeds(pl.Callback):
    """Reseed the global generators before every training epoch hook and every training step.

    The seeds are ``derive_seed(run seed, "epoch", epoch, rank)`` at the start of an epoch (before
    the method's own ``on_train_epoch_start``: callbacks run first) and
    ``derive_seed(run seed, "batch", epoch, batch index, rank)`` before each training batch. Methods
    draw from torch's global generator (or seed their own from these) and need nothing else.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def base(self) -> int:
        return run_seed() if self.seed is None else self.seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_generators(derive_seed(self.base(), "epoch", trainer.current_epoch, _rank(trainer)))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int
    ) -> None:
        seed_generators(
            derive_seed(self.base(), "batch", trainer.current_epoch, batch_idx, _rank(trainer))
        )


__all__ = ["TrainingSeeds", "derive_seed", "run_seed", "seed_generators"]
