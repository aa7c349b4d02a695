"""Lightning's real DDP on CPU (gloo, 2 spawned processes) gives the metrics of one process."""

import lightning.pytorch as pl
import pytest
from conftest import free_port, quick_trainer, tiny_synthetic

from robustrep.methods import ERM, GroupDRO


def _run(tmp_path, method, devices: int, batch_size: int) -> dict[str, float]:
    pl.seed_everything(0)
    dm = tiny_synthetic(
        batch_size=batch_size,
        eval_batch_size=8,
        shuffle_train=False,
        train_size=64,
        test_size=40,
        val_size=16,
    )
    model = method(
        backbone="mlp",
        backbone_kwargs={"hidden": [32]},
        num_groups=4,
        image_shape=(3, 8, 8),
        group_names=dm.group_names,
    )
    strategy = "ddp_spawn" if devices > 1 else "auto"
    trainer = quick_trainer(
        tmp_path / f"d{devices}", devices=devices, strategy=strategy, max_epochs=2
    )
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


def _close_worker(rank: int, port: int, queue) -> None:
    import os
    from types import SimpleNamespace

    import torch.distributed as dist
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    from robustrep.distributed import close_spawned_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    # e.g. plain `ddp`: keep it
    close_spawned_process_group(SimpleNamespace(strategy=SimpleNamespace(launcher=None)))
    kept = dist.is_initialized()
    spawn_launcher = object.__new__(_MultiProcessingLauncher)
    close_spawned_process_group(SimpleNamespace(strategy=SimpleNamespace(launcher=spawn_launcher)))
    queue.put((rank, kept, dist.is_initialized()))


@pytest.mark.slow
def test_spawned_worker_closes_its_process_group():
    """A ddp_spawn worker closes its gloo group itself instead of leaving it to the interpreter's
    exit.
    """
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_close_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {rank: rest for rank, *rest in (queue.get(timeout=60) for _ in procs)}
    for p in procs:
        p.join(timeout=30)
    assert results == {0: [True, False], 1: [True, False]}
    assert [p.exitcode for p in procs] == [0, 0]


@pytest.mark.slow
def test_cli_fit_under_ddp_spawn_matches_a_one_process_test_of_its_checkpoint(tmp_path):
    """`robustrep fit ... --trainer.strategy ddp_spawn` (the trainer and its config callback are
    pickled into the workers) writes results.json whose test metrics, gathered over 2 ranks, equal a
    1-process test."""
    import json

    from conftest import QUICKSTART, TINY_QUICKSTART, run_cli

    common = [
        "--config",
        QUICKSTART,
        *TINY_QUICKSTART,
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
    ]
    ddp = [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp_spawn",
    ]
    assert (
        run_cli(
            [
                "fit",
                *common,
                *ddp,
                "--trainer.max_epochs",
                "2",
                "--output_root",
                str(tmp_path / "ddp"),
            ]
        )
        == 0
    )
    (fit_results,) = (tmp_path / "ddp").glob("quickstart/*/results.json")
    ckpt = fit_results.parent / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    fitted = json.loads(fit_results.read_text())
    distributed = fitted["metrics"]
    # the selected epoch's weights -> test/*
    best = fit_results.parent / fitted["selection"]["checkpoint"]
    for name, path, prefix in (("one_last", ckpt, "last/"), ("one_best", best, "")):
        assert (
            run_cli(["test", *common, "--ckpt_path", str(path), "--run_dir", str(tmp_path / name)])
            == 0
        )
        single = json.loads((tmp_path / name / "results.json").read_text())["metrics"]
        assert {"test/acc", "test/worst_group_acc"} <= set(single)
        for key in single:
            assert distributed[prefix + key] == pytest.approx(single[key], abs=1e-5), key


@pytest.mark.slow
def test_two_nodes_under_torchrun_write_one_run(tmp_path):
    """`robustrep fit` as two "nodes" of one process each, started by two real torchrun agents
    (--nnodes 2 --node_rank 0/1, rendezvous at 127.0.0.1) as on two machines, gloo on CPU: both
    ranks finish, both use the run directory named by torchrun's run id, which holds one record;
    its test metrics, gathered over the two processes, equal a one-process test of its weights."""
    import json
    import os
    import subprocess
    import sys

    from conftest import QUICKSTART, TINY_QUICKSTART, run_cli

    fit = [
        "fit",
        "--config",
        QUICKSTART,
        *TINY_QUICKSTART,
        "--trainer.max_epochs",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
    ]
    nodes = ["--trainer.accelerator", "cpu", "--trainer.num_nodes", "2", "--trainer.devices", "1"]
    nodes += ["--trainer.strategy", "ddp", "--output_root", str(tmp_path / "runs")]
    port = str(free_port())
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"),
                *("--nproc_per_node", "1", "--node_rank", str(rank), "--rdzv-id", "two-nodes"),
                *("--master_addr", "127.0.0.1", "--master_port", port),
                *("-m", "robustrep.cli", *fit, *nodes),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outs[1]
    (run,) = (tmp_path / "runs" / "quickstart").iterdir()
    assert run.name == "torchrun-two-nodes-s0"
    assert sorted(p.name for p in run.iterdir() if p.suffix in (".json", ".yaml")) == [
        "config.yaml",
        "results.json",
    ]
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["trainer.num_nodes"] == 2
    distributed = results["metrics"]
    assert 0 <= distributed["test/worst_group_acc"] <= distributed["test/acc"] <= 1
    best = run / results["selection"]["checkpoint"]
    assert (
        run_cli(["test", *fit[1:], "--ckpt_path", str(best), "--run_dir", str(tmp_path / "one")])
        == 0
    )
    single = json.loads((tmp_path / "one" / "results.json").read_text())["metrics"]
    for key in single:
        assert distributed[key] == pytest.approx(single[key], abs=1e-5), key


def test_several_processes_under_torchrun_need_a_run_id_or_dir(tmp_path, monkeypatch, capsys):
    """torchrun's default run id ("none") names nothing the processes agree on: a clear error."""
    from conftest import QUICKSTART, run_cli

    for key, value in {"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    args = [
        "fit",
        "--config",
        QUICKSTART,
        "--output_root",
        str(tmp_path),
        "--trainer.logger",
        "false",
    ]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert "torchrun a run id (--rdzv-id NAME" in err and "--run_dir DIR" in err
    assert not (tmp_path / "quickstart").exists()
