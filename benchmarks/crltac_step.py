r"""CRL-TAC training step vs a SimCLR step with the same m (PERFORMANCE.md target: <= 1.5x).

Both are :class:`robustrep.methods.CRLTAC` on Grid MNIST-sized inputs (1 x 84 x 84, 289 crops of
20 x 20 at stride 4): SimCLR (``policy: uniform``) runs the encoder step only; CRL-TAC runs the
encoder step (crops sampled from the policy) plus the policy step (uniform crops, encoder forward
without gradient in eval mode, policy forward/backward with the entropy bonus), each with its
optimiser step. The policy step encodes each distinct constant crop (the blank canvas: most uniform
crops of a Grid MNIST image) once (``dedupe_constant_crops``, on by default; ``--no-dedupe`` to
measure without it).
The two candidates alternate round by round (``benchmarks/timing.py``); the verdict is on the
median per-round ratio.

    .venv/bin/python benchmarks/crltac_step.py [--batch 64] [--m 8] [--steps 5] [--repeats 5] \
        [--no-dedupe]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import Target, alternate, per_round, verdict

from robustrep.methods.crltac import CRLTAC


def make_step(policy: str, images: torch.Tensor, m: int, dedupe: bool = True):
    torch.manual_seed(0)
    model = CRLTAC(
        image_shape=tuple(images.shape[1:]),
        num_classes=10,
        policy=policy,
        m=m,
        dedupe_constant_crops=dedupe,
    )
    optimizers = model.configure_optimizers()
    encoder_opt = optimizers[0]
    policy_opt = optimizers[1] if len(optimizers) > 1 else None

    def step() -> None:
        # as in training_step
        log_p = model.policy_log_probs(images) if policy_opt is not None else None
        encoder_opt.zero_grad(set_to_none=True)
        model.encoder_loss(images, log_p).backward()
        encoder_opt.step()
        if policy_opt is not None:
            policy_opt.zero_grad(set_to_none=True)
            model.policy_loss(images, log_p)[0].backward()
            policy_opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--m", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=7, help="rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--dedupe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="encode constant crops once in the policy step",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = torch.zeros(args.batch, 1, 84, 84)
    gen = torch.Generator().manual_seed(0)
    cells = torch.randint(9, (args.batch,), generator=gen)
    for i, cell in enumerate(cells.tolist()):  # a bright 28 x 28 "digit" in one cell of each canvas
        top, left = 28 * (cell // 3), 28 * (cell % 3)
        images[i, 0, top + 4 : top + 24, left + 8 : left + 20] = torch.rand(20, 12, generator=gen)
    steps = {
        "simclr": make_step("uniform", images, args.m),
        "crltac": make_step("learned", images, args.m, args.dedupe),
    }
    times = alternate(steps, rounds=args.repeats, calls=args.steps)
    print(
        f"batch {args.batch} x m {args.m} crops, {args.threads} thread(s), {args.repeats} rounds "
        f"of {args.steps} steps, dedupe {args.dedupe}"
    )
    for name, values in times.items():
        print(f"  {name:7s} {1000 * statistics.median(values):8.1f} ms/step (median)")
    verdict(
        f"CRL-TAC / SimCLR step (m = {args.m})",
        per_round(times["crltac"], times["simclr"]),
        Target(1.5),
    )


if __name__ == "__main__":
    main()
