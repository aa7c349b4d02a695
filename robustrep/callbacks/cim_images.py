"""CIM's learned masks and morphed images (the paper's fig. 2a) as PNG grids and W&B images.

Every ``every_n_epochs`` validation epochs (and once after testing) the callback takes the first
``num_images`` images of the primary validation (test) set and logs one grid under ``cim/masks``:
the inputs in the first row, the masks ``m`` (grey, white = kept) in the second, the morphed images
``psi(x) = m * x`` in the third (``nrow = num_images``). The PNG goes to
``<run dir>/images/cim_masks_epoch<NNN>.png`` (see :mod:`robustrep.callbacks.images`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from robustrep.callbacks.images import log_image_grid
from robustrep.callbacks.protocols import MaskingModel, require
from robustrep.callbacks.schedule import validation_due


class CIMImages(pl.Callback):
    """Log inputs, masks and morphed images of a fixed evaluation batch.

    Args:
        num_images: images per row (taken from the start of the primary eval set, so every epoch
            shows the same examples).
        every_n_epochs: log after every n-th validation epoch (0 = only after testing).
        key: the W&B key and PNG name prefix.
    """

    def __init__(
        self, num_images: int = 8, every_n_epochs: int = 1, key: str = "cim/masks"
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.key = key
        self.last_path = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        require(MaskingModel, pl_module, "CIMImages")

    def _images(self, trainer: pl.Trainer, stage: str) -> torch.Tensor | None:
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if loader is None:
            return None
        chunks, count = [], 0
        for batch in loader:
            chunks.append(batch["image"])
            count += len(batch["image"])
            if count >= self.num_images:
                break
        return torch.cat(chunks)[: self.num_images] if chunks else None

    @torch.no_grad()
    def grid(self, pl_module: pl.LightningModule, images: torch.Tensor) -> torch.Tensor:
        """Rows of inputs, masks (as grey images with the inputs' channels) and morphed images."""
        images = images.to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        mask = pl_module.mask(images).float()
        morphed = pl_module.morph(images).float()
        pl_module.train(was_training)
        return torch.cat([images.float(), mask.expand_as(images), morphed]).cpu()

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        images = self._images(trainer, stage)
        if images is None:
            return
        self.last_path = log_image_grid(
            trainer,
            self.key,
            self.grid(pl_module, images),
            nrow=len(images),
            caption="input / mask / morphed",
        )

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not validation_due(trainer, self.every_n_epochs):
            return
        self._log(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")
