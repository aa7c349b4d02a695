"""``robustrep reproduce TABLE``: run a paper table from ``experiments/tables/TABLE.yaml`` and
compare.

``robustrep reproduce TABLE [--seeds N] [--rows GLOB] [--profile smoke] [--dry-run]
[--report-only] [--launcher local|slurm [--resources FILE] [--gpus N ...]] [--status]
[--trainer.* ...]``

A table file lists rows; each row is one experiment config plus overrides and the paper's numbers::

    title: CIM, Table 4 - Colored MNIST (CIM variant), test accuracy
    source: papers/cim.txt, Table 4
    seeds: 3                      # default of --seeds
    seed_keys: []                 # other config keys set to the seed too (data.init_args.seed)
    columns: {acc: test/acc}      # paper column -> our metric in results.json
    paper_scale: 100              # paper numbers are percentages (ours are fractions)
    profiles:                     # extra overrides of every row under --profile NAME
      smoke: {data.init_args.digits_source: sklearn}
    rows:
      - label: ERM
        config: experiments/erm_colored_mnist_cim.yaml
        overrides: {data.init_args.alpha: 1.0}      # a mapping or a list of CLI tokens
        paper: {acc: 54.87}
        profiles: {smoke: {data.init_args.train_fraction: 0.5}}

Every (row, seed) is one ``robustrep fit`` run in a subprocess, pinned to
``<output_root>/tables/<table>[-<profile>]/<row>/seed<s>`` (profiles get their own folder so a
smoke run is never taken for a real one). A run with a ``results.json`` is skipped; a run with
``checkpoints/last.ckpt`` but no ``results.json`` (interrupted) is resumed with ``--ckpt_path``.
Each run's record goes to ``reproduce.json`` (its command, host, process, exit status:
:mod:`robustrep.table_runs`) and its output to ``reproduce.log`` in its directory. ``--dry-run``
prints the commands (one per line, for a scheduler) instead of running them. At the end the report
(ours as mean ± std over seeds, the paper's number and the difference) is printed and written to
``<table folder>/report.{md,csv,html}`` with a bar plot ``report.png``.

Without a launcher the runs go one after another in this process's subprocesses. ``--launcher
local`` runs them ``--parallel`` at a time through submitit's local executor; ``--launcher slurm``
submits them as one SLURM job array and returns (:mod:`robustrep.launch`), with resources from
``--resources FILE`` and options (:mod:`robustrep.resources`). ``--status`` prints each run's state.

The built-in ``smoke`` profile (``SMOKE``: one epoch, two batches per loop, batch 32, no progress
bar) is extended by the table's and the row's ``profiles.smoke`` (embedded data, tiny images, few
examples), so a whole table runs on a laptop CPU in minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import subprocess
import sys
import time

from robustrep import launch
from robustrep.errors import ConfigError
from robustrep.resources import load_resources
from robustrep.table_runs import (
    end_run,
    read_record,
    run_state,
    start_run,
    status_command,
    stop_child,
)
from robustrep.tables import REPO_ROOT, Job, load_table, plan, table_root, write_report


class _Stops:
    """The running row's process and the stop signal ``reproduce`` received (see
    :func:`_forward_stops`).
    """

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.signum: int | None = None


def run_job(
    job: Job, program: list[str], env: dict[str, str] | None = None, stops: _Stops | None = None
) -> int:
    """Run one job in a subprocess, output appended to ``<run_dir>/reproduce.log``, its record in
    ``reproduce.json``; returns its exit status.
    """
    proc = start_run(job, program, env=env)
    if stops is not None:
        stops.child = proc
    try:
        code = proc.wait()
    except BaseException:
        # a second Ctrl-C or an exception: stop the child too; its last.ckpt lets a re-run resume
        end_run(job, stop_child(proc, timeout=30))
        raise
    finally:
        if stops is not None:
            stops.child = None
    end_run(job, code)
    return code


@contextlib.contextmanager
def _forward_stops(stops: _Stops):
    """While rows run, SIGTERM and SIGINT are passed on to the running row as SIGTERM: the run saves
    a checkpoint after its current step and exits (143), and a later ``reproduce`` resumes it.
    (SIGTERM, not the signal itself: after a terminal's Ctrl-C the row already has its own SIGINT,
    and a second SIGINT would stop it without saving.) A second signal to ``reproduce`` stops the
    row at once."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stops.signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        stops.signum = signum
        print(
            f"\nreproduce: {signal.Signals(signum).name} received; asking the "
            "running row to save and stop ...",
            file=sys.stderr,
            flush=True,
        )
        if stops.child is not None and stops.child.poll() is None:
            stops.child.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, old_handler in previous.items():
            signal.signal(s, old_handler)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of this subcommand (also used to check documented command lines)."""
    parser = argparse.ArgumentParser(
        prog="robustrep reproduce",
        description=(
            "Run every row of a paper table (experiments/tables/TABLE.yaml) and report ours "
            "beside the paper's numbers. Finished runs are skipped, interrupted ones resumed from "
            "their last.ckpt. Other --KEY VALUE arguments (e.g. --trainer.max_epochs 5, "
            "--trainer.accelerator gpu) are passed to every run."
        ),
        epilog=(
            "examples:\n  robustrep reproduce cim_table4 --dry-run > jobs.txt\n  robustrep "
            "reproduce chroma_table2 --profile smoke\n  robustrep reproduce spread_fig4 --rows "
            "'MNIST*' --seeds 3 --trainer.accelerator gpu\n"
            "  robustrep reproduce quickstart --launcher local --parallel 4 --gpus 1\n"
            "  robustrep reproduce cim_table4 --launcher slurm --resources "
            "experiments/cluster/slurm.yaml\n"
            "  robustrep reproduce cim_table4 --launcher slurm --resources "
            "experiments/cluster/slurm.yaml --status"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    known = sorted(p.stem for p in (REPO_ROOT / "experiments" / "tables").glob("*.yaml"))
    parser.epilog += "\n\ntables: " + (", ".join(known) or "none")
    parser.add_argument(
        "table", help="a table name (experiments/tables/NAME.yaml) or a path to a table file"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds 0..N-1 per row (default: the table's `seeds`, else 1)",
    )
    parser.add_argument(
        "--rows", default=None, help="only rows whose label or folder name matches this glob"
    )
    parser.add_argument(
        "--profile",
        default=None,
        help=(
            "extra overrides: `smoke` = tiny budget for a laptop CPU (1 "
            "epoch, 2 batches, small data)"
        ),
    )
    parser.add_argument(
        "--output_root",
        default="runs",
        help="runs go to OUTPUT_ROOT/tables/TABLE[-PROFILE]/ROW/seedS (default: runs)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands still to run, one per line, and exit",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="do not run anything; write the report from the finished runs",
    )
    launch.add_arguments(parser)
    return parser


#: The resource options of ``reproduce`` (``--resources`` file keys of the same names).
RESOURCE_OPTIONS = ("partition", "account", "gpus", "nodes", "cpus", "mem", "time", "parallel")


def _stopped(job: Job, signum: int | None, code: int | None) -> int:
    """Say which row stopped, where its checkpoint is and how to resume; the exit status of the
    signal.
    """
    import signal

    signum = signum or signal.SIGINT
    ckpt = job.run_dir / "checkpoints" / "last.ckpt"
    saved = (
        f"its checkpoint: {ckpt}"
        if ckpt.is_file()
        else "it had no checkpoint yet (it will start over)"
    )
    how = "exit " + str(code) if code is not None else "stopped at once"
    print(
        f"\nreproduce: stopped by {signal.Signals(signum).name} during {job.row.label} seed "
        f"{job.seed} ({how}); {saved}. Run the same `robustrep reproduce` command again to "
        "resume it; finished runs are kept.",
        file=sys.stderr,
    )
    return 130 if signum == signal.SIGINT else 143


def _run_here(todo: list[Job], program: list[str]) -> tuple[list[Job], int | None]:
    """Run the jobs one after another in subprocesses; ``(failed jobs, exit status of a stop)``."""
    failed = []
    stops = _Stops()
    with _forward_stops(stops):
        for i, job in enumerate(todo, 1):
            what = f"[{i}/{len(todo)}] {job.row.label} seed {job.seed}" + (
                " (resuming)" if job.status == "resume" else ""
            )
            print(what + " ...", flush=True)
            start = time.time()
            try:
                code = run_job(job, program, stops=stops)
            except KeyboardInterrupt:
                code = None
            if stops.signum is not None or code is None:
                return failed, _stopped(job, stops.signum, code)
            took = time.time() - start
            if code != 0 or not (job.run_dir / "results.json").is_file():
                failed.append(job)
                tail = (job.run_dir / "reproduce.log").read_text().splitlines()[-15:]
                print(
                    (
                        f"    FAILED (exit {code}) after {took:.0f} s; log: "
                        f"{job.run_dir / 'reproduce.log'}\n      "
                    )
                    + "\n      ".join(tail),
                    flush=True,
                )
            else:
                print(f"    done in {took:.0f} s", flush=True)
    return failed, None


def _stopped_launched(todo: list[Job], signum: int) -> int:
    """Say which runs a stop of ``--launcher local`` interrupted and how to resume them."""
    import signal

    stopped = [j for j in todo if run_state(j)[0] == "pending" and read_record(j.run_dir)]
    print(
        f"\nreproduce: stopped by {signal.Signals(signum).name}; "
        + (
            "stopped runs (each saved its checkpoint): "
            + ", ".join(f"{j.row.label} seed {j.seed}" for j in stopped)
            if stopped
            else "no run was running"
        )
        + ". Run the same `robustrep reproduce` command again to resume them; finished runs are "
        "kept.",
        file=sys.stderr,
    )
    return 130 if signum == signal.SIGINT else 143


def reproduce_command(argv: list[str], program: list[str] | None = None) -> int:
    """Entry point of ``robustrep reproduce``; returns the exit status (1 if a run failed)."""
    args, extra = build_parser().parse_known_args(argv)
    if extra and not extra[0].startswith("--"):
        raise ConfigError(
            f"unexpected argument {extra[0]!r}: overrides passed to the runs "
            "look like --trainer.max_epochs 5"
        )
    table = load_table(args.table)
    seeds = list(range(args.seeds if args.seeds is not None else table.seeds))
    if not seeds:
        raise ConfigError("--seeds must be at least 1")
    options = {k: getattr(args, k) for k in RESOURCE_OPTIONS}
    resources = None
    if args.launcher or args.resources or any(v is not None for v in options.values()):
        if not args.launcher and not args.status:
            raise ConfigError(
                "--resources and resource options (--gpus, --time, ...) go with --launcher local "
                "or --launcher slurm; without a launcher pass --trainer.devices etc. to the runs"
            )
        resources = load_resources(args.resources, options)
        extra = [*launch.trainer_args(resources), *extra]
    jobs = plan(table, seeds, args.output_root, args.profile, extra, args.rows)
    root = table_root(table, args.output_root, args.profile)
    if args.status:
        return status_command(table, jobs, root, args.profile)
    if args.dry_run:
        for job in jobs:
            if job.status == "finished":
                print(f"# finished: {job.run_dir}", file=sys.stderr)
            else:
                print(shlex.join(job.command(["robustrep"])))
        if args.launcher and resources is not None:
            todo = sum(j.status != "finished" for j in jobs)
            print(
                f"# --launcher {args.launcher}: {todo} runs; {resources.describe()}",
                file=sys.stderr,
            )
        return 0
    for job in jobs:
        if job.stale:
            print(
                f"note: {job.run_dir} finished with other arguments (see its "
                "reproduce.json); kept - delete it to re-run",
                file=sys.stderr,
            )
    program = program or [sys.executable, "-m", "robustrep.cli"]
    failed: list[Job] = []
    if not args.report_only:
        todo = [j for j in jobs if j.status != "finished"]
        if args.launcher == "slurm" and resources is not None and todo:
            command = shlex.join(["robustrep", "reproduce", *argv])
            return launch.submit_slurm(
                table, jobs, todo, program, resources, root, args.profile, command
            )
        print(
            f"{table.title}: {len(jobs)} runs, {len(jobs) - len(todo)} finished, "
            f"{len(todo)} to run -> {root}"
        )
        if args.launcher == "local" and resources is not None:
            failed, signum = launch.run_local(todo, program, resources, root)
            stop = _stopped_launched(todo, signum) if signum is not None else None
        else:
            failed, stop = _run_here(todo, program)
        if stop is not None:
            return stop
    # the report covers every row of the table, also when --rows ran only some of them
    every_row = plan(table, seeds, args.output_root, args.profile, extra) if args.rows else jobs
    markdown = write_report(table, root, every_row, args.profile)
    print("\n" + markdown)
    print(
        f"written: {root / 'report.md'}, report.csv, report.html"
        + (", report.png" if (root / "report.png").exists() else "")
    )
    if failed:
        print(
            f"{len(failed)} run(s) failed: "
            + ", ".join(f"{j.row.label} seed {j.seed}" for j in failed),
            file=sys.stderr,
        )
        return 1
    return 0
