"""``robustrep reproduce --launcher local|slurm`` (submitit), ``--status``, resources, their errors.

What runs for real and what does not:

- ``--launcher local``: submitit's real LocalExecutor, its real controller and worker processes,
  real ``robustrep fit`` runs of a smoke table, real signals (the pre-emption signal to a task,
  SIGTERM to ``reproduce``); the resumed table ends with the report of an uninterrupted one.
- ``--launcher slurm``: no cluster here. submitit's real SlurmExecutor submits to a stand-in
  ``sbatch`` on PATH that saves the script it receives and answers ``Submitted batch job 4242``; the
  test reads the script's ``#SBATCH`` lines. It then runs that very script with the environment
  SLURM gives an array task (a stand-in ``srun`` that runs its command, a stand-in ``scontrol``
  that records the requeue), so the pickled tasks run, are pre-empted by a real signal, requeued
  and resumed by submitit's SLURM job environment. SLURM itself (scheduling, the signal's timing,
  the requeue) is not exercised; a stand-in program plays ``robustrep fit`` there.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import fake_program, run_cli

from robustrep.errors import ConfigError
from robustrep.reproduce import reproduce_command
from robustrep.resources import load_resources
from robustrep.table_runs import pid_alive, read_record

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"

# plays `robustrep fit`: results.json from the seed; with FAKE_BLOCK in its run directory (and no
# --ckpt_path) it waits for SIGTERM, then "saves" checkpoints/last.ckpt and exits 143 as a run does
FAKE_FIT = textwrap.dedent(
    """
    import json, os, pathlib, signal, sys, time
    args = sys.argv[1:]
    run_dir = pathlib.Path(args[args.index("--run_dir") + 1])
    start = time.time()

    def stop(signum, frame):
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "last.ckpt").write_text("saved")
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop)
    if "--ckpt_path" not in args and os.environ.get("FAKE_BLOCK", "@") in str(run_dir):
        (run_dir / "blocked").write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL", "@") in str(run_dir):
        sys.exit(3)
    seed = int(args[args.index("--seed_everything") + 1])
    acc = {"erm": 0.50, "jtt": 0.60}[run_dir.parent.name] + 0.02 * seed
    results = {"method": run_dir.parent.name.upper(), "benchmark": "synthetic", "seed": seed,
               "run_dir": str(run_dir),
               "metrics": {"test/acc": acc, "test/worst_group_acc": acc - 0.3}}
    (run_dir / "results.json").write_text(json.dumps(results))
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({"args": args, "start": start, "end": time.time()}) + "\\n")
    """
)


def write_table(tmp_path: Path) -> Path:
    """Two rows (ERM, JTT) x 2 seeds of the quickstart configs."""
    path = tmp_path / "toy.yaml"
    path.write_text(
        textwrap.dedent(f"""
        title: Toy table
        seeds: 2
        columns: {{acc: test/acc, worst: test/worst_group_acc}}
        rows:
          - {{label: ERM, config: {QUICKSTART}, paper: {{acc: 52.0}}}}
          - {{label: JTT, config: {ROOT / "experiments" / "quickstart_jtt.yaml"}}}
        """)
    )
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return fake_program(tmp_path, monkeypatch, FAKE_FIT)


def reproduce(argv, program=None) -> int:
    return reproduce_command([str(a) for a in argv], program=program)


def stand_ins(tmp_path: Path, monkeypatch) -> Path:
    """``sbatch`` (saves each script it gets, answers job 4242), ``srun`` (runs its command) and
    ``scontrol`` (records its arguments) first on PATH; returns the folder of saved scripts."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "sbatch_scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    tools = {
        "sbatch": f'cp "$1" {scripts}/script$(ls {scripts} | wc -l).sh\n'
        'echo "Submitted batch job 4242"',
        "srun": textwrap.dedent("""
            while [ $# -gt 0 ]; do
              case "$1" in --unbuffered) shift;; --output|--error) shift 2;; *) break;; esac
            done
            exec "$@"
            """),
        "scontrol": f'echo "$@" >> {tmp_path / "scontrol.calls"}',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def sbatch_lines(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as {key: value} (flags without a value map to "")."""
    out = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --") :].partition("=")
            out[key] = value
    return out


# ------------------------------------------------------------------------ resources and errors


def test_shipped_resources_file_and_options():
    shipped = load_resources(ROOT / "experiments" / "cluster" / "slurm.yaml")
    assert shipped.partition == "gpu" and shipped.gpus == 1 and shipped.time == 12 * 60
    assert shipped.mem == "32G" and shipped.parallel == 16 and shipped.nodes == 1
    mixed = load_resources(
        ROOT / "experiments" / "cluster" / "slurm.yaml", {"gpus": "4", "time": "1-06:30:00"}
    )
    assert mixed.gpus == 4 and mixed.time == 30 * 60 + 30 and mixed.partition == "gpu"
    assert load_resources(None, {"time": "90"}).time == 90
    assert load_resources(None, {"time": "45:30"}).time == 46  # MM:SS, rounded up


@pytest.mark.parametrize(
    ("yaml_text", "options", "message"),
    [
        ("gpu: 2\n", {}, "unknown key 'gpu' (did you mean 'gpus'?)"),
        ("gpus: -1\n", {}, "gpus must be a whole number >= 0"),
        ("", {"gpus": "-2"}, "--gpus must be a whole number >= 0"),
        ("time: soon\n", {}, "cannot read 'soon' as a time limit"),
        ("", {"time": "12h"}, "--time: cannot read '12h' as a time limit"),
        ("mem: lots\n", {}, "cannot read 'lots' as memory"),
        ("nodes: 0\n", {}, "nodes must be a whole number >= 1"),
        ("- gpus\n", {}, "expected a mapping of resources"),
    ],
)
def test_bad_resources_are_clear_errors(tmp_path, capsys, yaml_text, options, message):
    resources = tmp_path / "res.yaml"
    resources.write_text(yaml_text)
    flags = [t for k, v in options.items() for t in (f"--{k}", v)]
    argv = ["reproduce", str(write_table(tmp_path)), "--launcher", "slurm"]
    assert run_cli([*argv, "--resources", str(resources), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "robustrep: error:" in err and "Traceback" not in err


def test_launcher_errors_name_the_fix(tmp_path, monkeypatch, capsys, fake):
    program, calls = fake
    table = write_table(tmp_path)
    argv = [table, "--output_root", tmp_path / "runs"]
    # the optional extra is missing: `import submitit` fails
    with monkeypatch.context() as no_extra:
        no_extra.setitem(sys.modules, "submitit", None)
        for launcher in ("local", "slurm"):
            with pytest.raises(ConfigError, match=r"pip install 'robustrep\[cluster\]'"):
                reproduce([*argv, "--launcher", launcher], program)
    # no SLURM here: no sbatch on PATH
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="no `sbatch` on PATH"):
        reproduce([*argv, "--launcher", "slurm"], program)
    # resources need a launcher; a local launcher is one machine
    with pytest.raises(ConfigError, match="go with --launcher local or --launcher slurm"):
        reproduce([*argv, "--gpus", "2"], program)
    with pytest.raises(ConfigError, match="--nodes must be 1"):
        reproduce([*argv, "--launcher", "local", "--nodes", "2"], program)
    assert calls() == [] and not (tmp_path / "runs").exists()


def test_status_reads_each_run_record(tmp_path, capsys):
    """finished / running / failed / pending per row and seed, from the runs' files."""
    import socket

    from robustrep.tables import load_table, plan

    table = write_table(tmp_path)
    jobs = plan(load_table(str(table)), [0, 1], tmp_path / "runs", None, [])
    erm0, erm1, jtt0, jtt1 = jobs
    for job in jobs[:3]:
        job.run_dir.mkdir(parents=True)
    (erm0.run_dir / "results.json").write_text(json.dumps({"metrics": {"test/acc": 0.5}}))
    host = socket.gethostname()
    records = [
        (erm1, {"host": host, "pid": os.getpid(), "started": "T1"}),  # this very process: running
        (jtt0, {"host": host, "pid": os.getpid(), "exit": 3, "ended": "T2"}),
    ]
    for job, record in records:
        (job.run_dir / "reproduce.json").write_text(json.dumps({"args": job.args, **record}))
    assert reproduce([table, "--output_root", tmp_path / "runs", "--status"]) == 1  # one failed
    out = capsys.readouterr().out
    assert "Toy table: 4 runs, 1 finished, 1 running, 1 failed, 1 pending" in out
    lines = {
        tuple(line.split()[:3]): line for line in out.splitlines() if line[:4] in ("ERM ", "JTT ")
    }
    assert set(lines) == {
        ("ERM", "0", "finished"),
        ("ERM", "1", "running"),
        ("JTT", "0", "failed"),
        ("JTT", "1", "pending"),
    }
    assert f"pid {os.getpid()} since T1" in lines["ERM", "1", "running"]
    assert "exit 3; log: " in lines["JTT", "0", "failed"]
    assert "not started" in lines["JTT", "1", "pending"]
    assert not (tmp_path / "runs" / "tables" / "toy" / "report.md").exists()  # not all finished


# ------------------------------------------------------------------------------ local launcher


@pytest.mark.slow
def test_local_launcher_runs_in_parallel_and_reports_failures(tmp_path, fake, monkeypatch, capsys):
    """Through submitit's local executor, --parallel 2 at a time: never more than 2 runs at once,
    a failing run does not stop the table, and the report is written."""
    program, calls = fake
    monkeypatch.setenv("FAKE_SLEEP", "1.0")
    monkeypatch.setenv("FAKE_FAIL", "jtt/seed1")
    argv = [write_table(tmp_path), "--output_root", tmp_path / "runs", "--launcher", "local"]
    assert reproduce([*argv, "--parallel", "2"], program) == 1
    out, err = capsys.readouterr()
    assert "JTT seed 1: FAILED" in out and "1 run(s) failed: JTT seed 1" in err
    spans = sorted((c["start"], c["end"]) for c in calls())
    assert len(spans) == 3
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once == 2, spans
    report = (tmp_path / "runs" / "tables" / "toy" / "report.md").read_text()
    assert "| ERM |" in report and "51.00 ± 1.41" in report
    root = tmp_path / "runs" / "tables" / "toy"
    assert len(list((root / "submitit").glob("*_submitted.pkl"))) == 4


@pytest.mark.slow
def test_local_launcher_preempted_and_stopped_then_resumed_ends_as_uninterrupted(tmp_path, capsys):
    """A real smoke table, two runs at once through submitit's local executor. Both are held at a
    known step; the pre-emption signal (USR2) to run A's task makes it stop its run (which saves
    last.ckpt) and requeue itself, and the requeued task resumes A to its end; then SIGTERM to
    `reproduce` stops B (still held), which saves. The same command again resumes B, and the
    report equals that of uninterrupted runs of the same arguments."""
    table = tmp_path / "one.yaml"
    table.write_text(
        textwrap.dedent(f"""
        title: One row
        columns: {{acc: test/acc, worst: test/worst_group_acc}}
        profiles:
          smoke: {{data.init_args.size: 8, data.init_args.train_size: 320,
                   data.init_args.val_size: 32, data.init_args.test_size: 32}}
        rows:
          - {{label: ERM, config: {QUICKSTART}, paper: {{acc: 50.0}}}}
        """)
    )
    release = tmp_path / "release"
    gate = [{"class_path": "runtools.WaitAt", "init_args": {"epoch": 1, "batch": 3}}]
    gate[0]["init_args"]["release"] = str(release)
    extra = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "10"]
    extra += ["--trainer.callbacks", json.dumps(gate)]
    common = [str(table), "--profile", "smoke", "--seeds", "2", *extra]
    argv = [*common, "--output_root", str(tmp_path / "runs"), "--launcher", "local"]
    argv += ["--parallel", "2"]
    command = [sys.executable, "-m", "robustrep.cli", "reproduce", *argv]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT / "tests")}
    root = tmp_path / "runs" / "tables" / "one-smoke"
    run_a, run_b = root / "erm" / "seed0", root / "erm" / "seed1"

    def wait_for(condition, what: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while not condition():
            assert proc.poll() is None, f"reproduce ended while waiting for {what}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)

    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        at_gate = [run_a / "at_gate_e1", run_b / "at_gate_e1"]
        wait_for(lambda: all(p.exists() for p in at_gate), "both runs at the gate")
        record_a = json.loads((run_a / "reproduce.json").read_text())
        assert record_a["launcher"] == "local" and record_a["worker_pid"] != record_a["pid"]
        # submitit's pre-emption signal, to the task and (as SLURM signals a whole job step) to
        # its run, which ignores it: the task stops the run
        os.kill(record_a["pid"], signal.SIGUSR2)
        os.kill(record_a["worker_pid"], signal.SIGUSR2)
        # the task requeues itself; submitit's controller starts it again; it resumes A
        wait_for((run_a / "results.json").exists, "the requeued A to finish")
        assert read_record(run_a)["worker_pid"] != record_a["worker_pid"]
        proc.send_signal(signal.SIGTERM)  # the user stops reproduce
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # a failure above: stop the table's processes, then reproduce
            release.touch()
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
            proc.kill()
    assert proc.returncode == 143, out[-2000:] + err[-3000:]
    assert "stopped runs (each saved its checkpoint): ERM seed 1." in err
    assert "Run the same `robustrep reproduce` command again" in err
    # both stops saved at the gate's step (epoch 1, step 10 + 4)
    stop = "robustrep: stopped by SIGTERM; checkpoint at epoch 1 step 14: "
    log_a, log_b = ((run / "reproduce.log").read_text() for run in (run_a, run_b))
    assert stop in log_a and stop in log_b

    def resumed(log: str) -> int:
        return sum(line.startswith("$ ") and "--ckpt_path" in line for line in log.splitlines())

    assert resumed(log_a) == 1 and "Restored all states from the checkpoint" in log_a
    assert resumed(log_b) == 0 and not (run_b / "results.json").exists()
    assert not pid_alive(read_record(run_b)["pid"])  # no process of the table is left running
    assert reproduce([*common, "--output_root", tmp_path / "runs", "--status"]) == 0
    status = capsys.readouterr().out
    assert "2 runs, 1 finished, 0 running, 0 failed, 1 pending" in status
    assert "stopped by a signal at" in status and f"resumes from {run_b}" in status

    release.touch()
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 runs, 1 finished, 1 to run" in done.stdout and "ERM seed 1 (resuming)" in done.stdout
    log_b = (run_b / "reproduce.log").read_text()
    assert resumed(log_b) == 1 and "Restored all states from the checkpoint" in log_b

    # the same arguments, never interrupted (in this process), written where a plain run goes
    ref_root = tmp_path / "reference" / "tables" / "one-smoke"
    for run in (run_a, run_b):
        args = read_record(run)["args"]
        args[args.index("--run_dir") + 1] = str(ref_root / "erm" / run.name)
        assert run_cli(args) == 0
        ours = json.loads((run / "results.json").read_text())["metrics"]
        reference = json.loads((ref_root / "erm" / run.name / "results.json").read_text())
        assert reference["metrics"] == pytest.approx(ours, abs=1e-6)
    assert reproduce([*common, "--output_root", tmp_path / "reference", "--report-only"]) == 0
    assert (ref_root / "report.md").read_text() == (root / "report.md").read_text()


# ------------------------------------------------------------------------------ SLURM launcher


@pytest.mark.slow
def test_slurm_job_array_script_for_the_resources(tmp_path, fake, monkeypatch, capsys):
    """The sbatch script submitit writes for given resources: one array over the runs with the
    parallelism limit, partition, GPUs (one task per GPU), nodes, time, memory, account, the
    pre-emption warning signal and requeue; each task's pickled run has the DDP arguments."""
    from submitit.helpers import DelayedSubmission

    program, _ = fake
    scripts = stand_ins(tmp_path, monkeypatch)
    resources = tmp_path / "gpu.yaml"
    resources.write_text(
        "partition: gpu\naccount: lab\ngpus: 4\nnodes: 2\ncpus: 8\nmem: 64G\n"
        'time: "2-00:00:00"\nparallel: 3\nsetup: [module load cuda/12.4]\n'
    )
    table = write_table(tmp_path)
    argv = [table, "--output_root", tmp_path / "runs", "--launcher", "slurm"]
    assert reproduce([*argv, "--resources", resources, "--mem", "100G"], program) == 0
    out = capsys.readouterr().out
    assert "submitted 4 as SLURM job array 4242" in out and "--status" in out
    (script,) = [p.read_text() for p in scripts.iterdir()]
    flags = sbatch_lines(script)
    assert flags["array"] == "0-3%3"
    expected = {
        "partition": "gpu",
        "account": "lab",
        "nodes": "2",
        "ntasks-per-node": "4",  # one process per GPU: Lightning's SLURM mode
        "gpus-per-node": "4",
        "cpus-per-task": "8",
        "mem": "100G",  # the option wins over the file
        "time": "2880",  # minutes
        "signal": "USR2@120",  # the warning before the time limit
        "requeue": "",
        "job-name": "robustrep-toy",
    }
    assert {k: flags.get(k) for k in expected} == expected
    assert "\nmodule load cuda/12.4\n" in script and "\nsrun " in script
    assert "-m submitit.core._submit" in script
    # each array task holds one run, pinned to the table's layout, with the DDP settings
    root = tmp_path / "runs" / "tables" / "toy"
    launched = json.loads((root / "launch.json").read_text())
    assert launched["job"] == "4242" and len(launched["tasks"]) == 4
    for run_dir, task_id in launched["tasks"].items():
        task = DelayedSubmission.load(root / "submitit" / f"{task_id}_submitted.pkl").function
        assert str(task.job.run_dir) == run_dir and task.launcher == "slurm"
        args = task.job.args
        assert args[args.index("--trainer.devices") + 1] == "4"
        assert args[args.index("--trainer.num_nodes") + 1] == "2"
        assert Path(run_dir).parent.parent == root
    assert reproduce([*argv, "--resources", resources, "--status"]) == 0
    status = capsys.readouterr().out
    assert "4 pending" in status and status.count("queued as job 4242_") == 4
    # submitting again does not queue the same runs twice
    assert reproduce([*argv, "--resources", resources], program) == 0
    assert len(list(scripts.iterdir())) == 1
    assert "still queued in job 4242" in capsys.readouterr().err


@pytest.mark.slow
def test_slurm_array_tasks_run_are_preempted_requeued_and_resume(
    tmp_path, fake, monkeypatch, capsys
):
    """The submitted script, run as SLURM runs an array task (its environment; stand-in srun):
    each task runs its run; SLURM's warning signal to a task stops the run (which saves), requeues
    the task (`scontrol requeue`) and the requeued task resumes from the checkpoint; the task that
    finishes the last run writes the table report."""
    program, calls = fake
    scripts = stand_ins(tmp_path, monkeypatch)
    table = write_table(tmp_path)
    argv = [table, "--output_root", tmp_path / "runs", "--launcher", "slurm", "--time", "60"]
    assert reproduce(argv, program) == 0
    (script,) = list(scripts.iterdir())
    root = tmp_path / "runs" / "tables" / "toy"
    tasks = json.loads((root / "launch.json").read_text())["tasks"]
    by_task = {task_id: Path(run_dir) for run_dir, task_id in tasks.items()}
    env = {**os.environ, "FAKE_BLOCK": "erm/seed0", "SLURM_JOB_NAME": "robustrep-toy"}

    def array_task(index: int) -> subprocess.Popen:
        slurm = {
            "SLURM_ARRAY_JOB_ID": "4242",
            "SLURM_ARRAY_TASK_ID": str(index),
            "SLURM_JOB_ID": str(4243 + index),
            "SLURM_NTASKS": "1",
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NODEID": "0",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
        }
        return subprocess.Popen(["bash", str(script)], env={**env, **slurm}, cwd=tmp_path)

    first = by_task["4242_0"]
    assert first == root / "erm" / "seed0"
    task = array_task(0)
    deadline = time.time() + 60
    while not ((first / "blocked").exists() and "worker_pid" in read_record(first)):
        assert time.time() < deadline and task.poll() is None, "the task did not start its run"
        time.sleep(0.05)
    record = read_record(first)
    assert record["launcher"] == "slurm" and record["job"] == "4242_0"
    os.kill(record["worker_pid"], signal.SIGUSR2)  # SLURM's warning before the time limit
    assert task.wait(timeout=60) != 0  # submitit exits the requeued task
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", "4242_0"]
    assert (first / "checkpoints" / "last.ckpt").read_text() == "saved"
    assert json.loads((first / "reproduce.json").read_text())["requeued"] is True
    status = [table, "--output_root", tmp_path / "runs", "--status"]
    assert reproduce(status) == 0
    assert "pre-empted at" in capsys.readouterr().out
    # submitting again while SLURM holds the requeued task (and the others) submits nothing
    assert reproduce(argv, program) == 0 and len(list(scripts.iterdir())) == 1
    assert "4 run(s) are running or still queued in job 4242" in capsys.readouterr().err
    # SLURM starts the requeued task again: it resumes; then the other tasks run
    for index in (0, 1, 2, 3):
        assert array_task(index).wait(timeout=60) == 0
    resumed = [c["args"] for c in calls() if c["args"][-4:-2] == ["--run_dir", str(first)]]
    assert resumed and resumed[0][-2:] == ["--ckpt_path", str(first / "checkpoints" / "last.ckpt")]
    assert len(calls()) == 4
    report = (root / "report.md").read_text()  # written by the task of the last run
    assert "| ERM |" in report and "51.00 ± 1.41" in report
    assert reproduce(status) == 0
    assert "4 runs, 4 finished, 0 running, 0 failed, 0 pending" in capsys.readouterr().out
    # the same submission once all are finished submits nothing and writes the report as today
    (root / "report.md").unlink()
    assert reproduce(argv, program) == 0 and len(list(scripts.iterdir())) == 1
    assert "4 runs, 4 finished, 0 to run" in capsys.readouterr().out
    assert (root / "report.md").read_text() == report
