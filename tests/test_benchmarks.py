"""``make bench``'s runner and the benchmark scripts it runs: on tiny settings (``--smoke``) every
script runs and ends each of its targets with a verdict line, which the runner's table gathers."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RATIO = r"median ratio \d+\.\d+ \(target [<>]= [\d.]+\) (met|MISSED)"
VERDICT = r"\(target [<>]= [^)]*\) (met|MISSED)"  # ratios, and the one memory target

sys.path.insert(0, str(BENCH))
from run_all import QUICK, SMOKE  # noqa: E402

sys.path.remove(str(BENCH))


@pytest.fixture
def bench_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the scripts set one thread


@pytest.mark.slow
@pytest.mark.parametrize("script", QUICK)
def test_benchmark_script_ends_its_targets_with_verdict_lines(
    script, bench_path, monkeypatch, capsys
):
    monkeypatch.setattr(sys, "argv", [script, *SMOKE[script]])
    runpy.run_path(str(BENCH / script), run_name="__main__")
    out = capsys.readouterr().out
    assert re.search(RATIO, out), out


@pytest.mark.slow
def test_make_bench_runner_prints_the_table_of_verdicts(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--smoke", "--only", "crltac_step.py"]
        + ["--log", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    table = proc.stdout.split("\nscript ")[-1].splitlines()[1:]
    rows = [row for row in table if re.search(VERDICT + r"\s+\d+$", row)]
    assert len(rows) == 1 and rows[0].startswith("crltac_step.py"), proc.stdout
    assert re.search(RATIO, (tmp_path / "crltac_step.log").read_text())
    missed = " MISSED " in rows[0]
    assert proc.returncode == (1 if missed else 0), proc.stdout + proc.stderr
    assert f"\n{0 if missed else 1} of 1 targets met" in proc.stdout
