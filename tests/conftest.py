"""Shared test helpers: tiny synthetic data, a quick Trainer, the CLI in-process."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
# One thread here (below) and in every process a test starts (they inherit the environment): tests
# compare subprocess runs with in-process references to 1e-6, and the kernels' summation order
# depends on the thread count (on the 2-core AMD machine a 2-thread run's test loss differed from
# the 1-thread one by 1e-5).
os.environ["OMP_NUM_THREADS"] = "1"

import lightning.pytorch as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from robustrep.data import SyntheticSpurious  # noqa: E402

torch.set_num_threads(1)

QUICKSTART = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml")
# CLI overrides that shrink the quickstart's synthetic benchmark to 8 px and 64 / 32 / 32 images
TINY_QUICKSTART = [
    "--data.init_args.size",
    "8",
    "--data.init_args.train_size",
    "64",
    "--data.init_args.val_size",
    "32",
    "--data.init_args.test_size",
    "32",
]


def tiny_synthetic(**overrides) -> SyntheticSpurious:
    """An 8-px synthetic benchmark small enough for a fit in about a second."""
    kwargs = dict(size=8, train_size=64, val_size=32, test_size=32, batch_size=16, seed=0)
    kwargs.update(overrides)
    return SyntheticSpurious(**kwargs)


def quick_trainer(tmp_path, **overrides) -> pl.Trainer:
    """A CPU Trainer with no logger, no checkpoints and no progress bar, scoring groups as the CLI
    does (``GroupMetrics`` in front of the given callbacks)."""
    from robustrep.callbacks import GroupMetrics

    overrides["callbacks"] = [GroupMetrics(), *(overrides.get("callbacks") or [])]
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a hand-made gloo process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_program(tmp_path, monkeypatch, source: str):
    """A stand-in for ``robustrep fit`` (the Python ``source``, which appends one JSON line per
    call to ``$FAKE_LOG``): returns ``(argv prefix, calls)``, ``calls()`` reading the log."""
    import json
    import sys

    script = tmp_path / "fake_fit.py"
    script.write_text(source)
    log = tmp_path / "fake_calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(log))

    def calls() -> list:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return [sys.executable, str(script)], calls


def run_cli(args: list[str]) -> int:
    """Run ``robustrep`` in-process; returns its exit status."""
    from robustrep.cli import main

    try:
        return main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.fixture(autouse=True)
def _fresh_run_seed(monkeypatch):
    """Every test starts without a run seed from an earlier test in the same worker
    (``seed_everything`` exports PL_GLOBAL_SEED, which the training sampler and the step seeds
    read)."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)


@pytest.fixture
def synthetic():
    return tiny_synthetic
