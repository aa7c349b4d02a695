"""Pure, vectorised loss functions, one module per family."""

from robustrep.losses.contrastive import (
    attract,
    contrastive_loss,
    masked_info_nce,
    nt_xent,
    repel,
    simclr,
    spread,
    supcon,
)
from robustrep.losses.distillation import distillation_loss
from robustrep.losses.msssim import ms_ssim
from robustrep.losses.triplet import feature_triplet, gram_triplet, msssim_triplet
from robustrep.losses.vae import gaussian_kl, reparameterize

__all__ = [
    "distillation_loss",
    "feature_triplet",
    "gaussian_kl",
    "reparameterize",
    "gram_triplet",
    "ms_ssim",
    "msssim_triplet",
    "attract",
    "contrastive_loss",
    "masked_info_nce",
    "nt_xent",
    "repel",
    "simclr",
    "spread",
    "supcon",
]
