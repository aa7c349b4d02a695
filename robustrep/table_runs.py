"""One run of a paper table as a process, and its record: what ``robustrep reproduce`` does for each
(row, seed), whichever launcher runs it (one after another here, submitit's local executor, a SLURM
job array).

A run's ``<run_dir>/reproduce.json`` says which command it is (``args``, ``command``), where and
when it runs (``host``, ``pid``, ``started``, the launcher's ``job`` id) and, once its process has
ended, ``exit`` and ``ended`` (and ``requeued: true`` when a launcher stopped it to requeue it).
``reproduce --status`` reads these records: :func:`run_state`, :func:`status_command`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from robustrep.tables import Job, Table, write_report

RECORD = "reproduce.json"
LOG = "reproduce.log"
#: Exit statuses of a run that a signal stopped after saving ``last.ckpt`` (130 SIGINT, 143
#: SIGTERM; negative: killed by the signal before robustrep's handler was installed).
STOPPED = (130, 143, -signal.SIGINT, -signal.SIGTERM)
STATES = ("finished", "running", "failed", "pending")
#: The submission record of a table's folder (which array task runs which run).
LAUNCH_RECORD = "launch.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def read_record(run_dir: Path) -> dict[str, Any]:
    """The run's ``reproduce.json`` ({} when there is none or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    from robustrep.records import write_json

    write_json(Path(run_dir) / RECORD, record)


def _ignore_signals(signums: tuple[int, ...]):
    def preexec() -> None:  # runs in the child between fork and exec: dispositions survive exec
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)

    return preexec


def start_run(
    job: Job,
    program: list[str],
    env: dict[str, str] | None = None,
    log_name: str = LOG,
    record: bool = True,
    launcher: dict[str, Any] | None = None,
    ignore: tuple[int, ...] = (),
) -> subprocess.Popen:
    """Start ``job``'s command (``program`` + its arguments, ``--ckpt_path`` when it resumes) with
    its output appended to ``<run_dir>/<log_name>``, and write its record.

    Args:
        job: the run.
        program: the command that runs ``robustrep`` (e.g. ``[python, -m, robustrep.cli]``).
        env: extra environment variables.
        log_name: the log file in the run directory (another rank of a multi-process run logs to
            its own file).
        record: write ``reproduce.json`` (False on the other ranks of a multi-process run).
        launcher: extra fields of the record (the launcher's name and job id).
        ignore: signals the run ignores (a SLURM step's pre-emption warning, which is meant for
            the launcher's task and would otherwise kill the run before it saves).
    """
    job.run_dir.mkdir(parents=True, exist_ok=True)
    command = job.command(program)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(job.run_dir / log_name, "a") as log:
        log.write(f"\n$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_ignore_signals(ignore) if ignore else None,
        )
    if record:
        _write_record(
            job.run_dir,
            {
                "args": job.args,
                "command": command,
                "started": _now(),
                "host": socket.gethostname(),
                "pid": proc.pid,
                **(launcher or {}),
            },
        )
    return proc


def end_run(job: Job, code: int | None, **fields: Any) -> None:
    """Add the exit status (and ``fields``) to the run's record."""
    record = read_record(job.run_dir)
    if record.get("args") != job.args:
        return
    _write_record(job.run_dir, {**record, "exit": code, "ended": _now(), **fields})


def stop_child(proc: subprocess.Popen, timeout: float = 60.0) -> int | None:
    """SIGTERM a run (it saves ``last.ckpt`` after its current step and exits 143) and wait for it;
    SIGKILL it if it has not exited after ``timeout`` seconds. Returns its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def pid_alive(pid: int) -> bool:
    """True if a process with this id runs on this machine (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def wait_for_pids(pids: list[int], timeout: float = 120.0) -> None:
    """Wait until none of ``pids`` runs any more (at most ``timeout`` seconds)."""
    deadline = time.time() + timeout
    while any(pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)


def running_pids(jobs: list[Job]) -> list[int]:
    """The run processes on this machine that the records of ``jobs`` say are still running."""
    host = socket.gethostname()
    pids = []
    for job in jobs:
        record = read_record(job.run_dir)
        if record.get("host") == host and "exit" not in record and record.get("pid"):
            pids.append(int(record["pid"]))
    return [p for p in pids if pid_alive(p)]


def mark_stopped(jobs: list[Job], signum: int) -> None:
    """Record as stopped the runs whose task was killed before it could record their exit (a run
    stops on its own and saves, but a task ended by its controller cannot say so)."""
    for job in jobs:
        record = read_record(job.run_dir)
        if record.get("args") == job.args and "exit" not in record and not running_pids([job]):
            end_run(job, None, stopped=signal.Signals(signum).name)


def in_queue(job: Job, queued: dict[str, str], submitted: str) -> bool:
    """True if a previous submission still runs ``job`` or will: it runs, or it was queued and its
    task has not started since (its record is older than the submission) or was requeued."""
    if run_state(job)[0] == "running":
        return True
    record = read_record(job.run_dir)
    return str(job.run_dir) in queued and (
        record.get("args") != job.args
        or record.get("started", "") < submitted
        or bool(record.get("requeued"))
    )


def run_state(job: Job, queued: str | None = None) -> tuple[str, str]:
    """``(state, detail)`` of a run from its files: ``finished`` (results.json), ``running`` (its
    record names a live process, or one on another machine), ``failed`` (a non-zero exit that is
    not a stop, or a process that vanished) or ``pending`` (not started yet, or stopped / pre-empted
    with a checkpoint to resume). ``queued``: the launcher's job id, when it was submitted."""
    run_dir = job.run_dir
    if (run_dir / "results.json").is_file():
        return "finished", "made with other arguments (kept)" if job.stale else ""
    record = read_record(run_dir)
    if record.get("args") != job.args:
        return "pending", f"queued as job {queued}" if queued else "not started"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resumes = f"resumes from {ckpt}" if ckpt.is_file() else "no checkpoint yet: starts over"
    where = f" (job {record['job']})" if record.get("job") else ""
    if "exit" not in record:
        host = record.get("host")
        if host != socket.gethostname():
            return "running", f"on {host} since {record.get('started')}{where}"
        if record.get("pid") and pid_alive(int(record["pid"])):
            return "running", f"pid {record['pid']} since {record.get('started')}{where}"
        return "failed", f"its process ended without an exit status{where}; {resumes}"
    code = record["exit"]
    if record.get("requeued"):
        return "pending", f"pre-empted at {record.get('ended')}, requeued{where}; {resumes}"
    if code in STOPPED or record.get("stopped"):
        return "pending", f"stopped by a signal at {record.get('ended')}; {resumes}"
    reason = "exit 0 without results.json" if code == 0 else f"exit {code}"
    return "failed", f"{reason}{where}; log: {run_dir / LOG}"


def wait_exit(pid: int, timeout: float) -> int | None:
    """Wait for a child to exit without reaping it (the task's own ``poll`` does that; this runs
    inside a signal handler); SIGKILL it after ``timeout`` seconds. Its exit status, or None."""
    deadline = time.time() + timeout
    while True:
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # already reaped
            return None
        if info is not None:
            return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = float("inf")
        time.sleep(0.1)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` while inside (best effort: a file system without locks
    does not stop anything)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def stop_flag():
    """While inside, SIGTERM / SIGINT set ``flag.signum`` (the runs are asked to stop); a second
    one raises KeyboardInterrupt."""
    flag = SimpleNamespace(signum=None)
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.signum is not None:
            raise KeyboardInterrupt
        flag.signum = signum
        print(
            f"\nreproduce: {signal.Signals(signum).name} received; asking the running runs to save "
            "and stop ...",
            file=sys.stderr,
            flush=True,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def launch_record(root: Path) -> dict[str, Any]:
    """The table folder's ``launch.json`` (the last SLURM submission: its job id and which task runs
    which run), or {}."""
    try:
        return json.loads((root / LAUNCH_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def status_command(table: Table, jobs: list[Job], root: Path, profile: str | None) -> int:
    """Print each run's state (finished / running / failed / pending); write the report when all
    are finished. Returns 1 if a run failed."""
    launch = launch_record(root)
    queued = launch.get("tasks", {})
    states = [(job, *run_state(job, queued.get(str(job.run_dir)))) for job in jobs]
    counts = {s: sum(state == s for _, state, _ in states) for s in STATES}
    where = f"; SLURM job array {launch['job']} submitted {launch['submitted']}" if launch else ""
    print(
        f"{table.title}"
        + (f" (profile: {profile})" if profile else "")
        + f": {len(jobs)} runs, "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + where
        + f"\n{root}\n"
    )
    width = max(len(job.row.label) for job in jobs)
    print(f"{'row':<{width}}  seed  {'state':<8}  detail")
    for job, state, detail in states:
        print(f"{job.row.label:<{width}}  {job.seed:>4}  {state:<8}  {detail}".rstrip())
    if counts["finished"] == len(jobs):
        markdown = write_report(table, root, jobs, profile)
        print(f"\nall finished; report written: {root / 'report.md'}\n\n{markdown}")
    return 1 if counts["failed"] else 0
