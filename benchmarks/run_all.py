"""``make bench``: run the quick benchmark scripts one after another (each in its own process, each
a couple of minutes at most on 2 CPU cores) and print one table of their verdict lines.

Every script ends its targets with ``<name>: median ratio X (target Y) met`` (or ``MISSED``); the
table gathers those lines with the script and its wall time. The full output of each script goes
to ``--log`` (default ``runs/bench/<script>.log``). Exit status 1 if any target is missed.

    python benchmarks/run_all.py [--only overhead.py contrastive_losses.py]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = [
    "overhead.py",
    "contrastive_losses.py",
    "cim_step.py",
    "msssim_triplet.py",
    "crltac_step.py",
    "knn_stage2.py",
    "ipirm_step.py",
]
#: ``--smoke``: settings so small that every script runs in seconds (the numbers mean nothing; the
#: test suite uses them to check that each script still runs and prints its verdicts).
SMOKE = {
    "overhead.py": ["--rounds", "1", "--epochs", "1"],
    "contrastive_losses.py": [
        "--batch",
        "16",
        "--rounds",
        "1",
        "--calls",
        "1",
        "--loop-batch",
        "16",
    ],
    "cim_step.py": ["--settings", "mlp28", "--rounds", "1", "--steps", "1"],
    "msssim_triplet.py": ["--batch", "4", "--rounds", "1", "--calls", "1"],
    "crltac_step.py": ["--batch", "4", "--steps", "1", "--repeats", "1"],
    "knn_stage2.py": ["--bank", "3000", "--queries", "50", "--rounds", "1"],
    "ipirm_step.py": ["--sizes", "1000", "--rounds", "1", "--batch", "16", "--max-rounds", "1"]
    + ["--in-process"],
}
VERDICT = re.compile(r"\(target [<>]= [^)]*\) (met|MISSED)$")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=QUICK, choices=QUICK, metavar="SCRIPT")
    parser.add_argument("--log", default="runs/bench", help="folder for each script's full output")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per script")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: check, not measure")
    args = parser.parse_args()
    log_dir = Path(args.log)
    log_dir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, float]] = []
    for script in args.only:
        print(f"running {script} ...", flush=True)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, str(HERE / script), *(SMOKE[script] if args.smoke else [])],
                capture_output=True,
                text=True,
                timeout=args.timeout,
            )
            output, failed = proc.stdout + proc.stderr, proc.returncode != 0
        except subprocess.TimeoutExpired as err:
            output, failed = f"{err.stdout or ''}\ntimed out after {args.timeout:.0f} s", True
        seconds = time.perf_counter() - start
        (log_dir / f"{Path(script).stem}.log").write_text(output)
        verdicts = [line for line in output.splitlines() if VERDICT.search(line)]
        if failed:
            verdicts.append(f"{script}: FAILED (see {log_dir / Path(script).stem}.log) MISSED")
        rows += [(script, line, seconds) for line in verdicts]
    width = max(len(line) for _, line, _ in rows) if rows else 0
    print(f"\n{'script':<22} {'verdict':<{width}}  seconds")
    for script, line, seconds in rows:
        print(f"{script:<22} {line:<{width}}  {seconds:7.0f}")
    missed = sum(line.endswith("MISSED") for _, line, _ in rows)
    print(f"\n{len(rows) - missed} of {len(rows)} targets met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
