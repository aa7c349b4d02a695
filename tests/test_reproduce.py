"""``robustrep reproduce``: table files, dry-run commands, skipping finished rows, resuming, the
paper column.

The fast tests run the rows with a stand-in program (a few lines of Python that writes
results.json); the slow test runs a real smoke table in subprocesses, kills it mid-run and resumes
it.
"""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import fake_program, run_cli

from robustrep.cli import _build_cli_class
from robustrep.errors import ConfigError
from robustrep.reproduce import reproduce_command
from robustrep.tables import load_table, plan, slugify

ROOT = Path(__file__).resolve().parents[1]
TABLES = sorted((ROOT / "experiments" / "tables").glob("*.yaml"))

FAKE_FIT = textwrap.dedent(
    """
    import json, os, pathlib, sys
    args = sys.argv[1:]
    run_dir = pathlib.Path(args[args.index("--run_dir") + 1])
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps(args) + "\\n")
    if os.environ.get("FAKE_FAIL", "@") in str(run_dir):
        sys.exit(3)
    seed = int(args[args.index("--seed_everything") + 1])
    acc = {"erm": 0.50, "jtt": 0.60}[run_dir.parent.name] + 0.02 * seed
    results = {"method": run_dir.parent.name.upper(), "benchmark": "synthetic", "seed": seed,
               "run_dir": str(run_dir),
               "metrics": {"test/acc": acc, "test/worst_group_acc": acc - 0.3}}
    (run_dir / "results.json").write_text(json.dumps(results))
    """
)


def write_table(tmp_path: Path, extra_row: str = "") -> Path:
    text = f"""
        title: Test table
        source: none
        seeds: 2
        seed_keys: [data.init_args.seed]
        columns: {{acc: test/acc, worst: test/worst_group_acc}}
        profiles:
          smoke: {{data.init_args.size: 8, data.init_args.train_size: 64,
                   data.init_args.val_size: 32, data.init_args.test_size: 32}}
        rows:
          - label: ERM
            config: {ROOT / "experiments" / "quickstart.yaml"}
            paper: {{acc: 52.0, worst: 30.0}}
          - label: JTT
            config: {ROOT / "experiments" / "quickstart_jtt.yaml"}
            overrides: [--model.init_args.upweight, "5"]
            paper: {{acc: 61.0}}
            profiles: {{smoke: {{trainer.limit_train_batches: 1}}}}
        {extra_row}
        """
    path = tmp_path / "toy_table.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return fake_program(tmp_path, monkeypatch, FAKE_FIT)


def reproduce(argv, program=None) -> int:
    try:
        return reproduce_command([str(a) for a in argv], program=program)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2


# ----------------------------------------------------------------------------------- table files


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cli = _build_cli_class()(
        args=[
            "--config",
            str(ROOT / "experiments" / "quickstart.yaml"),
            "--trainer.logger",
            "false",
            "--output_root",
            str(out),
        ],
        run=False,
    )
    return cli.parser


@pytest.mark.parametrize("table", TABLES, ids=[t.stem for t in TABLES])
def test_shipped_table_loads(table, tmp_path):
    spec = load_table(str(table))
    assert spec.rows and spec.columns and spec.title and spec.source
    for row in spec.rows:
        assert set(row.paper) <= set(spec.columns) and set(row.columns) <= set(spec.columns)
        no_paper = spec.source.startswith("none")  # e.g. quickstart: says so in `source`
        assert no_paper or any(v is not None for v in row.paper.values()), (
            f"{row.label}: no paper number"
        )
    jobs = plan(spec, [0], tmp_path, "smoke", [])
    assert len(jobs) == len(spec.rows) and all(j.status == "new" for j in jobs)


@pytest.mark.slow
@pytest.mark.parametrize("table", TABLES, ids=[t.stem for t in TABLES])
def test_shipped_table_rows_parse(table, parser, tmp_path):
    """Every row's command (config + row overrides + smoke profile) is accepted by the CLI
    parser.
    """
    spec = load_table(str(table))
    for job in plan(spec, [0], tmp_path, "smoke", []):
        assert job.args[0] == "fit"
        cfg = parser.parse_args([*job.args[1:], "--trainer.logger", "false"])
        assert cfg.seed_everything == 0 and cfg.run_dir == str(job.run_dir)
        assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches in (1, 2)


def test_table_errors(tmp_path):
    with pytest.raises(ConfigError, match="no table 'nope'"):
        load_table("nope")
    bad = write_table(tmp_path, "  - {label: Extra, config: experiments/does_not_exist.yaml}")
    with pytest.raises(ConfigError, match="does_not_exist.yaml, which does not exist"):
        load_table(str(bad))
    dup = write_table(
        tmp_path, f"  - {{label: 'erm!', config: {ROOT / 'experiments' / 'quickstart.yaml'}}}"
    )
    with pytest.raises(ConfigError, match="share the folder name 'erm'"):
        load_table(str(dup))
    unknown = write_table(
        tmp_path,
        f"  - {{label: X, config: "
        f"{ROOT / 'experiments' / 'quickstart.yaml'}, paper: {{auroc: 1}}}}",
    )
    with pytest.raises(ConfigError, match="auroc"):
        load_table(str(unknown))
    assert slugify("CIM + VIB (alpha 1)") == "cim_vib_alpha_1"


# ----------------------------------------------------------------------------------- dry run


def test_dry_run_prints_one_runnable_command_per_run(tmp_path, capsys):
    table = write_table(tmp_path)
    out_root = tmp_path / "runs"
    assert (
        reproduce(
            [
                table,
                "--dry-run",
                "--profile",
                "smoke",
                "--output_root",
                out_root,
                "--trainer.max_epochs",
                "2",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # 2 rows x 2 seeds (the table's default)
    commands = [shlex.split(line) for line in lines]
    assert all(c[:2] == ["robustrep", "fit"] for c in commands)
    run_dirs = [c[c.index("--run_dir") + 1] for c in commands]
    assert run_dirs == [
        str(out_root / "tables" / "toy_table-smoke" / row / f"seed{s}")
        for row in ("erm", "jtt")
        for s in (0, 1)
    ]
    assert [c[c.index("--seed_everything") + 1] for c in commands] == ["0", "1", "0", "1"]
    assert [c[c.index("--data.init_args.seed") + 1] for c in commands] == ["0", "1", "0", "1"]
    jtt = commands[2]
    assert jtt[jtt.index("--model.init_args.upweight") + 1] == "5"
    # user overrides come after the profile's (last one wins), the row's smoke override after the
    # table's
    last = {
        flag: len(jtt) - 1 - jtt[::-1].index(flag)
        for flag in ("--trainer.max_epochs", "--trainer.limit_train_batches")
    }
    assert (
        jtt[last["--trainer.max_epochs"] + 1] == "2"
        and jtt[last["--trainer.limit_train_batches"] + 1] == "1"
    )
    assert last["--trainer.max_epochs"] > last["--trainer.limit_train_batches"]
    assert not out_root.exists(), "a dry run creates nothing"
    # the printed command is accepted by the CLI as is
    assert run_cli([*commands[0][1:], "--print_config"]) == 0
    printed = capsys.readouterr().out
    assert "max_epochs: 2" in printed and "train_size: 64" in printed


# ----------------------------------------------------------------------- running (stand-in program)


def test_runs_rows_skips_finished_and_reports_paper_column(tmp_path, fake, capsys):
    program, calls = fake
    table = write_table(tmp_path)
    args = [table, "--output_root", tmp_path / "runs"]
    assert reproduce(args, program) == 0
    assert len(calls()) == 4
    out = capsys.readouterr().out
    assert "4 runs, 0 finished, 4 to run" in out
    root = tmp_path / "runs" / "tables" / "toy_table"
    lines = [line for line in (root / "report.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "row",
        "acc ours",
        "acc paper",
        "acc diff",
        "worst ours",
        "worst paper",
        "worst diff",
        "n",
    ]
    erm = [c.strip() for c in lines[2].strip("|").split("|")]
    assert erm == ["ERM", "51.00 ± 1.41", "52", "-1.00", "21.00 ± 1.41", "30", "-9.00", "2"]
    jtt = [c.strip() for c in lines[3].strip("|").split("|")]
    assert jtt == ["JTT", "61.00 ± 1.41", "61", "+0.00", "31.00 ± 1.41", "-", "-", "2"]
    csv = pd.read_csv(root / "report.csv").set_index("row")
    assert csv.loc["ERM", "acc ours"] == pytest.approx(51.0) and csv.loc[
        "ERM", "acc diff"
    ] == pytest.approx(-1.0)
    assert math.isnan(csv.loc["JTT", "worst paper"])
    assert (root / "report.png").exists() and "<table" in (root / "report.html").read_text()
    assert json.loads((root / "erm" / "seed1" / "reproduce.json").read_text())["args"][0] == "fit"

    # re-running starts nothing and reports the same numbers
    assert reproduce(args, program) == 0
    assert len(calls()) == 4
    assert "4 runs, 4 finished, 0 to run" in capsys.readouterr().out
    # a finished run made with other arguments is kept, with a note
    assert reproduce([*args, "--trainer.max_epochs", "7"], program) == 0
    assert len(calls()) == 4 and capsys.readouterr().err.count("finished with other arguments") == 4
    # one more seed runs only the new seed of each row
    assert reproduce([*args, "--seeds", "3"], program) == 0
    assert [c[c.index("--seed_everything") + 1] for c in calls()[4:]] == ["2", "2"]
    # --report-only never runs anything, even for seeds not run yet
    assert reproduce([*args, "--seeds", "5", "--report-only"], program) == 0
    assert len(calls()) == 6 and "| ERM |" in capsys.readouterr().out
    # --dry-run lists nothing left to do
    assert reproduce([*args, "--seeds", "3", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("robustrep fit") == 0


def test_a_table_without_paper_numbers_reports_only_ours(tmp_path, fake):
    program, _ = fake
    text = write_table(tmp_path).read_text()
    table = tmp_path / "ours_only.yaml"
    table.write_text(
        text.replace("paper: {acc: 52.0, worst: 30.0}", "").replace("paper: {acc: 61.0}", "")
    )
    assert reproduce([table, "--output_root", tmp_path / "runs"], program) == 0
    report = (tmp_path / "runs" / "tables" / "ours_only" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("|"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "row",
        "acc ours",
        "worst ours",
        "n",
    ]
    assert "no paper numbers" in report


def test_rows_selects_what_runs_but_the_report_keeps_every_row(tmp_path, fake):
    program, calls = fake
    args = [write_table(tmp_path), "--output_root", tmp_path / "runs"]
    assert reproduce(args, program) == 0
    assert reproduce([*args, "--seeds", "3", "--rows", "JTT"], program) == 0
    assert [c[c.index("--seed_everything") + 1] for c in calls()[4:]] == ["2"]
    report = (tmp_path / "runs" / "tables" / "toy_table" / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["ERM", "JTT"]


def test_interrupted_run_resumes_from_last_checkpoint(tmp_path, fake):
    program, calls = fake
    table = write_table(tmp_path)
    spec = load_table(str(table))
    jobs = plan(spec, [0, 1], tmp_path / "runs", None, [])
    # ERM seed 0 was killed; ERM seed 1 was killed under other settings
    interrupted, changed = jobs[0], jobs[1]
    for job, args in (
        (interrupted, job_args := interrupted.args),
        (changed, [*changed.args[:-2], "--trainer.max_epochs", "99"]),
    ):
        (job.run_dir / "checkpoints").mkdir(parents=True)
        (job.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
        (job.run_dir / "reproduce.json").write_text(json.dumps({"args": args}))
    assert job_args == interrupted.args
    assert [j.status for j in plan(spec, [0, 1], tmp_path / "runs", None, [])] == [
        "resume",
        "new",
        "new",
        "new",
    ]
    assert reproduce([table, "--output_root", tmp_path / "runs"], program) == 0
    by_dir = {c[c.index("--run_dir") + 1]: c for c in calls()}
    resumed = by_dir[str(interrupted.run_dir)]
    assert resumed[resumed.index("--ckpt_path") + 1] == str(
        interrupted.run_dir / "checkpoints" / "last.ckpt"
    )
    # a checkpoint made with other settings is not resumed
    assert sum("--ckpt_path" in c for c in calls()) == 1


def test_failed_row_does_not_stop_the_table(tmp_path, fake, monkeypatch, capsys):
    program, calls = fake
    monkeypatch.setenv("FAKE_FAIL", "jtt")
    table = write_table(tmp_path)
    assert reproduce([table, "--output_root", tmp_path / "runs", "--seeds", "1"], program) == 1
    captured = capsys.readouterr()
    assert "FAILED (exit 3)" in captured.out and "1 run(s) failed: JTT seed 0" in captured.err
    report = (tmp_path / "runs" / "tables" / "toy_table" / "report.md").read_text()
    assert (
        "| JTT |        - |        61 |        - |          - |           - |          - | 0 |"
        in report
    )
    monkeypatch.delenv("FAKE_FAIL")
    assert (
        reproduce(
            [table, "--output_root", tmp_path / "runs", "--seeds", "1", "--rows", "J*"], program
        )
        == 0
    )
    assert len(calls()) == 3 and "/jtt/" in calls()[-1][calls()[-1].index("--run_dir") + 1]


def test_sigterm_is_forwarded_to_the_running_child(tmp_path, capsys):
    """A scheduler's SIGTERM to `reproduce` is passed on to the row's process (no orphan keeps
    training), and reproduce says which run stopped and how to resume it."""
    import threading

    sleeper = tmp_path / "sleeper.py"
    pid_file = tmp_path / "child.pid"
    sleeper.write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n"
    )

    def send_sigterm():
        deadline = time.time() + 60
        while not pid_file.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=send_sigterm)
    thread.start()
    start = time.time()
    code = reproduce(
        [write_table(tmp_path), "--output_root", tmp_path / "runs", "--seeds", "1"],
        [sys.executable, str(sleeper)],
    )
    thread.join()
    assert code == 143 and time.time() - start < 60
    err = capsys.readouterr().err
    assert (
        "reproduce: stopped by SIGTERM during ERM seed 0 (exit -15)" in err
        and "Run the same `robustrep reproduce` command again" in err
    )
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # terminated and reaped
        os.kill(child, 0)
    # the handler is only installed while rows run
    assert signal.getsignal(signal.SIGTERM) == before


def test_option_errors(tmp_path, capsys):
    table = write_table(tmp_path)
    assert reproduce([table, "--rows", "nothing*", "--dry-run"]) == 2
    assert reproduce([table, "--profile", "huge", "--dry-run"]) == 2
    assert "unknown profile 'huge'" in capsys.readouterr().err
    assert run_cli(["reproduce", "no_such_table", "--dry-run"]) == 2
    assert "known tables:" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_smoke_table_stopped_by_sigterm_and_resumed_ends_as_uninterrupted(tmp_path, capsys):
    """A real one-row table in subprocesses: `reproduce` gets SIGTERM mid-run, passes it on, says
    which run stopped and exits 143; the same command again resumes that run, which ends exactly as
    an uninterrupted run of the same arguments."""
    table = tmp_path / "one.yaml"
    table.write_text(
        textwrap.dedent(f"""
        title: One row
        columns: {{acc: test/acc, worst: test/worst_group_acc}}
        profiles:
          smoke: {{data.init_args.size: 8, data.init_args.train_size: 1280,
                   data.init_args.val_size: 32, data.init_args.test_size: 32}}
        rows:
          - {{label: ERM, config: {ROOT / "experiments" / "quickstart.yaml"}, paper: {{acc: 50.0}}}}
        """)
    )
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "robustrep.cli",
        "reproduce",
        str(table),
        "--profile",
        "smoke",
        "--output_root",
        str(tmp_path / "runs"),
    ]
    slow = ["--trainer.max_epochs", "6", "--trainer.limit_train_batches", "40"]
    run_dir = tmp_path / "runs" / "tables" / "one-smoke" / "erm" / "seed0"
    proc = subprocess.Popen(
        [*argv, *slow], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while (
        not (run_dir / "checkpoints" / "last.ckpt").exists()
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to reproduce only: it forwards the stop to its row
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, out[-2000:] + err[-2000:]
    assert "reproduce: stopped by SIGTERM during ERM seed 0 (exit 143); its checkpoint: " in err
    assert (
        "robustrep: stopped by SIGTERM; checkpoint at epoch"
        in (run_dir / "reproduce.log").read_text()
    )
    assert not (run_dir / "results.json").exists(), "the run finished before it could be stopped"

    done = subprocess.run(
        [*argv, *slow], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ERM seed 0 (resuming)" in done.stdout
    log = (run_dir / "reproduce.log").read_text()
    assert "--ckpt_path" in log and "Restored all states from the checkpoint" in log
    results = json.loads((run_dir / "results.json").read_text())
    report = (tmp_path / "runs" / "tables" / "one-smoke" / "report.md").read_text()
    assert f"| ERM | {100 * results['metrics']['test/acc']:8.2f} |        50 |" in report

    # the same arguments, never interrupted, in this process: identical numbers
    args = json.loads((run_dir / "reproduce.json").read_text())["args"]
    pinned = args.index("--run_dir") + 1
    args[pinned] = str(tmp_path / "uninterrupted")
    assert run_cli(args) == 0
    reference = json.loads((tmp_path / "uninterrupted" / "results.json").read_text())["metrics"]
    assert reference == pytest.approx(results["metrics"], abs=1e-6)

    # a third time (in this process): nothing left to run
    assert (
        reproduce(
            [table, "--profile", "smoke", "--output_root", tmp_path / "runs", *slow],
            program=["false"],
        )
        == 0
    )
    assert "1 runs, 1 finished, 0 to run" in capsys.readouterr().out
