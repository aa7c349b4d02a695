"""A run is a record (DESIGN.md, contract 6): stopped anywhere and resumed it ends exactly where the
uninterrupted run ends; evaluation never moves training; selection scores the selected weights;
nothing overwrites a record. Stops are real signals (in this process, or in a subprocess in the slow
tier)."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART, TINY_QUICKSTART, run_cli

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
QUIET = [
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
]
SYNTHETIC = [
    "--data",
    "robustrep.data.SyntheticSpurious",
    "--data.init_args.size",
    "8",
    "--data.init_args.train_size",
    "64",
]
SYNTHETIC += [
    "--data.init_args.val_size",
    "32",
    "--data.init_args.test_size",
    "32",
    "--data.init_args.batch_size",
    "16",
]
TINY_DATA = [*TINY_QUICKSTART, "--data.init_args.batch_size", "16"]

#: One configuration per family of training randomness (4 training batches per epoch).
FAMILIES = {
    "erm": ["--config", QUICKSTART, *TINY_DATA],
    "simclr_augmentations": [
        "--config",
        str(EXPERIMENTS / "simclr_synthetic.yaml"),
        *TINY_DATA,
        "--trainer.callbacks",
        "[]",
    ],
    "ipirm_partitions": [
        *[
            "--config",
            str(EXPERIMENTS / "ipirm_synthetic.yaml"),
            *TINY_DATA,
            "--trainer.callbacks",
            "[]",
        ],
        *[
            "--model.init_args.partition_every",
            "1",
            "--model.init_args.maximise_epochs",
            "2",
            "--model.init_args.maximise_batch_size",
            "32",
        ],
    ],
    "crltac_crops": [
        *[
            "--model",
            "robustrep.methods.CRLTAC",
            "--model.init_args.crop_size",
            "8",
            "--model.init_args.crop_stride",
            "4",
        ],
        *[
            "--model.init_args.m",
            "2",
            "--model.init_args.backbone_kwargs",
            '{"channels": [4, 4], "out_dim": 8}',
            *SYNTHETIC,
        ],
        *["--data.init_args.size", "16"],
    ],
    "chroma_stage2": [
        "--model",
        "robustrep.methods.ChromaVAE",
        "--model.init_args.backbone_kwargs",
        '{"width": 8, "hidden": 16}',
        *SYNTHETIC,
    ],
    "cim_triplets": [
        "--model",
        "robustrep.methods.CIM",
        "--model.init_args.backbone",
        "tiny",
        *SYNTHETIC,
    ],
    "jtt_phases": [
        "--config",
        str(EXPERIMENTS / "quickstart_jtt.yaml"),
        *TINY_DATA,
        "--model.init_args.identification_epochs",
        "2",
    ],
}


def stop_at(
    epoch: int, batch: int, signum: str = "SIGTERM", once_file: Path | None = None
) -> list[str]:
    init = {
        "epoch": epoch,
        "batch": batch,
        "signum": signum,
        "once_file": str(once_file) if once_file else None,
    }
    spec = [{"class_path": "runtools.SignalAt", "init_args": init}]
    return ["--trainer.callbacks", json.dumps(spec)]


def fit(run_dir: Path, *args: str) -> int:
    return run_cli(["fit", *args, *QUIET, "--run_dir", str(run_dir)])


def metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "results.json").read_text())["metrics"]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = metrics(a), metrics(b)
    assert set(ma) == set(mb)
    for key in ma:
        assert mb[key] == pytest.approx(ma[key], abs=1e-6), key
    sa, sb = final_state(a), final_state(b)
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=1e-6, rtol=0), key


# ------------------------------------------------------------------------------------ exact resume
@pytest.mark.parametrize("family", list(FAMILIES))
def test_stopped_mid_epoch_and_resumed_equals_uninterrupted(family, tmp_path, capsys):
    """SIGTERM in the middle of epoch 1 (a real signal to this process): the run saves, exits 143
    and prints the resume command; resuming ends with the uninterrupted run's metrics and
    weights."""
    args = [*FAMILIES[family], "--trainer.max_epochs", "3"]
    assert fit(tmp_path / "ref", *args) == 0
    assert fit(tmp_path / "run", *args, *stop_at(epoch=1, batch=1)) == 143
    err = capsys.readouterr().err
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 1
    assert not (tmp_path / "run" / "results.json").exists()
    (line,) = [ln for ln in err.splitlines() if ln.startswith("robustrep: stopped by SIGTERM")]
    assert f"checkpoint at epoch 1 step {state['global_step']}: {ckpt}" in line
    resume = shlex.split(line.split("; resume: ", 1)[1])
    assert resume[0] == "robustrep" and resume[-2:] == ["--ckpt_path", str(ckpt)]
    assert run_cli(resume[1:]) == 0
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_sigint_stops_with_130_and_resumes(tmp_path, capsys):
    args = [*FAMILIES["erm"], "--trainer.max_epochs", "2"]
    assert fit(tmp_path / "ref", *args) == 0
    assert fit(tmp_path / "run", *args, *stop_at(0, 2, "SIGINT")) == 130
    assert "robustrep: stopped by SIGINT; checkpoint at epoch 0 step 3:" in capsys.readouterr().err
    assert (
        fit(
            tmp_path / "run",
            *args,
            *stop_at(0, 2, "SIGINT"),
            "--ckpt_path",
            str(tmp_path / "run" / "checkpoints" / "last.ckpt"),
        )
        == 0
    )
    assert_same_run(tmp_path / "ref", tmp_path / "run")


@pytest.mark.parametrize("family", ["erm", "crltac_crops", "chroma_stage2"])
def test_validation_does_not_move_training(family, tmp_path):
    """The same run validated every epoch and never validated reaches identical weights."""
    args = [*FAMILIES[family], "--trainer.max_epochs", "2", "--selection", "last"]
    assert fit(tmp_path / "validated", *args) == 0
    assert fit(tmp_path / "unvalidated", *args, "--trainer.limit_val_batches", "0") == 0
    a, b = final_state(tmp_path / "validated"), final_state(tmp_path / "unvalidated")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ selection
def test_selection_tests_the_weights_of_the_best_validation_epoch(tmp_path, monkeypatch):
    log = tmp_path / "weights.json"
    spec = [{"class_path": "runtools.WeightsLog", "init_args": {"path": str(log)}}]
    args = [
        *FAMILIES["erm"],
        "--trainer.max_epochs",
        "4",
        "--trainer.callbacks",
        json.dumps(spec),
        "--selection",
        "auto",
    ]
    monkeypatch.chdir(tmp_path)  # a relative run directory, as `make demo` has
    assert run_cli(["fit", *args, *QUIET, "--run_dir", "run"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    record = json.loads(log.read_text())
    values = [v for _, v, _ in record["val"]]
    best = values.index(max(values))  # ties keep the earlier epoch
    selection = results["selection"]
    assert (
        selection["monitor"] == "val/worst_group_acc"
        and selection["mode"] == "max"
        and selection["reason"] == "auto"
    )
    assert selection["epoch"] == record["val"][best][0] and selection["value"] == pytest.approx(
        values[best]
    )
    # the last weights (not logged), then the selected ones
    last_pass, selected_pass = record["test"]
    assert selected_pass == record["val"][best][2] and last_pass == record["val"][-1][2]
    assert (tmp_path / "run" / selection["checkpoint"]).is_file()
    assert {"test/worst_group_acc", "last/test/worst_group_acc"} <= set(results["metrics"])


def test_selection_settings(tmp_path, capsys):
    assert (
        fit(tmp_path / "a", *FAMILIES["erm"], "--trainer.max_epochs", "1", "--selection", "last")
        == 0
    )
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    assert a["selection"]["mode"] == "last" and a["selection"]["reason"] == "configured"
    assert {k: v for k, v in a["metrics"].items() if k.startswith("last/")} == {
        f"last/{k}": v for k, v in a["metrics"].items() if not k.startswith("last/")
    }
    assert (
        fit(
            tmp_path / "b",
            *FAMILIES["simclr_augmentations"],
            "--trainer.max_epochs",
            "1",
            "--selection",
            "auto",
        )
        == 0
    )
    assert (
        "has no classifier"
        in json.loads((tmp_path / "b" / "results.json").read_text())["selection"]["reason"]
    )
    assert (
        fit(
            tmp_path / "c",
            *FAMILIES["erm"],
            "--trainer.max_epochs",
            "2",
            "--selection",
            "min:val/loss",
        )
        == 0
    )
    assert (
        json.loads((tmp_path / "c" / "results.json").read_text())["selection"]["monitor"]
        == "val/loss"
    )
    assert fit(tmp_path / "d", *FAMILIES["erm"], "--selection", "test/acc") == 2
    assert (
        fit(
            tmp_path / "e",
            *FAMILIES["erm"],
            "--selection",
            "val/acc",
            "--trainer.limit_val_batches",
            "0",
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "use auto, last, or a validation metric" in err and "needs validation, but it is off" in err
    )


def test_jtt_never_selects_its_identification_epochs(tmp_path):
    args = [*FAMILIES["jtt_phases"], "--trainer.max_epochs", "3"]
    assert fit(tmp_path / "run", *args) == 0
    selection = json.loads((tmp_path / "run" / "results.json").read_text())["selection"]
    assert selection["first_epoch"] == 2 and selection["epoch"] == 2


# ------------------------------------------------------------------------------------ records
def test_resume_refuses_a_changed_config_and_an_unasked_restart(tmp_path, capsys):
    args = [*FAMILIES["erm"], "--trainer.max_epochs", "2"]
    assert fit(tmp_path / "run", *args, *stop_at(0, 1)) == 143
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    config = (tmp_path / "run" / "config.yaml").read_bytes()
    assert (
        fit(
            tmp_path / "run",
            *args,
            *stop_at(0, 1),
            "--ckpt_path",
            ckpt,
            "--data.init_args.batch_size",
            "8",
        )
        == 2
    )
    assert "data.init_args.batch_size: 16 -> 8" in capsys.readouterr().err
    # no --ckpt_path: would train over the interrupted run
    assert fit(tmp_path / "run", *args, *stop_at(0, 1)) == 2
    assert f"resume it with --ckpt_path {ckpt}" in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config


def test_divergence_is_flagged(tmp_path, capsys):
    assert (
        fit(
            tmp_path / "run",
            *FAMILIES["erm"],
            "--trainer.max_epochs",
            "2",
            "--model.init_args.optimizer.lr",
            "1e6",
        )
        == 0
    )
    divergence = json.loads((tmp_path / "run" / "results.json").read_text())["divergence"]
    assert divergence["diverged"] and divergence["final_loss"] > 100 * divergence["first_loss"]
    assert "the run diverged" in capsys.readouterr().err
    assert fit(tmp_path / "ok", *FAMILIES["erm"], "--trainer.max_epochs", "1") == 0
    assert not json.loads((tmp_path / "ok" / "results.json").read_text())["divergence"]["diverged"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {}, "payload": _Payload(marker)}, f)
    assert fit(tmp_path / "run", *FAMILIES["erm"], "--ckpt_path", str(evil)) == 2
    assert run_cli(["analyze", "strata", "--ckpt", str(evil), "--config", QUICKSTART]) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's code ran"
    assert err.count("refused to load") == 2 and "Traceback" not in err


# ----------------------------------------------------------------------------------- real processes
def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PYTHONPATH": str(ROOT / "tests"),
        "PYTHONUNBUFFERED": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "robustrep.cli", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signum", "batch", "every", "code", "saved"),
    [
        ("SIGKILL", 1, 0, -signal.SIGKILL, (1, 8)),
        ("SIGKILL", 2, 2, -signal.SIGKILL, (2, 10)),
        ("SIGTERM", 1, 0, 143, (2, 10)),
    ],
    ids=["kill-9", "kill-9-with-step-checkpoints", "sigterm"],
)
def test_real_process_stopped_in_epoch_2_resumes_exactly(
    tmp_path, signum, batch, every, code, saved
):
    """A `robustrep fit` process gets SIGKILL (a crash: the end-of-epoch-1 checkpoint survives, or
    the one written every 2 steps) or SIGTERM (a clean stop after the current step) in the middle of
    epoch 2; resuming it gives the uninterrupted run's results.json metrics and weights."""
    args = [
        "fit",
        *FAMILIES["erm"],
        *QUIET,
        "--trainer.max_epochs",
        "4",
        "--checkpoint.every_n_train_steps",
        str(every),
    ]
    assert run_cli([*args, "--run_dir", str(tmp_path / "ref")]) == 0
    stopped = [
        *args,
        "--run_dir",
        str(tmp_path / "run"),
        *stop_at(2, batch, signum, once_file=tmp_path / "signalled"),
    ]
    proc = _cli(*stopped)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-2000:]
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # 4 steps per epoch: batch 1 of epoch 2 ends step 10
    assert (state["epoch"], state["global_step"]) == saved
    if signum == "SIGTERM":
        assert f"checkpoint at epoch 2 step 10: {tmp_path / 'run'}" in err and not list(
            (tmp_path / "run" / "checkpoints").glob(".*.tmp")
        )
    resume = _cli(*stopped, "--ckpt_path", str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    out, err = resume.communicate(timeout=300)
    assert resume.returncode == 0, err[-2000:]
    assert_same_run(tmp_path / "ref", tmp_path / "run")


def test_report_splits_mixed_configs_and_flags_repeats_divergence_and_evaluations(tmp_path, capsys):
    """The folder a week of work leaves: seeds of one config (one seed run twice), a diverged
    learning rate, a bf16 run and a test-only re-evaluation. report never pools them into one
    mean."""
    base = [
        "fit",
        *FAMILIES["erm"],
        *QUIET,
        "--trainer.max_epochs",
        "1",
        "--output_root",
        str(tmp_path / "runs"),
    ]
    for extra in (
        [],
        ["--seed_everything", "1"],
        [],
        ["--model.init_args.optimizer.lr", "1e6"],
        ["--trainer.precision", "bf16-mixed"],
    ):
        assert run_cli([*base, *extra]) == 0
    first = min((tmp_path / "runs" / "quickstart").iterdir())
    assert (
        run_cli(
            [
                "test",
                *FAMILIES["erm"],
                *QUIET,
                "--ckpt_path",
                str(first / "checkpoints" / "last.ckpt"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert run_cli(["report", str(tmp_path / "runs"), "--metrics", "test/acc"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [
        dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]
    assert header == [
        "method",
        "benchmark",
        "record",
        "config",
        "selection",
        "test/acc",
        "n",
        "flags",
    ]
    runs = [r for r in rows if r["record"] == "run"]
    assert sorted(int(r["n"]) for r in runs) == [1, 1, 3] and len(rows) == 4
    (repeats,) = [r for r in runs if r["n"] == "3"]
    assert repeats["flags"] == "repeated seed 0 x2" and "optimizer.lr=0.001" in repeats["config"]
    (diverged,) = [r for r in runs if "lr=1000000.0" in r["config"]]
    assert diverged["flags"] == "1 diverged"
    assert any("precision=bf16-mixed" in r["config"] for r in runs)
    (evaluation,) = [r for r in rows if r["record"] == "evaluation"]
    assert evaluation["n"] == "1" and evaluation["selection"] == "checkpoint"
    assert (
        "ERM / synthetic: 3 different configs, one row each" in out and "record = evaluation" in out
    )


def test_slurm_requeue_resumes_in_the_same_run_directory(tmp_path, monkeypatch):
    """Inside a SLURM batch job (its environment, a stand-in `scontrol` on PATH): the run directory
    is named by the job, SLURM's warning signal (SIGUSR1) makes Lightning write its HPC checkpoint
    and requeue the job, the time limit's SIGTERM stops the run cleanly, and the requeued job (the
    same command) resumes from the newest checkpoint and ends as the uninterrupted run."""
    args = [
        "fit",
        *FAMILIES["erm"],
        *QUIET,
        "--trainer.max_epochs",
        "3",
        "--output_root",
        str(tmp_path / "runs"),
    ]
    assert run_cli([*args[:-2], "--run_dir", str(tmp_path / "ref")]) == 0
    calls = tmp_path / "scontrol.calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "table",
        "SLURM_NODEID": "0",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    signals = [
        {
            "class_path": "runtools.SignalAt",
            "init_args": {
                "epoch": 1,
                "batch": 0,
                "signum": "SIGUSR1",
                "once_file": str(tmp_path / "usr1"),
            },
        },
        {
            "class_path": "runtools.SignalAt",
            "init_args": {
                "epoch": 1,
                "batch": 2,
                "signum": "SIGTERM",
                "once_file": str(tmp_path / "term"),
            },
        },
    ]
    job = [*args, "--trainer.callbacks", json.dumps(signals)]
    assert run_cli(job) == 143
    run_dir = tmp_path / "runs" / "quickstart" / "slurm-4242-s0"
    assert calls.read_text().split() == ["requeue", "4242"]
    assert (run_dir / "hpc_ckpt_1.ckpt").is_file() and (
        run_dir / "checkpoints" / "last.ckpt"
    ).is_file()
    assert run_cli(job) == 0  # the requeued job: same command, same directory, resumed
    assert [p.name for p in (tmp_path / "runs" / "quickstart").iterdir()] == ["slurm-4242-s0"]
    assert_same_run(tmp_path / "ref", run_dir)


def test_results_and_checkpoints_record_the_values_none_defaults_resolved_to(tmp_path):
    assert fit(tmp_path / "run", *FAMILIES["cim_triplets"], "--trainer.max_epochs", "1") == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"].get("model.init_args.tn_width") is None  # as configured (null) ...
    # ... and as built for 8-px images
    assert results["effective_hparams"] == {"tn_width": 8, "tn_depth": 1}
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
        "effective_hparams"
    ] == {"tn_width": 8, "tn_depth": 1}
