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
    return run_cli(["fit", "--config", config, *TINY, "--output_root", str(tmp_path / "runs"), *extra])


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
    for arg in ("--config", "--model", "--data", "--trainer.max_epochs", "--output_root", "--run_dir", "--seed_everything"):
        assert arg in out


def test_fit_writes_results_config_and_checkpoint(tmp_path, capsys):
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "ERM" and results["benchmark"] == "synthetic" and results["seed"] == 0
    assert {"test/acc", "test/worst_group_acc", "test/mean_group_acc", "test/weighted_acc"} <= set(results["metrics"])
    assert results["metrics"]["test/worst_group_acc"] <= results["metrics"]["test/acc"] + 1e-6
    assert len(results["config_digest"]) == 16 and "torch" in results["versions"]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
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
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline W&B run in the run directory"


def test_resume_from_checkpoint_continues_in_same_run_dir(tmp_path):
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, weights_only=False)["global_step"]
    assert fit(tmp_path, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "2") == 0
    assert run_dirs(tmp_path) == [run_dir]
    assert torch.load(ckpt, weights_only=False)["global_step"] == 2 * step


def test_test_subcommand_writes_results(tmp_path):
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    (run_dir / "results.json").unlink()
    args = ["test", "--config", QUICK, *TINY, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"), "--output_root", str(tmp_path / "runs")]
    assert run_cli(args) == 0
    assert json.loads((run_dir / "results.json").read_text())["stage"] == "test"


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
    assert fit(tmp_path) == 0
    (run_dir,) = run_dirs(tmp_path)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    real_ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: real_ce(*a, **k) * float("nan"))
    assert fit(tmp_path, "--ckpt_path", str(ckpt), "--trainer.max_epochs", "3") == 2
    err = capsys.readouterr().err
    assert "cross-entropy became nan" in err and "global step 4" in err and "Traceback" not in err
    assert ckpt.read_bytes() == before  # the last good checkpoint is untouched
