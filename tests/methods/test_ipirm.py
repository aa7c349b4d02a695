"""IP-IRM: minimisation wiring, the maximisation step, partitions as checkpointed state, fit/test
end to end (32-bit, bf16-mixed, ddp_spawn), and every shipped IP-IRM / SimCLR / SimSiam / distill
config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import quick_trainer, run_cli, tiny_synthetic

from robustrep.callbacks import KNNMonitor, LinearProbe
from robustrep.losses.contrastive import nt_xent
from robustrep.losses.irm import min_share, soft_partition_objective
from robustrep.losses.partition import maximise_partition, rebalance
from robustrep.methods.ipirm import IPIRM

SMALL = dict(
    backbone="tiny",
    projection_hidden=16,
    projection_dim=8,
    maximise_epochs=4,
    maximise_batch_size=32,
)


def _model(dm, **kw) -> IPIRM:
    args = dict(SMALL, image_shape=dm.image_shape, num_classes=dm.num_classes, partition_every=1)
    args.update(kw)
    return IPIRM(**args)


def _toy_features(n: int = 240, d: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(4, d, generator=gen), dim=1)
    base = centres[torch.arange(n) % 4] + 0.5 * torch.randn(n, d, generator=gen)
    f1 = F.normalize(base + 0.2 * torch.randn(n, d, generator=gen), dim=1)
    f2 = F.normalize(base + 0.2 * torch.randn(n, d, generator=gen), dim=1)
    return f1, f2


def test_maximisation_raises_its_objective_and_respects_the_balance_constraint():
    f1, f2 = _toy_features()
    history: list[float] = []
    assign = maximise_partition(
        f1,
        f2,
        epochs=30,
        batch_size=240,
        patience=30,
        lr=0.5,
        milestones=(100,),
        seed=3,
        history=history,
    )
    # one chunk = the whole bank, so the history is the exact objective
    assert history[-1] > history[0] + 0.02
    start = torch.softmax(torch.randn(240, 2, generator=torch.Generator().manual_seed(3)), 1)
    before, _, _ = soft_partition_objective(f1, f2, start)
    after, _, _ = soft_partition_objective(f1, f2, F.one_hot(assign, 2).float())
    gen = torch.Generator().manual_seed(0)
    random_hard = [
        soft_partition_objective(
            f1, f2, F.one_hot(torch.randint(0, 2, (240,), generator=gen), 2).float()
        )[0]
        for _ in range(5)
    ]
    assert after > before + 0.02 and after > max(random_hard) + 0.02
    shares = torch.bincount(assign, minlength=2).float() / 240
    assert shares.min() >= min_share(2, 2.0) - 1e-6


def test_rebalance_moves_the_most_probable_members():
    assign = torch.zeros(9, dtype=torch.long)
    probs = torch.tensor([[0.9, 0.1]] * 6 + [[0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    out = rebalance(assign, probs, 1 / 3)
    assert torch.bincount(out, minlength=2).tolist() == [6, 3]
    assert set(out.nonzero().squeeze(1).tolist()) == {6, 7, 8}


def test_training_step_is_ssl_plus_mean_over_valid_subsets():
    dm = tiny_synthetic(num_views=2, augment="contrastive")
    torch.manual_seed(0)
    model = _model(dm, lambda1=0.3)
    part = torch.tensor([0, 1] * 32)
    part[5] = -1  # uncovered example
    model.add_partition(part, epoch=0)
    model.add_partition(torch.zeros(64, dtype=torch.long), epoch=1)  # subset 1 empty in every batch
    batch = next(iter(dm.train_dataloader()))
    model.eval()  # fixed batch-norm statistics so both computations see the same projections
    model.log_dict = lambda *a, **k: None
    loss = model.training_step(batch, 0)
    b = batch["index"].shape[0]
    z = model.projection(model.embed(torch.cat(batch["views"])))
    z1, z2 = z[:b], z[b:]
    expected = nt_xent(z1, z2, 0.5)
    terms = []
    for assignment in (part, torch.zeros(64, dtype=torch.long)):
        a = assignment[batch["index"]]
        for k in range(2):
            m = a == k
            if m.sum() < 2:
                continue
            w = torch.tensor(1.0, requires_grad=True)
            sub = nt_xent(z1[m], z2[m], 0.5 / w)
            (g,) = torch.autograd.grad(sub, w, retain_graph=True)
            terms.append(sub + 0.3 * g**2)
    expected = expected + torch.stack(terms).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)


def test_invariance_off_is_plain_simclr_and_never_partitions(tmp_path):
    dm = tiny_synthetic(num_views=2, augment="contrastive", train_size=32)
    model = _model(dm, invariance=False)
    quick_trainer(tmp_path, max_epochs=1).fit(model, dm)
    assert model.num_partitions == 0


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_and_test_end_to_end(tmp_path, precision):
    dm = tiny_synthetic(num_views=2, augment="contrastive", train_size=32)
    model = _model(dm, max_partitions=3)
    knn = KNNMonitor(k=10, every_n_epochs=1)
    trainer = quick_trainer(
        tmp_path, max_epochs=2, precision=precision, callbacks=[knn, LinearProbe()]
    )
    trainer.fit(model, dm)
    assert model.num_partitions == 2 and model.partition_epochs == [0, 1]
    for part in model.partitions:
        counts = torch.bincount(part, minlength=2)
        assert counts.min() >= 32 // 3
    assert np.isfinite(float(trainer.callback_metrics["train/irm_penalty"]))
    assert "val/knn/acc" in knn.last
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert 0.0 <= metrics["knn/acc"] <= 1.0 and 0.0 <= metrics["probe/acc"] <= 1.0


def test_simsiam_base_fits_with_partitions(tmp_path):
    dm = tiny_synthetic(num_views=2, augment="contrastive", train_size=32)
    model = _model(dm, base="simsiam")
    quick_trainer(tmp_path, max_epochs=1).fit(model, dm)
    assert model.num_partitions == 1
    assert {"train/ssl_loss", "train/subset_loss"} <= set(model.trainer.callback_metrics)


def test_partitions_survive_a_checkpoint_and_a_resumed_run_continues_with_them(tmp_path):
    dm = tiny_synthetic(num_views=2, augment="contrastive", train_size=32)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    model = _model(dm, partition_every=2)
    quick_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[ckpt]).fit(
        model, dm
    )
    first = model.partitions.clone()
    assert first.shape == (1, 32)
    loaded = IPIRM.load_from_checkpoint(tmp_path / "last.ckpt")
    assert torch.equal(loaded.partitions, first) and loaded.partition_epochs == [0]

    resumed = _model(dm, partition_every=2)
    quick_trainer(tmp_path, max_epochs=3, enable_checkpointing=True).fit(
        resumed, dm, ckpt_path=str(tmp_path / "last.ckpt")
    )
    # epoch 0's partition was not recomputed; epoch 2's was added
    assert resumed.partition_epochs == [0, 2]
    assert torch.equal(resumed.partitions[0], first[0])


class _DumpPartitions(pl.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(pl_module.partitions.cpu(), Path(self.folder) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_spawn_two_processes_identical_partitions(tmp_path):
    dm = tiny_synthetic(num_views=2, augment="contrastive", train_size=48, batch_size=8)
    model = _model(dm)
    trainer = quick_trainer(
        tmp_path,
        max_epochs=2,
        devices=2,
        strategy="ddp_spawn",
        callbacks=[_DumpPartitions(str(tmp_path))],
    )
    trainer.fit(model, dm)
    p0, p1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert p0.shape == (2, 48) and torch.equal(p0, p1)
    assert (p0 >= 0).all()  # every example (both ranks' shards) was assigned


EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CONFIGS = [
    "ipirm_stl10",
    "simclr_stl10",
    "ipirm_cifar10",
    "ipirm_vipriors",
    "simsiam_vipriors",
    "ipirm_simsiam_vipriors",
    "distill_vipriors",
]
# One per code path is fitted end to end (each CLI run costs ~5-15 s here); tests/test_configs.py
# instantiates all of them.
FITTED = ["ipirm_stl10", "ipirm_simsiam_vipriors", "distill_vipriors"]


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from datafixtures import write_cifar10, write_image_folder, write_stl10

    root = tmp_path_factory.mktemp("ipirm_data")
    write_cifar10(root, per_batch=4)
    write_stl10(root, n_train=10, n_test=10)
    write_image_folder(root / "imagenet_50" / "train", ["n01", "n02"], 3, tag=30)
    write_image_folder(root / "imagenet_50" / "val", ["n01", "n02"], 1, tag=31)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", FITTED)
def test_config_fits_and_tests_on_fixtures(name, fixture_root, tmp_path):
    config = EXPERIMENTS / f"{name}.yaml"
    args = [
        "fit",
        "--config",
        str(config),
        "--data.init_args.root",
        str(fixture_root),
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.num_workers",
        "0",
    ]
    args += ["--model.init_args.backbone", "tiny", "--model.init_args.backbone_kwargs", "{}"]
    if "vipriors" in name:
        args += ["--data.init_args.num_classes", "2", "--data.init_args.resolution", "16"]
    if "stl10" in name:
        # tiny is size-bound
        args += [
            "--data.init_args.include_unlabeled",
            "false",
            "--data.init_args.image_size",
            "null",
        ]
    if name.startswith(("ipirm", "simclr", "simsiam")):
        args += ["--model.init_args.maximise_epochs", "2"]
    args += [
        "--trainer.fast_dev_run",
        "1",
        "--trainer.logger",
        "false",
        "--output_root",
        str(tmp_path),
    ]
    assert run_cli(args) == 0
    (results,) = list(tmp_path.rglob("results.json"))
    metrics = json.loads(results.read_text())["metrics"]
    key = "test/acc" if name.startswith("distill") else "knn/acc"
    assert np.isfinite(metrics[key])


def test_self_supervised_colored_mnist_config_reports_alignment_probe_and_colour(tmp_path):
    # issue 20's benchmark end to end on the embedded digits (the research runs read MNIST's
    # files): a partition, the digit probe with groups, the colour probe, partition scores in
    # results.json
    args = [
        "fit",
        "--config",
        str(EXPERIMENTS / "ipirm_colored_mnist_ssl.yaml"),
        "--data.init_args.digits_source",
        "sklearn",
        "--model.init_args.maximise_epochs",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--run_dir",
        str(tmp_path / "run"),
    ]
    assert run_cli(args) == 0
    metrics = json.loads((tmp_path / "run" / "results.json").read_text())["metrics"]
    assert {"probe/worst_group_acc", "probe/test_iid/acc", "knn/acc"} <= set(metrics)
    assert 0.0 <= metrics["colour_probe/acc"] <= 1.0
    assert "colour_probe/worst_group_acc" not in metrics
    assert 0.0 <= metrics["partition/1/nmi_attribute"] <= 1.0
    assert 0.0 <= metrics["partition/1/match_label"] <= 1.0
    # the record's diagnostic runs on such a run (docs/reproductions/ipirm.md)
    script = Path(__file__).resolve().parents[2] / "diagnostics" / "ipirm_partition_objective.py"
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), "--chunk", "64", "--chunks", "2"]
        + ["--epochs", "2", "--lambda2", "0.5", "0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:5]}
    assert set(rows) == {"random", "attribute", "label"}
    for loss, penalty, at_half, at_zero in rows.values():
        # objective = loss + lambda2 x penalty, printed per lambda2
        assert float(at_half) == pytest.approx(float(loss) + 0.5 * float(penalty), abs=2e-4)
        assert float(at_zero) == pytest.approx(float(loss), abs=2e-4)
    assert out.count("attribute NMI") == 2
