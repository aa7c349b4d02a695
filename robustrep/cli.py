"""The ``robustrep`` command (DESIGN.md, contract 5).

``robustrep fit|validate|test|predict --config FILE [overrides]`` is a LightningCLI with these
defaults: the datamodule's metadata linked into the model; a fresh run directory per run
(``runs/<name>/<time>-s<seed>-<id>/``) holding the resolved ``config.yaml``, checkpoints, the
offline W&B run and ``results.json``; W&B as the logger, offline unless ``WANDB_MODE`` says
otherwise; after ``fit`` a test pass on the final weights. ``robustrep data ...`` lists and checks
benchmarks.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import warnings

from robustrep.errors import RobustRepError

SUBCOMMANDS = {
    "fit": "train a method (then test it) and write results.json",
    "validate": "evaluate on the validation sets",
    "test": "evaluate on the test sets and write results.json",
    "predict": "write predictions",
    "data": "list the benchmarks (`data list`) or check a copy on disk (`data check`)",
    "methods": "list the methods: what each is, its paper, its configs and benchmarks",
    "report": (
        "compare runs: results.json -> mean ± std over seeds table (md/csv/html) and a bar plot"
    ),
    "reproduce": (
        "run a paper table (experiments/tables/NAME.yaml) and report "
        "ours beside the paper's numbers"
    ),
    "analyze": "analyses of a trained model (strata recovery, noisy labels, coresets, CIM's mask)",
}

HELP = """usage: robustrep SUBCOMMAND [--config FILE] [overrides]

Robust representation learning: methods, baselines and group-robustness evaluation.

subcommands:
{commands}

examples:
  robustrep fit --config experiments/quickstart.yaml
  robustrep fit --config experiments/quickstart.yaml --seed_everything 1 --trainer.max_epochs 5
  robustrep fit --help                    every argument of fit, with its default
  robustrep fit --model ERM --model.help  the arguments of one method
  robustrep data list
  robustrep methods                       every method, its paper and configs
  robustrep report runs/                  mean ± std over seeds per method and benchmark
  robustrep reproduce cim_table4 --dry-run   the commands of a paper table, one per line
  robustrep reproduce cim_table4 --launcher slurm --resources experiments/cluster/slurm.yaml
                                          the table as one SLURM job array (then --status)

Runs go to runs/<config name>/<time>-s<seed>-<id>/ (override with --output_root or --run_dir).
W&B logs offline unless WANDB_MODE=online; sync later with \
`wandb sync <run dir>/wandb/offline-run-*`.
"""


def _quiet_third_party() -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)`.*")
    warnings.filterwarnings("ignore", message=r".*torch.distributed.nn.functional.all_gather.*")


def _build_cli_class():
    """The LightningCLI class, imported lazily so ``robustrep --help`` and ``robustrep data`` start
    fast.
    """
    from robustrep.lightning_cli import RobustRepCLI

    return RobustRepCLI


def config_error_message(err: BaseException, argv: list[str]) -> str:
    """One paragraph from a jsonargparse error: the failing key and problem, plus a hint."""
    skip = (
        "Does not validate against",
        "Subtypes:",
        "Errors:",
        "Expected a <class 'NoneType'>",
        "Given value type",
        "Given value:",
    )
    lines = [line.strip().lstrip("- ") for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith(skip)]
    text = " ".join(lines).replace("Problem with given class_path ", "in ")
    sub = argv[0] if argv and argv[0] in SUBCOMMANDS else "fit"
    match = re.search(r"Option '([^']+)' is not accepted", text) or re.search(
        r"unrecognized arguments: --?(\S+)", text
    )
    hint = f"Run `robustrep {sub} --help` for the accepted options"
    if match:
        close = difflib.get_close_matches(
            match.group(1).split(".")[-1], _known_option_names(), n=1, cutoff=0.75
        )
        if close:
            hint = f"Did you mean `{close[0]}`? " + hint
    return (
        f"invalid configuration: {text}. {hint} (and `--model.help CLASS` / `--data.help "
        "CLASS` for a class's arguments)."
    )


def _known_option_names() -> list[str]:
    """Argument names of the Trainer, the datamodules and the methods, for spelling suggestions."""
    import inspect

    import lightning.pytorch as pl

    import robustrep.data as data
    import robustrep.methods as methods

    names: set[str] = set(inspect.signature(pl.Trainer.__init__).parameters)
    for module in (data, methods):
        for obj in vars(module).values():
            if inspect.isclass(obj):
                for cls in obj.__mro__:
                    if cls.__module__.startswith("robustrep"):
                        names.update(inspect.signature(cls.__init__).parameters)
    return sorted(names - {"self", "args", "kwargs"})


def _finish_wandb() -> None:
    """Close this run's W&B run so the next run in the same process starts a new one, and wait until
    its run file is written to the end, so the run directory is complete when ``robustrep``
    returns."""
    wandb = sys.modules.get("wandb")
    if wandb is None or getattr(wandb, "run", None) is None:
        return
    run = wandb.run
    run_file = run.settings.sync_file if run.settings.mode in ("offline", "online") else None
    wandb.finish()
    if run_file:
        from robustrep.wandb_runs import wait_for_run_file

        if not wait_for_run_file(run_file):
            print(
                f"robustrep: warning: W&B had not finished writing {run_file} after 60 s",
                file=sys.stderr,
            )


def _clean_message(err: BaseException) -> str:
    """The user-facing part of an error, without the traceback text a DataLoader worker adds."""
    text = str(err)
    if "Original Traceback (most recent call last):" in text:
        heads = list(re.finditer(r"^[\w.]*(Error|Exception): ", text, re.MULTILINE))
        if heads:
            text = text[heads[-1].end() :]
    return text.strip()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``robustrep`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_third_party()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP.format(commands="\n".join(f"  {k:<10} {v}" for k, v in SUBCOMMANDS.items())))
        return 0
    try:
        if argv[0] == "data":
            from robustrep.data.commands import data_command

            return data_command(argv[1:])
        if argv[0] == "methods":
            from robustrep.catalog import methods_command

            return methods_command(argv[1:])
        if argv[0] == "report":
            from robustrep.report import report_command

            return report_command(argv[1:])
        if argv[0] == "reproduce":
            from robustrep.reproduce import reproduce_command

            return reproduce_command(argv[1:])
        if argv[0] == "analyze":
            from robustrep.analysis.commands import analyze_command

            return analyze_command(argv[1:])
        from robustrep.lifecycle import EXIT_CODES, RunStopped, stop_on_signals

        cli_class = _build_cli_class()
        try:
            with stop_on_signals():
                cli_class(args=argv if argv != sys.argv[1:] else None)
        except RunStopped as stop:  # SIGTERM / Ctrl-C: the checkpoint is saved; say how to resume
            print(f"\nrobustrep: {stop}\n", file=sys.stderr)
            return EXIT_CODES.get(stop.signum, 1)
        finally:
            _finish_wandb()
    except RobustRepError as err:
        print(f"\nrobustrep: error: {_clean_message(err)}\n", file=sys.stderr)
        return 2
    except argparse.ArgumentError as err:
        print(f"\nrobustrep: error: {config_error_message(err, argv)}\n", file=sys.stderr)
        return 2
    except Exception as err:  # errors re-raised from DataLoader workers keep their type name only
        from robustrep.checkpoints import is_unsafe_load_error, refused_message

        if is_unsafe_load_error(err):
            ckpt = (
                argv[argv.index("--ckpt_path") + 1]
                if "--ckpt_path" in argv[:-1]
                else "the checkpoint"
            )
            print(f"\nrobustrep: error: {refused_message(ckpt, err)}\n", file=sys.stderr)
            return 2
        cause = err
        while cause is not None and not isinstance(cause, RobustRepError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, RobustRepError):
            print(f"\nrobustrep: error: {_clean_message(cause)}\n", file=sys.stderr)
            return 2
        if str(err).startswith("Does not validate against") and err.__cause__ is not None:
            # a class rejected its arguments while being instantiated from the config
            inner = err.__cause__
            while inner.__cause__ is not None:
                inner = inner.__cause__
            print(
                f"\nrobustrep: error: invalid configuration: {inner}. Fix the value in "
                "the config or the override.\n",
                file=sys.stderr,
            )
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
