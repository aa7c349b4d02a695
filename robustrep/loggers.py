"""A run's loggers: W&B (offline unless ``WANDB_MODE`` says otherwise) and a local ``metrics.csv``,
both writing into the run directory, and the W&B conventions (group = benchmark, job type = method,
tags, the resolved config; the final metrics as the run summary).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def default_loggers() -> list[dict[str, Any]]:
    """The trainer's default ``logger``: W&B and a local metrics.csv (a new list every call)."""
    return [
        {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": "robustrep"},
        },
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "."}},
    ]


def place_loggers(logger: Any, run_dir: Path, name: str) -> None:
    """Point the configured ``trainer.logger`` specs at ``run_dir`` (W&B run name
    ``<name>/<run dir>``; ``<run dir>/metrics.csv`` without name/version subfolders)."""
    if isinstance(logger, list):
        specs = logger
    else:
        specs = [logger] if logger and not isinstance(logger, bool) else []
    for spec in specs:
        kind = str(spec.get("class_path", "")) if hasattr(spec, "get") else ""
        if "WandbLogger" in kind:
            spec.init_args.save_dir = str(run_dir)
            spec.init_args.name = spec.init_args.get("name") or f"{name}/{run_dir.name}"
        elif "CSVLogger" in kind:
            spec.init_args.save_dir, spec.init_args.name = str(run_dir), ""
            spec.init_args.version = ""


def configure_wandb(
    loggers: list, method: str, benchmark: str, tags: list[str], config: dict[str, Any]
) -> None:
    """Group = benchmark, job type = method, ``tags`` and ``config`` for the W&B runs of
    ``loggers`` that have not started yet."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is None:
            init = logger._wandb_init
            # the parsed config carries wandb.init's keyword arguments as explicit nulls: fill
            # those too
            init["group"] = init.get("group") or benchmark
            init["job_type"] = init.get("job_type") or method
            init["tags"] = sorted(set(init.get("tags") or []) | set(tags))
            init["config"] = dict(config)


def wandb_summary(loggers: list, metrics: dict[str, float]) -> None:
    """Final metrics as the W&B run summary; per-group accuracies as a W&B table."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        if getattr(run, "disabled", False) or not hasattr(run, "summary"):
            continue
        run.summary.update(metrics)
        rows = []
        for key, value in metrics.items():
            if "/group_acc/" in key and not key.startswith("last/"):
                prefix, group = key.split("/group_acc/", 1)
                rows.append([prefix, group, value])
        if rows:
            logger.log_table("group_accuracy", columns=["set", "group", "acc"], data=rows)
