"""How often a two-process gloo worker aborts at exit, with and without closing its process group.

    python benchmarks/ddp_spawn_exit.py [--runs 150] [--mode both|leave|close]

Each run spawns 2 processes (torch.multiprocessing, gloo on 127.0.0.1), does a few all-reduces and
a barrier, and returns. ``leave`` leaves the group to the interpreter's exit, as Lightning does for
gloo; ``close`` calls ``robustrep.distributed.close_spawned_process_group`` first, as robustrep's
methods do in their ``teardown`` hook. Prints the failed runs and the counts (3-7 s per run on 2 CPU
cores; ``close`` imports Lightning).
"""

from __future__ import annotations

import argparse
import os
import socket
from types import SimpleNamespace


def _worker(rank: int, port: int, close: bool) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x = torch.ones(1000)
    for _ in range(20):
        dist.all_reduce(x)
    dist.barrier()
    if close:
        from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

        from robustrep.distributed import close_spawned_process_group

        trainer = SimpleNamespace(
            strategy=SimpleNamespace(launcher=object.__new__(_MultiProcessingLauncher))
        )
        close_spawned_process_group(trainer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_failures(runs: int, close: bool) -> int:
    import torch.multiprocessing as mp

    failures = 0
    for i in range(runs):
        try:
            mp.spawn(_worker, args=(_free_port(), close), nprocs=2)
        except mp.ProcessExitedException as err:
            failures += 1
            print(f"  run {i}: {err}", flush=True)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150, help="two-process runs per mode")
    parser.add_argument("--mode", choices=("both", "leave", "close"), default="both")
    args = parser.parse_args()
    modes = ("leave", "close") if args.mode == "both" else (args.mode,)
    for mode in modes:
        print(f"{mode}: {args.runs} runs", flush=True)
        failures = count_failures(args.runs, close=mode == "close")
        print(f"{mode}: {failures} of {args.runs} runs had a worker die at exit", flush=True)


if __name__ == "__main__":
    main()
