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

Run: ``.venv/bin/python benchmarks/ipirm_step.py`` (one thread; a few minutes on a shared 2-core
machine). The last line is the 8-partition step ratio.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def step_benchmark(batch: int = 256, repeats: int = 3) -> dict[str, float]:
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

    results = {}
    for p in (0, 1, 4, 8):  # alternate candidates so drift hits all alike
        results[f"step_p{p}"] = _timeit(lambda p=p: full_step(p), repeats)
        results[f"loss_p{p}"] = _timeit(lambda p=p: loss_step(p), 4 * repeats)
    return results


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


def maximisation_benchmark(sizes=(10_000, 50_000)) -> dict[str, dict[str, float]]:
    out = {}
    for n in sizes:
        for mode in ("plain", "max"):
            res = subprocess.run(
                [sys.executable, __file__, "--child", str(n), mode],
                capture_output=True,
                text=True,
                check=True,
            )
            out[f"{mode}_{n}"] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    maxi = maximisation_benchmark()
    for n in (10_000, 50_000):
        plain, ours = maxi[f"plain_{n}"], maxi[f"max_{n}"]
        print(
            f"maximisation N={n}: one epoch {ours['seconds']:.2f} s vs plain NT-Xent pass "
            f"{plain['seconds']:.2f} s -> {ours['seconds'] / plain['seconds']:.2f}x; peak memory "
            f"+{ours['extra_mib']:.0f} MiB (plain +{plain['extra_mib']:.0f} MiB)"
        )
    steps = step_benchmark()
    for p in (1, 4, 8):
        print(
            f"minimisation, {p} partition(s): step {steps[f'step_p{p}'] * 1e3:.1f} ms vs SimCLR "
            f"{steps['step_p0'] * 1e3:.1f} ms -> {steps[f'step_p{p}'] / steps['step_p0']:.2f}x; "
            f"loss only {steps[f'loss_p{p}'] * 1e3:.2f} ms vs {steps['loss_p0'] * 1e3:.2f} ms -> "
            f"{steps[f'loss_p{p}'] / steps['loss_p0']:.2f}x"
        )
    print(
        "IP-IRM step with 8 partitions / SimCLR step: "
        f"{steps['step_p8'] / steps['step_p0']:.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child_maximisation(int(sys.argv[2]), sys.argv[3])))
    else:
        main()
