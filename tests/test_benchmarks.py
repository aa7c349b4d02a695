"""``make bench``'s runner and the benchmark scripts it runs: on tiny settings (``--smoke``) every
script runs and ends each of its targets with a verdict line, which the runner's table gathers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIO = r"median ratio \d+\.\d+ \(target [<>]= [\d.]+\) (met|MISSED)"
VERDICT = r"\(target [<>]= [^)]*\) (met|MISSED)"  # ratios, and the one memory target


@pytest.mark.slow
def test_every_benchmark_script_runs_and_the_runner_tables_its_verdicts(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run_all import QUICK
    finally:
        sys.path.pop(0)
    proc = subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--smoke", "--log", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    table = proc.stdout.split("\nscript ")[-1].splitlines()[1:]
    rows = [row for row in table if re.search(VERDICT + r"\s+\d+$", row)]
    for script in QUICK:  # each script: at least one verdict, and its full output in the log
        assert any(row.startswith(script) for row in rows), (script, proc.stdout)
        assert re.search(RATIO, (tmp_path / f"{Path(script).stem}.log").read_text())
    missed = any(" MISSED " in row for row in rows)
    assert proc.returncode == (1 if missed else 0), proc.stdout + proc.stderr
    assert re.search(
        rf"{len(rows) - sum(' MISSED ' in r for r in rows)} of {len(rows)} targets met", proc.stdout
    )
