"""Lightning's real DDP on CPU (gloo, 2 spawned processes) gives the metrics of one process."""

import lightning.pytorch as pl
import pytest
from conftest import quick_trainer, tiny_synthetic

from robustrep.methods import ERM, GroupDRO


def _run(tmp_path, method, devices: int, batch_size: int) -> dict[str, float]:
    pl.seed_everything(0)
    dm = tiny_synthetic(batch_size=batch_size, eval_batch_size=8, shuffle_train=False, train_size=64, test_size=40, val_size=16)
    model = method(backbone="mlp", backbone_kwargs={"hidden": [32]}, num_groups=4, image_shape=(3, 8, 8), group_names=dm.group_names)
    strategy = "ddp_spawn" if devices > 1 else "auto"
    trainer = quick_trainer(tmp_path / f"d{devices}", devices=devices, strategy=strategy, max_epochs=2)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}


@pytest.mark.slow
@pytest.mark.parametrize("method", [ERM, GroupDRO])
def test_two_processes_match_one(tmp_path, method):
    # one process with batch 16 == two processes with batch 8 each (same global batch, no shuffling)
    single = _run(tmp_path, method, devices=1, batch_size=16)
    double = _run(tmp_path, method, devices=2, batch_size=8)
    assert {"test/acc", "test/worst_group_acc", "test/weighted_acc"} <= set(single)
    assert set(single) == set(double)
    for key in single:
        assert double[key] == pytest.approx(single[key], abs=1e-4), key
