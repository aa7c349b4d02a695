"""IP-IRM cost: minimisation step with 1/4/8 stored partitions vs a plain SimCLR step, and the
maximisation step's time and peak memory for N = 10k and 50k random features.

PERFORMANCE.md targets: minimisation with 8 partitions <= 1.5x a plain NT-Xent step (public code
4.3x); one maximisation epoch at N = 10k <= 2x a plain pass over the features, peak memory
<= +1.5 GiB and growing linearly in N (public code 7x, +6.8 GiB).

- *step*: two views of B = 256 images (3 x 32 x 32) through the small CNN backbone + the
  512 -> 128 projection, loss, backward, Adam step; plain = SimCLR (``nt_xent``), IP-IRM = the
  same with P partitions (``partition_losses``: full-batch loss + 2P subset losses + penalties).
  The loss-only ratio (embeddings -> loss -> backward) is printed as well.
- *maximisation*: one epoch of :func:`maximise_partition` over N x 128 random normalised features
  (chunks of 2048) vs a plain pass = NT-Xent forward + backward over the same chunks. Peak memory =
  peak RSS of a fresh subprocess minus its RSS once the features exist.

Every candidate alternates round by round with the others (``benchmarks/timing.py``; the
maximisation measurements alternate plain / maximisation in fresh processes). Run:
``python benchmarks/ipirm_step.py`` (one thread). The last line is the 8-partition step verdict.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from timing import Target, alternate, per_round, verdict

torch.set_num_threads(1)


def step_benchmark(batch: int = 256, rounds: int = 5) -> dict[str, list[float]]:
    from robustrep.backbones import build_backbone
    from robustrep.losses.contrastive import nt_xent
    from robustrep.losses.irm import partition_losses

    torch.manual_seed(0)
    backbone = build_backbone("cnn", (3, 32, 32), width=16, blocks=3)
    head = torch.nn.Sequential(
        torch.nn.Linear(backbone.out_dim, 512, bias=False),
        torch.nn.BatchNorm1d(512),
        torch.nn.ReLU(),
        torch.nn.Linear(512, 128),
    )
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(2 * batch, 3, 32, 32)
    n_index = 10_000
    index = torch.randperm(n_index)[:batch]
    partitions = torch.randint(0, 2, (8, n_index))

    def loss_fn(z1, z2, p):
        if p == 0:
            return nt_xent(z1, z2, 0.5)
        out = partition_losses(z1, z2, partitions[:p, index], 2, 0.5, 0.5, full_batch=True)
        valid = out["valid"]
        n = valid.sum().clamp_min(1)
        return (
            out["full"] + ((out["subset_loss"] + 0.2 * out["subset_grad"].pow(2)) * valid).sum() / n
        )

    def full_step(p):
        opt.zero_grad()
        z = head(backbone(x))
        loss_fn(z[:batch], z[batch:], p).backward()
        opt.step()

    z0 = torch.randn(2 * batch, 128)

    def loss_step(p):
        z = z0.clone().requires_grad_(True)
        loss_fn(z[:batch], z[batch:], p).backward()

    full = {f"step_p{p}": (lambda p=p: full_step(p)) for p in (0, 1, 4, 8)}
    loss_only = {f"loss_p{p}": (lambda p=p: loss_step(p)) for p in (0, 1, 4, 8)}
    return {**alternate(full, rounds=rounds), **alternate(loss_only, rounds=rounds, calls=4)}


def _child_maximisation(n: int, mode: str) -> dict[str, float]:
    from robustrep.losses.contrastive import nt_xent
    from robustrep.losses.partition import maximise_partition

    torch.manual_seed(0)
    f1 = F.normalize(torch.randn(n, 128), dim=1)
    f2 = F.normalize(f1 + 0.3 * torch.randn(n, 128), dim=1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if mode == "max":
        maximise_partition(f1, f2, epochs=1, batch_size=2048, patience=10, seed=0)
    else:
        for chunk in torch.randperm(n).split(2048):
            a = f1[chunk].clone().requires_grad_(True)
            b = f2[chunk].clone().requires_grad_(True)
            nt_xent(a, b, 0.5).backward()
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": elapsed, "extra_mib": (peak - base) / 1024.0}


def maximisation_benchmark(
    sizes=(10_000, 50_000), rounds: int = 2, in_process: bool = False
) -> dict[str, list[dict]]:
    """Each measurement in a fresh subprocess (so peak memory is its own; ``in_process``: in this
    one, a quick check whose memory numbers are only lower bounds); plain and maximisation
    alternate, ``rounds`` times at the first size and once at the others."""
    out: dict[str, list[dict]] = {}
    for i, n in enumerate(sizes):
        for _ in range(rounds if i == 0 else 1):
            for mode in ("plain", "max"):
                if in_process:
                    out.setdefault(f"{mode}_{n}", []).append(_child_maximisation(n, mode))
                    continue
                res = subprocess.run(
                    [sys.executable, __file__, "--child", str(n), mode],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                out.setdefault(f"{mode}_{n}", []).append(
                    json.loads(res.stdout.strip().splitlines()[-1])
                )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="N")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the step timings")
    parser.add_argument("--batch", type=int, default=256, help="B of the minimisation step")
    parser.add_argument(
        "--max-rounds", type=int, default=2, help="maximisation rounds at the first size"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure the maximisation in this process (quick check; memory only a lower bound)",
    )
    args = parser.parse_args()
    first = args.sizes[0]
    maxi = maximisation_benchmark(tuple(args.sizes), args.max_rounds, args.in_process)
    for n in args.sizes:
        plain, ours = maxi[f"plain_{n}"], maxi[f"max_{n}"]
        print(
            f"maximisation N={n}: one epoch "
            + " ".join(f"{r['seconds']:.2f}" for r in ours)
            + " s vs plain NT-Xent pass "
            + " ".join(f"{r['seconds']:.2f}" for r in plain)
            + f" s; peak memory +{max(r['extra_mib'] for r in ours):.0f} MiB "
            f"(plain +{max(r['extra_mib'] for r in plain):.0f} MiB)"
        )
    verdict(
        f"IP-IRM maximisation epoch / plain pass, N={first}",
        [o["seconds"] / p["seconds"] for o, p in zip(maxi[f"max_{first}"], maxi[f"plain_{first}"])],
        Target(2.0),
    )
    peak = max(r["extra_mib"] for r in maxi[f"max_{first}"])
    print(
        f"IP-IRM maximisation peak memory, N={first}: +{peak:.0f} MiB (target <= 1536) "
        + ("met" if peak <= 1536 else "MISSED")
    )
    steps = step_benchmark(args.batch, args.rounds)
    for p in (1, 4, 8):
        step, loss = steps[f"step_p{p}"], steps[f"loss_p{p}"]
        print(
            f"minimisation, {p} partition(s): step {statistics.median(step) * 1e3:.1f} ms vs "
            f"SimCLR {statistics.median(steps['step_p0']) * 1e3:.1f} ms; loss only "
            f"{statistics.median(loss) * 1e3:.2f} ms vs "
            f"{statistics.median(steps['loss_p0']) * 1e3:.2f} ms -> "
            f"{statistics.median(per_round(loss, steps['loss_p0'])):.2f}x"
        )
    verdict(
        "IP-IRM step with 8 partitions / SimCLR step",
        per_round(steps["step_p8"], steps["step_p0"]),
        Target(1.5),
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child_maximisation(int(sys.argv[2]), sys.argv[3])))
    else:
        main()
