import json
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART as QUICK
from conftest import TINY_QUICKSTART, run_cli

TINY = [
    *TINY_QUICKSTART,
    "--data.init_args.batch_size",
    "16",
    "--trainer.max_epochs",
    "1",
    "--trainer.enable_progress_bar",
    "false",
]


def fit(tmp_path, *extra: str, config: str = QUICK) -> int:
    return run_cli(
        ["fit", "--config", config, *TINY, "--output_root", str(tmp_path / "runs"), *extra]
    )


def run_dirs(tmp_path) -> list[Path]:
    return sorted(p.parent for p in (tmp_path / "runs").glob("*/*/config.yaml"))


def test_top_level_help_lists_subcommands(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("fit", "validate", "test", "predict", "data"):
        assert f"  {sub}" in out


def test_fit_help_lists_documented_arguments(capsys):
    assert run_cli(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    for arg in (
        "--config",
        "--model",
        "--data",
        "--trainer.max_epochs",
        "--output_root",
        "--run_dir",
        "--seed_everything",
    ):
        assert arg in out


def test_fit_writes_results_config_and_checkpoint(tmp_path, capsys):
    assert fit(tmp_path, "--trainer.log_every_n_steps", "1") == 0
    (run_dir,) = run_dirs(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert (
        results["method"] == "ERM" and results["benchmark"] == "synthetic" and results["seed"] == 0
    )
    assert {"test/acc", "test/worst_group_acc", "test/mean_group_acc", "test/weighted_acc"} <= set(
        results["metrics"]
    )
    assert results["metrics"]["test/worst_group_acc"] <= results["metrics"]["test/acc"] + 1e-6
    assert len(results["config_digest"]) == 16 and "torch" in results["versions"]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    import pandas as pd

    # Lightning's CSV logger beside W&B, in the run directory
    curves = pd.read_csv(run_dir / "metrics.csv")
    assert {"step", "train/loss", "val/worst_group_acc", "test/worst_group_acc"} <= set(
        curves.columns
    )
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "test/worst_group_acc" in out and "results:" in out


def test_runs_never_collide_and_digest_tracks_config(tmp_path):
    assert fit(tmp_path) == 0
    assert fit(tmp_path) == 0
    assert fit(tmp_path, "--seed_everything", "1") == 0
    dirs = run_dirs(tmp_path)
    assert len(dirs) == 3
    digests = [json.loads((d / "results.json").read_text())["config_digest"] for d in dirs]
    assert len(set(digests)) == 2  # the two seed-0 runs share a config; the seed-1 run differs


def test_offline_wandb_run_is_written(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()  # earlier tests set up wandb's process-wide settings in disabled mode
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    assert list((run_dir / "wandb").glob("offline-run-*")), (
        "no offline W&B run in the run directory"
    )


def test_finished_run_is_never_resumed_into_but_can_seed_a_new_run(tmp_path, capsys):
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    before = {name: (run_dir / name).read_bytes() for name in ("results.json", "config.yaml")}
    step = torch.load(ckpt, weights_only=True)["global_step"]
    assert fit(tmp_path, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "2") == 2
    assert "is a finished run" in capsys.readouterr().err
    assert {name: (run_dir / name).read_bytes() for name in before} == before
    longer = tmp_path / "longer"
    assert (
        fit(
            tmp_path,
            "--ckpt_path",
            str(ckpt),
            "--trainer.max_epochs",
            "2",
            "--run_dir",
            str(longer),
        )
        == 0
    )
    assert (
        torch.load(longer / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == 2 * step
    )
    assert json.loads((longer / "results.json").read_text())["ckpt_path"] == str(ckpt)


def test_test_subcommand_writes_an_evaluation_record_beside_the_run(tmp_path):
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    before = {
        p.relative_to(run_dir): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and "wandb" not in p.parts
    }
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    args = [
        "test",
        "--config",
        QUICK,
        *TINY,
        "--ckpt_path",
        str(ckpt),
        "--trainer.max_epochs",
        "4",
        "--output_root",
        str(tmp_path / "runs"),
    ]
    assert run_cli(args) == 0
    after = {
        p.relative_to(run_dir): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and "wandb" not in p.parts and "evaluations" not in p.parts
    }
    assert after == before  # the training run's files are byte-identical
    (evaluation,) = (run_dir / "evaluations").iterdir()
    results = json.loads((evaluation / "results.json").read_text())
    assert (
        results["record"] == "evaluation"
        and results["stage"] == "test"
        and results["evaluates"] == str(run_dir)
    )
    assert results["selection"]["mode"] == "checkpoint" and results["selection"]["epoch"] == 0
    assert "max_epochs: 4" in (evaluation / "config.yaml").read_text()
    fitted = json.loads((run_dir / "results.json").read_text())
    assert results["metrics"]["test/acc"] == pytest.approx(
        fitted["metrics"]["last/test/acc"], abs=1e-6
    )


def test_test_with_the_runs_own_config_needs_run_dir_null_and_says_so(tmp_path, capsys):
    """The run's config.yaml pins its run_dir: the refusal names the fix, and the fix works
    (the way docs/reproductions/cim.md evaluates other test readings of a trained run)."""
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    args = ["test", "--config", str(run_dir / "config.yaml"), "--ckpt_path"]
    args += [str(run_dir / "checkpoints" / "last.ckpt")]
    assert run_cli(args) == 2
    assert "--run_dir null" in capsys.readouterr().err
    assert run_cli([*args, "--run_dir", "null"]) == 0
    (evaluation,) = (run_dir / "evaluations").iterdir()
    assert json.loads((evaluation / "results.json").read_text())["evaluates"] == str(run_dir)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--trainer.max_epoch", "3"], "Did you mean `max_epochs`?"),
        (["--model.init_args.lrr", "0.1"], "not accepted"),
        (["--data.init_args.batch_size", "abc"], "Expected a <class 'int'>"),
        (["--data.init_args.size", "4"], "size must be between 8 and 64"),
    ],
)
def test_bad_config_gives_one_paragraph(tmp_path, capsys, override, expected):
    assert fit(tmp_path, *override) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoints(tmp_path, capsys, monkeypatch):
    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def ce_nan_after_epoch_0(*args, **kwargs):  # 4 training steps per epoch
        calls["n"] += 1
        loss = real_ce(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", ce_nan_after_epoch_0)
    assert (
        fit(
            tmp_path,
            "--trainer.max_epochs",
            "3",
            "--trainer.limit_val_batches",
            "0",
            "--selection",
            "last",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "cross-entropy became nan" in err and "Traceback" not in err
    assert "--model.init_args.optimizer.lr" in err  # the hint names an override that parses
    (run_dir,) = run_dirs(tmp_path)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["epoch"] < 3 and all(torch.isfinite(v).all() for v in state["state_dict"].values())
    assert not (run_dir / "results.json").exists()


def test_methods_lists_every_method_with_its_paper_and_configs(capsys):
    import robustrep.methods as methods
    from robustrep.methods.base import RobustMethod

    assert run_cli(["methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    classes = [
        n
        for n, c in vars(methods).items()
        if isinstance(c, type)
        and issubclass(c, RobustMethod)
        and n not in ("RobustMethod", "Classifier")
    ]
    for name in classes:
        assert f"\n{name}: " in f"\n{out}", name
    assert "experiments/chroma_colored_mnist.yaml" in out and "colored_mnist_irm" in out
    for config in sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml")):
        # every shipped config is listed under its method
        assert f"experiments/{config.name}" in out, config.name


def test_help_of_a_method_is_short():
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        run_cli(["fit", "--model.help", "ERM"])
    text = buffer.getvalue()
    flat = " ".join(text.split())
    assert "--model.backbone" in text and "any class_path of a subclass of torch.nn.Module" in flat
    assert "torch.nn.Identity" not in text and len(text.splitlines()) < 120
