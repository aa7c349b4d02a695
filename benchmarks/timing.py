"""What every benchmark script shares: candidates timed round by round in one process, per-round
ratios, and the one-line verdict ``<name>: median ratio X (target Y) met`` (or ``MISSED``).

Absolute times drift 20-40% on a shared 2-core machine, so a target is always a ratio of two
candidates timed in the same round, and a round times every candidate once (in a rotating order,
so neither always runs first). The verdict is on the median of the per-round ratios; min and max
show how much the machine moved.

Run the scripts from the repository root (``python benchmarks/<script>.py``): this module is
imported by its file name, as the scripts' folder is on ``sys.path``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning.pytorch as pl


@dataclass(frozen=True)
class Target:
    """A ratio target: ``at_most`` (the candidate may cost at most ``value`` times the reference)
    or ``at_least`` (a speed-up or throughput ratio of at least ``value``)."""

    value: float
    at_most: bool = True

    def met(self, ratio: float) -> bool:
        return ratio <= self.value if self.at_most else ratio >= self.value

    def __str__(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.value:g}"


def alternate(
    candidates: dict[str, Callable[[], object]], rounds: int, calls: int = 1, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one entry per round.

    Each round calls every candidate ``calls`` times in a row (the order rotates from round to
    round); ``warmup`` untimed calls of each come first (allocator, lazy initialisation). A
    candidate that returns a float has timed itself (e.g. only the training loop of a whole run):
    that value is its time for the call."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            total = 0.0
            for _ in range(calls):
                start = time.perf_counter()
                own = candidates[name]()
                total += own if isinstance(own, float) else time.perf_counter() - start
            times[name].append(total / calls)
    return times


def per_round(numerator: list[float], denominator: list[float]) -> list[float]:
    """The ratio of two candidates' times in each round."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def verdict(name: str, ratios: list[float], target: Target) -> bool:
    """Print min / median / max of the per-round ratios and the verdict line; True when met."""
    median = statistics.median(ratios)
    ok = target.met(median)
    print(
        f"  {name}: per-round ratio min {min(ratios):.3f} / median {median:.3f} / "
        f"max {max(ratios):.3f} over {len(ratios)} rounds"
    )
    print(f"{name}: median ratio {median:.3f} (target {target}) {'met' if ok else 'MISSED'}")
    return ok


class TrainTimer(pl.Callback):
    """Seconds and optimiser steps from the start to the end of ``Trainer.fit``'s training loop
    (no set-up, no test pass), appended to ``path`` as ``steps seconds`` lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        seconds = time.perf_counter() - self.start
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {seconds}\n")


__all__ = ["Target", "TrainTimer", "alternate", "per_round", "verdict"]
