"""robustrep's LightningCLI subclass: links, run directories, W&B conventions, results.json.

A module of its own, imported only when a Lightning subcommand runs (``robustrep --help`` and
``robustrep data`` stay fast), and at module level so that ``ddp_spawn`` workers, which unpickle the
trainer and its ``SaveConfigCallback`` (whose parser refers to this class), can import it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import robustrep.data  # noqa: F401  (register the datamodules for class_path short names)
import robustrep.methods  # noqa: F401
from robustrep.cli import _default_name, _flat_config, _method_variant, _summary, _versions
from robustrep.data.base import RobustDataModule
from robustrep.methods.base import RobustMethod


class RobustRepCLI(LightningCLI):
    """LightningCLI with robustrep's links, run directories, results.json and summary."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", RobustMethod)
        kwargs.setdefault("datamodule_class", RobustDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # No prefix matching (a misspelt --trainer.max_epoch must not pass as max_epochs) and
        # parse errors raised to main(), which prints them as one short paragraph.
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False, "allow_abbrev": False})
        defaults = {
            "logger": {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "robustrep"}},
            "max_epochs": 10,
            "accelerator": "auto",
            "devices": 1,
        }
        defaults.update(kwargs.pop("trainer_defaults", None) or {})
        kwargs["trainer_defaults"] = defaults
        self.run_dir: Path | None = None
        self.config_digest = ""
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--output_root", type=str, default="runs", help="Folder under which every run gets its own directory.")
        parser.add_argument("--run_dir", type=str | None, default=None, help="Use exactly this run directory (default: a new one under output_root).")
        parser.add_argument("--name", type=str | None, default=None, help="Experiment name for the run directory and W&B (default: the config file's name).")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        for key in ("num_classes", "num_groups", "group_names", "image_shape"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    # -------------------------------------------------------------- run directory
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        self.config_digest = hashlib.sha256(self.parser.dump(self.config, skip_check=True).encode()).hexdigest()[:16]
        name = config.get("name") or _default_name(config)
        config["name"] = name
        run_dir = config.get("run_dir")
        ckpt_path = config.get("ckpt_path")
        if run_dir is None and ckpt_path and Path(str(ckpt_path)).parent.name == "checkpoints":
            run_dir = str(Path(str(ckpt_path)).parent.parent)  # resume into the interrupted run's directory
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = str(Path(config["output_root"]) / name / f"{stamp}-s{config.get('seed_everything')}-{secrets.token_hex(2)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config["run_dir"] = str(self.run_dir)
        config.trainer.default_root_dir = str(self.run_dir)
        config.checkpoint.dirpath = str(self.run_dir / "checkpoints")
        logger = config.trainer.get("logger")
        if logger and not isinstance(logger, bool | list) and "WandbLogger" in str(logger.get("class_path", "")):
            logger.init_args.save_dir = str(self.run_dir)
            logger.init_args.name = logger.init_args.get("name") or f"{name}/{self.run_dir.name}"

    # -------------------------------------------------------------- W&B conventions
    def _configure_wandb(self) -> None:
        """Group = benchmark, job type = method, tags, and the resolved config as the run config."""
        from lightning.pytorch.loggers import WandbLogger

        config = self.config[self.subcommand]
        method = type(self.model).__name__
        benchmark = getattr(self.datamodule, "benchmark_name", type(self.datamodule).__name__)
        variant = _method_variant(self.model)
        tags = [method, benchmark, f"seed{config.get('seed_everything')}"] + ([variant] if variant else [])
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger) and logger._experiment is None:
                init = logger._wandb_init
                # the parsed config carries wandb.init's keyword arguments as explicit nulls: fill those too
                init["group"] = init.get("group") or benchmark
                init["job_type"] = init.get("job_type") or method
                init["tags"] = sorted(set(init.get("tags") or []) | set(tags))
                init["config"] = {
                    **_flat_config(self._parser(self.subcommand).dump(config, skip_check=True)),
                    "config_digest": self.config_digest,
                    "method": method,
                    "benchmark": benchmark,
                    "variant": variant or "default",
                }

    def before_fit(self) -> None:
        self._configure_wandb()

    def before_test(self) -> None:
        self._configure_wandb()

    def before_validate(self) -> None:
        self._configure_wandb()

    # -------------------------------------------------------------- after the subcommands
    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        self.trainer.test(self.model, datamodule=self.datamodule)
        self._finish("fit")

    def after_test(self) -> None:
        self._finish("test")

    def _finish(self, stage: str) -> None:
        if not self.trainer.is_global_zero or self.run_dir is None:
            return
        # everything the final evaluation logged (test/, probe/, c2f/, knn/, method-specific ones
        # such as crltac/), not the training or validation curves
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if not k.startswith(("train/", "val/")) and v.numel() == 1}
        config = self.config[self.subcommand]
        results = {
            "stage": stage,
            "method": type(self.model).__name__,
            "variant": _method_variant(self.model),
            "benchmark": getattr(self.datamodule, "benchmark_name", type(self.datamodule).__name__),
            "name": config.get("name"),
            "seed": config.get("seed_everything"),
            "config_digest": self.config_digest,
            "run_dir": str(self.run_dir),
            "metrics": dict(sorted(metrics.items())),
            "versions": _versions(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path = self.run_dir / "results.json"
        path.write_text(json.dumps(results, indent=2))
        self._wandb_summary(results["metrics"])
        print(_summary(results, path))

    def _wandb_summary(self, metrics: dict[str, float]) -> None:
        """Final metrics as the W&B run summary; per-group accuracies as a W&B table."""
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            run = logger.experiment
            if getattr(run, "disabled", False) or not hasattr(run, "summary"):
                continue
            run.summary.update(metrics)
            rows = []
            for key, value in metrics.items():
                if "/group_acc/" in key:
                    prefix, group = key.split("/group_acc/", 1)
                    rows.append([prefix, group, value])
            if rows:
                logger.log_table("group_accuracy", columns=["set", "group", "acc"], data=rows)
