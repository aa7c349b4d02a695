"""CIMImages writes the input / mask / morphed grid as PNG."""

from __future__ import annotations

import pytest
import torch
from conftest import quick_trainer, tiny_synthetic
from PIL import Image

from robustrep.callbacks.cim_images import CIMImages
from robustrep.errors import ConfigError
from robustrep.methods import CIM, ERM


def test_writes_a_three_row_grid_of_inputs_masks_and_morphed_images(tmp_path):
    torch.manual_seed(0)
    model = CIM(backbone="tiny", num_classes=2, num_groups=4, image_shape=(3, 8, 8))
    callback = CIMImages(num_images=5)
    trainer = quick_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    dm = tiny_synthetic()
    trainer.fit(model, datamodule=dm)
    path = callback.last_path
    assert path is not None and path.exists() and path.name == "cim_masks_epoch000.png"
    width, height = Image.open(path).size
    assert (width, height) == (5 * 9 + 1, 3 * 9 + 1)  # 8-px images, 1-px padding
    images = torch.stack([dm.splits.val["val"][i]["image"] for i in range(5)])
    grid = callback.grid(model, images)
    torch.testing.assert_close(grid[:5], images)
    torch.testing.assert_close(grid[10:], model.morph(images).detach())
    assert ((grid[5:10] > 0) & (grid[5:10] < 1)).all()
    trainer.test(model, datamodule=dm, verbose=False)
    assert callback.last_path.exists()


def test_rejects_a_method_without_a_mask(tmp_path):
    with pytest.raises(ConfigError, match="follows MaskingModel .*ERM lacks mask, morph"):
        CIMImages().setup(
            quick_trainer(tmp_path), ERM(backbone="tiny", image_shape=(3, 8, 8)), "fit"
        )


def test_protocol_checks_name_what_is_missing():
    """Each method-specific callback checks its protocol; the real methods follow theirs."""
    from robustrep.callbacks.protocols import ChromaModel, CropPolicyModel, MaskingModel, require
    from robustrep.methods import CIM, CRLTAC, ChromaVAE

    require(MaskingModel, CIM(backbone="tiny", image_shape=(3, 8, 8)), "CIMImages")
    require(
        ChromaModel,
        ChromaVAE(image_shape=(3, 8, 8), backbone_kwargs={"width": 4, "hidden": 8}),
        "ChromaDiagnostics",
    )
    require(
        CropPolicyModel,
        CRLTAC(image_shape=(3, 16, 16), crop_size=8, crop_stride=4, m=2),
        "CRLTACMetrics",
    )
    with pytest.raises(
        ConfigError, match="ERM lacks crop_size, offsets, grid_shape, learned_policy, crop_outputs"
    ):
        require(CropPolicyModel, ERM(backbone="tiny", image_shape=(3, 8, 8)), "CRLTACMetrics")
