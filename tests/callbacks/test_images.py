import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

from robustrep.callbacks.images import log_image_grid


def test_image_grid_png_and_wandb_logger(tmp_path):
    trainer = pl.Trainer(
        logger=WandbLogger(save_dir=str(tmp_path)),
        default_root_dir=str(tmp_path),
        accelerator="cpu",
    )
    # no caption: must not crash W&B
    path = log_image_grid(trainer, "cim/masks", torch.rand(4, 3, 8, 8))
    assert path is not None and path.exists() and path.name == "cim_masks_epoch000.png"
    assert log_image_grid(trainer, "cim/masks", torch.rand(2, 1, 8, 8), caption="grey").exists()
    trainer.logger.experiment.finish()
