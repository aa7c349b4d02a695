"""robustrep's LightningCLI subclass: links, run records, model selection, results.json.

A module of its own, imported only when a Lightning subcommand runs (``robustrep --help`` and
``robustrep data`` stay fast), and at module level so that ``ddp_spawn`` workers, which unpickle the
trainer, can import it. The record layout and ``results.json`` are described in
:mod:`robustrep.records`; checkpoints, stops and the selection callback in
:mod:`robustrep.lifecycle`; ``--selection`` and the test pass in :mod:`robustrep.selection`; the
loggers and W&B conventions in :mod:`robustrep.loggers`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import robustrep.data  # noqa: F401  (register the datamodules for class_path short names)
import robustrep.methods  # noqa: F401
from robustrep.data.base import RobustDataModule
from robustrep.lifecycle import LossWatch, RunCheckpoint, RunStopped, Selection, stop_requested
from robustrep.loggers import configure_wandb, default_loggers, place_loggers, wandb_summary
from robustrep.methods.base import RobustMethod
from robustrep.records import (
    choose_run_dir,
    config_key,
    default_name,
    digest,
    flat_config,
    method_variant,
    run_of_checkpoint,
    summary_text,
    versions,
    write_json,
)
from robustrep.selection import (
    SELECTION_HELP,
    build_selection,
    checkpoint_record,
    final_metrics,
    run_test_pass,
    selection_record,
)


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, without the enumeration of every importable ``torch.nn.Module`` /
    ``torch.optim.Optimizer`` subclass after arguments typed with them (hundreds of lines for
    ``backbone``); a line says that any class path of that base is accepted instead."""

    MAX_LISTED = 12

    def _get_help_string(self, action) -> str:
        text = super()._get_help_string(action)
        head, sep, rest = text.partition(", known subclasses: ")
        if not sep:
            return text
        names, close, tail = rest.rpartition(")")
        listed = [n.strip() for n in names.split(",")]
        if len(listed) <= self.MAX_LISTED:
            return text
        return f"{head}, any class_path of a subclass of {listed[0]}{close}{tail}"


class ArgumentParser(LightningArgumentParser):
    """Lightning's argument parser with :class:`HelpFormatter` (also for ``--model.help CLASS``,
    which jsonargparse builds as a new parser of this class)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def _launched_rank() -> int:
    """The rank a multi-process launcher gave this process (0 when there is none)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def resume_command(argv: list[str], ckpt: Path) -> str:
    """``argv`` as a ``robustrep`` command line with ``--ckpt_path`` set to ``ckpt``."""
    import shlex

    out: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token == "--ckpt_path":
            skip = True
            continue
        if token.startswith("--ckpt_path="):
            continue
        out.append(token)
    return shlex.join(["robustrep", *out, "--ckpt_path", str(ckpt)])


class RobustRepCLI(LightningCLI):
    """LightningCLI with robustrep's links, run records, selection, results.json and summary."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", RobustMethod)
        kwargs.setdefault("datamodule_class", RobustDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("seed_everything_default", 0)
        # the record writes config.yaml itself (never over another)
        kwargs.setdefault("save_config_callback", None)
        # methods take their optimiser as an argument
        kwargs.setdefault("auto_configure_optimizers", False)
        # No prefix matching (a misspelt --trainer.max_epoch must not pass as max_epochs) and
        # parse errors raised to main(), which prints them as one short paragraph.
        kwargs.setdefault("parser_kwargs", {"exit_on_error": False, "allow_abbrev": False})
        kwargs.setdefault("parser_class", ArgumentParser)
        defaults = {
            "logger": default_loggers(),
            "max_epochs": 10,
            "accelerator": "auto",
            "devices": 1,
        }
        defaults.update(kwargs.pop("trainer_defaults", None) or {})
        kwargs["trainer_defaults"] = defaults
        self.argv = list(kwargs.get("args") or sys.argv[1:])
        self.run_dir: Path | None = None
        self.record = "run"
        self.flat: dict[str, Any] = {}
        self.config_digest = ""
        self.selection: Selection | None = None
        self.selection_reason = ""
        self.loss_watch = LossWatch()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            super().__init__(*args, **kwargs)
        except BaseException as err:
            # a stop (signal) anywhere in the run: name the checkpoint and the resume command
            signum = err.signum if isinstance(err, RunStopped) else stop_requested()
            if signum is None:
                raise
            raise self._stopped(signum) from err

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--output_root",
            type=str,
            default="runs",
            help="Folder under which every run gets its own directory.",
        )
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="Use exactly this run directory (default: a new one under output_root).",
        )
        parser.add_argument(
            "--name",
            type=str | None,
            default=None,
            help="Experiment name for the run directory and W&B (default: the config file's name).",
        )
        parser.add_argument("--selection", type=str, default="auto", help=SELECTION_HELP)
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        for key in ("num_classes", "num_groups", "group_names", "image_shape"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")

    # -------------------------------------------------------------- the run's record
    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        config = self.config[sub] if sub else self.config
        name = config.get("name") or default_name(config)
        config["name"] = name
        if "weights_only" in config and config.get("weights_only") is None:
            # checkpoints load as tensors and plain data, never as arbitrary pickles
            config["weights_only"] = True
        self.flat = flat_config(self._parser(sub).dump(config, skip_check=True))
        self.config_digest = digest(self.flat)
        run_dir = self._choose_run_dir(sub, config)
        self.run_dir = run_dir
        config["run_dir"] = str(run_dir)
        self.flat["run_dir"] = str(run_dir)
        if _launched_rank() == 0:
            # Lightning's ddp children (same argv) join this run
            os.environ["ROBUSTREP_RUN_DIR"] = str(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            config_file = run_dir / "config.yaml"
            if not config_file.exists():
                config_file.write_text(self._parser(sub).dump(config, skip_check=True))
        config.trainer.default_root_dir = str(run_dir)
        config.checkpoint.dirpath = str(run_dir / "checkpoints")
        place_loggers(config.trainer.get("logger"), run_dir, name)

    def _choose_run_dir(self, sub: str, config) -> Path:
        if _launched_rank() > 0 and os.environ.get("ROBUSTREP_RUN_DIR"):
            return Path(os.environ["ROBUSTREP_RUN_DIR"])  # a ddp child joins rank 0's run
        run_dir, self.record, resume_from = choose_run_dir(sub, config, self.flat)
        if resume_from is not None:  # a requeued SLURM job continues where it stopped
            config["ckpt_path"] = self.flat["ckpt_path"] = str(resume_from)
        return run_dir

    def _stopped(self, signum: int) -> RunStopped:
        """The RunStopped of this run: names the checkpoint and the command that resumes it."""
        sig = signal.Signals(signum).name
        ckpt = self.run_dir / "checkpoints" / "last.ckpt" if self.run_dir is not None else None
        if self.subcommand != "fit" or ckpt is None or not ckpt.is_file():
            return RunStopped(
                signum, None, f"stopped by {sig}; nothing to resume: run the same command again"
            )
        position = ""
        try:
            state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
            position = f" at epoch {state.get('epoch')} step {state.get('global_step')}"
        except Exception:  # noqa: BLE001  (the message is still useful without the position)
            pass
        done = (
            " after the test pass (results.json written)"
            if self.run_dir and (self.run_dir / "results.json").exists()
            else ""
        )
        return RunStopped(
            signum,
            str(ckpt),
            f"stopped by {sig}{done}; checkpoint{position}: {ckpt}; resume: "
            f"{resume_command(self.argv, ckpt)}",
        )

    # -------------------------------------------------------------- W&B conventions
    def _configure_wandb(self) -> None:
        """Group = benchmark, job type = method, tags, and the resolved config as the run config."""
        config = self.config[self.subcommand]
        method = type(self.model).__name__
        benchmark = getattr(self.datamodule, "benchmark_name", type(self.datamodule).__name__)
        variant = method_variant(self.model)
        tags = [method, benchmark, f"seed{config.get('seed_everything')}"]
        tags += [variant] if variant else []
        tags += ["evaluation"] if self.record == "evaluation" else []
        run_config = {
            **self.flat,
            "config_digest": self.config_digest,
            "config_key": config_key(self.flat),
            "method": method,
            "benchmark": benchmark,
            "variant": variant or "default",
            "record": self.record,
        }
        configure_wandb(self.trainer.loggers, method, benchmark, tags, run_config)

    def _add_group_metrics(self) -> None:
        """Every run scores the method's logits per group (``val/acc``, ``test/worst_group_acc``,
        ...).
        """
        from robustrep.callbacks.group_metrics import GroupMetrics

        if not any(isinstance(cb, GroupMetrics) for cb in self.trainer.callbacks):
            self.trainer.callbacks.insert(0, GroupMetrics())

    def before_fit(self) -> None:
        self._configure_wandb()
        self._add_group_metrics()
        setting = str(self.config[self.subcommand].get("selection") or "auto").strip()
        checkpoints = str(self.run_dir / "checkpoints")
        self.selection, self.selection_reason = build_selection(
            setting, self.model, self.datamodule, self.trainer, checkpoints
        )
        callbacks = self.trainer.callbacks
        run_ckpt = next(i for i, cb in enumerate(callbacks) if isinstance(cb, RunCheckpoint))
        # saved before last.ckpt, so last.ckpt holds the selection's state
        if self.selection is not None:
            callbacks.insert(run_ckpt, self.selection)
        callbacks.insert(0, self.loss_watch)

    def before_test(self) -> None:
        self._configure_wandb()
        self._add_group_metrics()

    def before_validate(self) -> None:
        self._configure_wandb()
        self._add_group_metrics()

    # -------------------------------------------------------------- after the subcommands
    def after_fit(self) -> None:
        if self.trainer.interrupted:
            return
        last_epoch = {"epoch": self.trainer.current_epoch - 1, "step": self.trainer.global_step}
        best = self.selection.best_model_path if self.selection is not None else ""
        # the last weights by their file: with no path, Lightning would load a SLURM HPC checkpoint
        # if one exists
        last_ckpt = self.run_dir / "checkpoints" / "last.ckpt" if self.run_dir is not None else None
        last_path = str(last_ckpt) if last_ckpt is not None and last_ckpt.is_file() else None
        trainer, model, dm = self.trainer, self.model, self.datamodule
        if self.selection is not None and best:
            last = run_test_pass(trainer, model, dm, ckpt_path=last_path, log=False)
            metrics = run_test_pass(trainer, model, dm, ckpt_path=best)
            selection = selection_record(
                self.selection, best, self.selection_reason, self.run_dir, last_epoch
            )
        else:
            reason = self.selection_reason
            if self.selection is not None:
                reason = "no validation result was saved"
            metrics = run_test_pass(trainer, model, dm, ckpt_path=last_path)
            last = dict(metrics)
            selection = {"monitor": None, "mode": "last", "reason": reason, **last_epoch}
        metrics.update({f"last/{k}": v for k, v in last.items()})
        divergence = self.loss_watch.summary()
        if divergence and divergence["diverged"] and self.trainer.is_global_zero:
            print(
                f"robustrep: warning: the training loss ended at {divergence['final_loss']:.3g}, "
                f"against {divergence['first_loss']:.3g} at the first step: the run diverged "
                "(flagged in results.json and by `robustrep report`).",
                file=sys.stderr,
            )
        self._finish("fit", metrics, selection, divergence)
        if stop_requested() is not None:
            raise RunStopped(stop_requested(), None)

    def after_test(self) -> None:
        metrics = final_metrics(self.trainer, exclude=("train/", "val/"))
        self._finish(
            "test", metrics, checkpoint_record(self.config[self.subcommand].get("ckpt_path"))
        )

    def after_validate(self) -> None:
        metrics = final_metrics(self.trainer, exclude=("train/",))
        metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
        ckpt = self.config[self.subcommand].get("ckpt_path")
        self._finish("validate", metrics, checkpoint_record(ckpt))

    def _finish(
        self,
        stage: str,
        metrics: dict[str, float],
        selection: dict[str, Any],
        divergence: dict[str, Any] | None = None,
    ) -> None:
        if not self.trainer.is_global_zero or self.run_dir is None:
            return
        config = self.config[self.subcommand]
        ckpt = config.get("ckpt_path")
        results = {
            "record": self.record,
            "stage": stage,
            "method": type(self.model).__name__,
            "variant": method_variant(self.model),
            "benchmark": getattr(self.datamodule, "benchmark_name", type(self.datamodule).__name__),
            "name": config.get("name"),
            "seed": config.get("seed_everything"),
            "config_digest": self.config_digest,
            "config_key": config_key(self.flat),
            "run_dir": str(self.run_dir),
            "evaluates": str(run_of_checkpoint(ckpt))
            if self.record == "evaluation" and run_of_checkpoint(ckpt)
            else None,
            "ckpt_path": str(ckpt) if ckpt else None,
            "selection": selection,
            "divergence": divergence,
            "metrics": dict(sorted(metrics.items())),
            "config": self.flat,
            "effective_hparams": dict(getattr(self.model, "effective_hparams", {}) or {}),
            "versions": versions(),
            "started": self.started,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path = self.run_dir / "results.json"
        write_json(path, results)
        if stage == "fit" and (self.run_dir / "metrics.csv").is_file():
            from robustrep.curves import plot_curves

            plot_curves(
                self.run_dir / "metrics.csv",
                self.run_dir / "curves.png",
                title=f"{results['name']} ({results['method']}, seed {results['seed']})",
            )
        wandb_summary(self.trainer.loggers, results["metrics"])
        print(summary_text(results, path))
