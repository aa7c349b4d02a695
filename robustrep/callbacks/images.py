"""Save image grids and figures to the run directory (PNG) and to W&B when it is the logger.

Shared by every callback that shows pictures (CIM masks, Chroma-VAE reconstructions, CRL-TAC policy
heat maps): ``log_image_grid(trainer, "cim/masks", images)`` writes
``<run dir>/images/cim_masks_epoch003.png`` and logs the same grid under ``cim/masks``.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torchvision.utils import make_grid, save_image


def image_dir(trainer: pl.Trainer) -> Path:
    """``<run dir>/images`` (the Trainer's ``default_root_dir`` is the run directory under the
    CLI).
    """
    path = Path(trainer.default_root_dir) / "images"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _file_name(key: str, trainer: pl.Trainer) -> str:
    return f"{key.replace('/', '_')}_epoch{trainer.current_epoch:03d}.png"


def log_image_grid(
    trainer: pl.Trainer, key: str, images: torch.Tensor, nrow: int = 8, caption: str | None = None
) -> Path | None:
    """Write a grid of images (N x C x H x W in [0, 1]) as PNG and log it to W&B. Rank 0 only."""
    if not trainer.is_global_zero:
        return None
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    path = image_dir(trainer) / _file_name(key, trainer)
    save_image(grid, path)
    _log_wandb(trainer, key, str(path), caption)
    return path


def log_figure(trainer: pl.Trainer, key: str, figure) -> Path | None:
    """Save a matplotlib figure as PNG and log it to W&B. Rank 0 only; closes the figure."""
    import matplotlib.pyplot as plt

    if not trainer.is_global_zero:
        plt.close(figure)
        return None
    path = image_dir(trainer) / _file_name(key, trainer)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    _log_wandb(trainer, key, str(path), None)
    return path


def _log_wandb(trainer: pl.Trainer, key: str, path: str, caption: str | None) -> None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            extra = {"caption": [caption]} if caption else {}  # WandbLogger rejects caption=None
            logger.log_image(key=key, images=[path], step=trainer.global_step, **extra)
