"""``robustrep reproduce TABLE --launcher local|slurm``: a table's runs through submitit (the
optional extra ``pip install 'robustrep[cluster]'``).

- ``--launcher slurm`` submits the runs still to do as one SLURM job array (one run per array task)
  and returns; ``--launcher local`` runs them ``--parallel N`` at a time on this machine through
  submitit's local executor and waits. Both submit the same task, :class:`RunTask`: it runs one
  (row, seed) as a ``robustrep fit`` subprocess pinned to the run's directory (the plan of
  :func:`robustrep.tables.plan`), resuming from ``checkpoints/last.ckpt`` when there is one.
- Pre-emption and time limits: SLURM warns the task ``signal_delay_s`` (120 s) before the limit with
  submitit's signal (USR2); submitit calls :meth:`RunTask.checkpoint`, which stops the run with
  SIGTERM (it saves ``last.ckpt`` after its current step and exits 143), waits for it and hands back
  the same task, which submitit requeues (``#SBATCH --requeue``); the next attempt resumes. A time
  limit requeues at most 3 times, a pre-emption always.
- Stopping ``reproduce --launcher local`` (SIGTERM, Ctrl-C) stops every running run the same way and
  waits for them; the same command later resumes them.
- On SLURM, the task that finishes a table's last run writes the table report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from robustrep.errors import ConfigError, RobustRepError
from robustrep.resources import DEFAULT_SLURM_MINUTES, KEYS, Resources, format_minutes
from robustrep.table_runs import (
    LAUNCH_RECORD,
    LOG,
    STOPPED,
    end_run,
    in_queue,
    launch_record,
    locked,
    mark_stopped,
    run_state,
    running_pids,
    start_run,
    stop_child,
    stop_flag,
    wait_exit,
    wait_for_pids,
)
from robustrep.tables import Job, Table, run_status, write_report

INSTALL = "pip install 'robustrep[cluster]'"
#: Seconds between SLURM's warning signal and the end of a task's time (``#SBATCH --signal``).
SIGNAL_DELAY_S = 120


class RunFailed(RobustRepError):
    """A run of a launcher's task exited with an error (its array task ends as failed)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher options of ``robustrep reproduce``."""
    group = parser.add_argument_group(
        "launchers", f"run the table through submitit (needs `{INSTALL}`)"
    )
    group.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default=None,
        help=(
            "slurm: submit the runs still to do as one SLURM job array and return; local: run "
            "them --parallel at a time on this machine (default: one after another, no launcher)"
        ),
    )
    group.add_argument(
        "--resources",
        default=None,
        metavar="FILE",
        help="a YAML file of the resources below (experiments/cluster/slurm.yaml); options win",
    )
    metavars = {"partition": "NAME", "account": "NAME", "mem": "SIZE", "time": "LIMIT"}
    for key in ("partition", "account", "gpus", "nodes", "cpus", "mem", "time", "parallel"):
        group.add_argument(f"--{key}", default=None, metavar=metavars.get(key, "N"), help=KEYS[key])
    group.add_argument(
        "--status",
        action="store_true",
        help=(
            "print finished / running / failed / pending per row and seed (and write the report "
            "once all are finished); runs nothing"
        ),
    )


def trainer_args(resources: Resources) -> list[str]:
    """The run arguments the resources imply (``--trainer.devices`` for several GPUs per node,
    ``--trainer.num_nodes`` for several nodes); nothing for one GPU or CPU, so such runs keep the
    arguments of ``reproduce`` without a launcher."""
    out = []
    if resources.gpus > 1:
        out += ["--trainer.devices", str(resources.gpus)]
    if resources.nodes > 1:
        out += ["--trainer.num_nodes", str(resources.nodes)]
    return out


def _submitit(launcher: str):
    try:
        import submitit
    except ImportError as err:
        raise ConfigError(
            f"--launcher {launcher} needs submitit, an optional dependency of robustrep: install "
            f"it with `{INSTALL}` (or `pip install 'submitit>=1.5'`)"
        ) from err
    return submitit


def _usr_signal(submitit) -> int:
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


class RunTask:
    """One (row, seed) run as a submitit task (checkpointable: pre-emption requeues it).

    Args:
        job: the run (its status is read again when the task starts).
        program: the command that runs ``robustrep`` on the task's machine.
        launcher: ``local`` or ``slurm`` (for the run's record).
        report: ``(table, all jobs, profile, table folder)``: write the table report when this run
            finishes the table (None: the caller writes it).
    """

    def __init__(
        self,
        job: Job,
        program: list[str],
        launcher: str,
        report: tuple[Table, list[Job], str | None, Path] | None = None,
    ) -> None:
        self.job = job
        self.program = program
        self.launcher = launcher
        self.report = report
        self._child = None
        self._stop: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_child": None, "_stop": None}

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # a user's stop (reproduce forwards it), or a cluster's scancel: the run saves and stops
        self._stop = signum
        if self._child is not None:
            self._child.send_signal(signal.SIGTERM)

    def __call__(self) -> dict[str, Any]:
        import submitit

        env = submitit.JobEnvironment()
        rank = env.global_rank
        job = replace(self.job, status=run_status(self.job.run_dir, self.job.args)[0])
        if job.status == "finished":
            return {"run_dir": str(job.run_dir), "exit": 0}
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if main else None
        try:
            self._child = start_run(
                job,
                self.program,
                log_name=LOG if rank == 0 else f"reproduce.rank{rank}.log",
                record=rank == 0,
                launcher={"launcher": self.launcher, "job": env.job_id, "worker_pid": os.getpid()},
                ignore=(_usr_signal(submitit),),
            )
            if self._stop is not None:
                self._child.send_signal(signal.SIGTERM)
            while (code := self._child.poll()) is None:
                time.sleep(0.2)
        except KeyboardInterrupt:  # e.g. Ctrl-C in the terminal of `reproduce --launcher local`
            if self._child is not None and rank == 0:
                end_run(job, stop_child(self._child, timeout=30))
            raise
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
        self._child = None
        if rank != 0:
            return {"run_dir": str(job.run_dir), "exit": code}
        end_run(job, code)
        if code == 0 and (job.run_dir / "results.json").is_file():
            self._write_report_if_done()
            return {"run_dir": str(job.run_dir), "exit": 0}
        if code in STOPPED:
            return {"run_dir": str(job.run_dir), "exit": code, "stopped": True}
        raise RunFailed(
            f"{job.row.label} seed {job.seed} failed (exit {code}); log: {job.run_dir / LOG}"
        )

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Called by submitit on pre-emption or time-out: stop the run with SIGTERM (it saves
        ``last.ckpt`` after its current step and exits 143), wait for it, record it as requeued and
        hand back this task, which resumes from that checkpoint when it runs again."""
        from submitit.helpers import DelayedSubmission

        child = self._child
        if child is not None:
            child.send_signal(signal.SIGTERM)
            code = wait_exit(child.pid, timeout=SIGNAL_DELAY_S - 20)
            end_run(self.job, code, requeued=True)
        return DelayedSubmission(self, *args, **kwargs)

    def _write_report_if_done(self) -> None:
        if self.report is None:
            return
        table, jobs, profile, root = self.report
        if all((j.run_dir / "results.json").is_file() for j in jobs):
            with locked(root / ".report.lock"):
                write_report(table, root, jobs, profile)


def _gpu_slots(parallel: int, gpus: int) -> list[tuple[int, ...]]:
    """The GPUs of each of ``parallel`` local slots, ``gpus`` each: the GPUs
    ``CUDA_VISIBLE_DEVICES`` lists, in its order, else 0, 1, ..."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if gpus and visible:
        if not visible.replace(",", "").isdigit():
            raise ConfigError(
                f"--launcher local --gpus: CUDA_VISIBLE_DEVICES={visible!r} is not a list of GPU "
                "numbers; unset it or list numbers (e.g. 0,1,2,3)"
            )
        ids = [int(x) for x in visible.split(",")]
        if len(ids) < parallel * gpus:
            raise ConfigError(
                f"--parallel {parallel} x --gpus {gpus} needs {parallel * gpus} GPUs, but "
                f"CUDA_VISIBLE_DEVICES lists {len(ids)}"
            )
    else:
        ids = list(range(parallel * gpus))
    return [tuple(ids[s * gpus : (s + 1) * gpus]) for s in range(parallel)]


def run_local(todo: list[Job], program: list[str], resources: Resources, root: Path):
    """Run ``todo`` through submitit's local executor, ``resources.parallel`` (default 1) at a time;
    returns ``(failed jobs, the stop signal or None)``."""
    submitit = _submitit("local")
    if resources.nodes > 1:
        raise ConfigError("--launcher local runs on one machine: --nodes must be 1")
    ignored = [k for k in ("partition", "account", "mem", "cpus", "setup") if getattr(resources, k)]
    if ignored:
        print(f"note: --launcher local ignores {', '.join(ignored)} (SLURM resources)")
    parallel = resources.parallel or 1
    executor = submitit.LocalExecutor(folder=root / "submitit")
    slots = _gpu_slots(parallel, resources.gpus)
    queue, running, failed = list(todo), {}, []
    with stop_flag() as flag:
        try:
            next_forward = 0.0
            while queue or running:
                for slot in range(parallel):
                    if flag.signum is None and queue and slot not in running:
                        job = queue.pop(0)
                        executor.update_parameters(
                            timeout_min=resources.time or 60 * 24 * 365 * 100,
                            gpus_per_node=resources.gpus,
                            visible_gpus=slots[slot],
                            tasks_per_node=1,
                        )
                        task = executor.submit(RunTask(job, program, "local"))
                        resume = " (resuming)" if job.status == "resume" else ""
                        n = f"[{len(todo) - len(queue)}/{len(todo)}]"
                        print(f"{n} {job.row.label} seed {job.seed}{resume} ...", flush=True)
                        running[slot] = (job, task, time.time())
                for slot, (job, task, start) in list(running.items()):
                    if task.done():
                        del running[slot]
                        took, stopping = time.time() - start, flag.signum is not None
                        if not _report_local(job, task, took, stopping):
                            failed.append(job)
                if flag.signum is not None and running and time.time() > next_forward:
                    # the task passes it on to its run; again each second, for a task that was
                    # starting (or requeueing) when the stop came
                    for _, task, _ in running.values():
                        with contextlib.suppress(OSError, ValueError):
                            os.kill(int(task.job_id), signal.SIGTERM)
                    next_forward = time.time() + 1.0
                time.sleep(0.2)
        except KeyboardInterrupt:  # a second signal: stop at once
            for _, task, _ in running.values():
                task.cancel(check=False)
            flag.signum = flag.signum or signal.SIGINT
        wait_for_pids(running_pids(todo))
        if flag.signum is not None:
            mark_stopped(todo, flag.signum)
    return failed, flag.signum


def _report_local(job: Job, task, took: float, stopping: bool) -> bool:
    """Print how a local task ended; False if its run failed (or, unless the table is being
    stopped, was not run to its end)."""
    state, detail = run_state(job)
    what = f"    {job.row.label} seed {job.seed}"
    if state == "finished":
        print(f"{what}: done in {took:.0f} s", flush=True)
        return True
    if state == "pending" and stopping:  # stopped by the signal; resumes
        print(f"{what}: stopped ({detail})", flush=True)
        return True
    log = job.run_dir / LOG if (job.run_dir / LOG).is_file() else task.paths.stderr
    tail = Path(log).read_text().splitlines()[-15:] if Path(log).is_file() else []
    print(
        f"{what}: FAILED after {took:.0f} s ({detail}); log: {log}\n      " + "\n      ".join(tail)
    )
    return False


def slurm_parameters(resources: Resources, name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for the resources: one task per GPU (Lightning's SLURM
    mode: ``--ntasks-per-node`` = devices), the warning signal, ``--requeue``."""
    params: dict[str, Any] = {
        "job_name": f"robustrep-{name}",
        "time": resources.time or DEFAULT_SLURM_MINUTES,
        "nodes": resources.nodes,
        "ntasks_per_node": max(resources.gpus, 1),
        "signal_delay_s": SIGNAL_DELAY_S,
        "additional_parameters": {"requeue": True},
    }
    optional = {
        "partition": resources.partition,
        "account": resources.account,
        "gpus_per_node": resources.gpus or None,
        "cpus_per_task": resources.cpus,
        "mem": resources.mem,
        "array_parallelism": resources.parallel,
        "setup": resources.setup or None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


def submit_slurm(
    table: Table,
    jobs: list[Job],
    todo: list[Job],
    program: list[str],
    resources: Resources,
    root: Path,
    profile: str | None,
    command: str,
) -> int:
    """Submit ``todo`` as one SLURM job array (one run per task); returns 0 once submitted."""
    submitit = _submitit("slurm")
    for tool in ("sbatch", "srun"):
        if shutil.which(tool) is None:
            raise ConfigError(
                f"--launcher slurm: no `{tool}` on PATH. Submit from a machine of the SLURM "
                "cluster (a login node), or use --launcher local (this machine) or --dry-run (the "
                "commands, for another scheduler)"
            )
    previous = launch_record(root)
    queued = previous.get("tasks", {})
    busy = [j for j in todo if in_queue(j, queued, previous.get("submitted", ""))]
    if busy:
        print(
            f"note: {len(busy)} run(s) are running or still queued in job {previous.get('job')} "
            "and are not submitted again (see --status; if that job is gone from the queue, delete "
            f"{root / LAUNCH_RECORD} to submit them)",
            file=sys.stderr,
        )
    todo = [j for j in todo if j not in busy]
    if not todo:
        print(f"{table.title}: nothing to submit ({len(jobs)} runs, none left to start)")
        return 0
    executor = submitit.SlurmExecutor(folder=root / "submitit")
    executor.update_parameters(**slurm_parameters(resources, table.name))
    report = (table, jobs, profile, root)
    try:
        with executor.batch():
            tasks = [executor.submit(RunTask(j, program, "slurm", report)) for j in todo]
    except (RuntimeError, OSError) as err:
        raise ConfigError(f"sbatch did not accept the job array: {err}") from err
    array = tasks[0].job_id.split("_")[0]
    record = {
        "launcher": "slurm",
        "job": array,
        "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "resources": resources.as_dict(),
        "tasks": {**queued, **{str(j.run_dir): t.job_id for j, t in zip(todo, tasks)}},
    }
    (root / LAUNCH_RECORD).write_text(json.dumps(record, indent=2))
    default_time = f", time {format_minutes(DEFAULT_SLURM_MINUTES)}" if not resources.time else ""
    print(
        f"{table.title}: {len(jobs)} runs, {len(jobs) - len(todo) - len(busy)} finished; submitted "
        f"{len(todo)} as SLURM job array {array} ({resources.describe()}{default_time}) -> {root}\n"
        f"follow it: {command} --status\n"
        f"the report is written to {root / 'report.md'} when the last run finishes"
    )
    return 0
