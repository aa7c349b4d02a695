"""CIM's training step time relative to ERM's (and SCL-E2E's) on the same backbone and batch.

The paper (fig. 3b) reports CIM slower than ERM and faster than SCL-E2E, which encodes x, x+ and x-
(a batch of 3n) where CIM encodes only x (plus the small Transformation Network and the MS-SSIM
triplet). PERFORMANCE.md's target: CIM step / ERM step <= 2.5x.

Every candidate runs forward + backward + Adam step on the same batch, its triplets drawn from an
in-memory training set of 2,048 images (so the sampling and gathering cost is included). The
candidates alternate in rounds (``benchmarks/timing.py``); the verdict is on the median per-round
ratio CIM / ERM. "only m" (CIM with lam 0: the TN, trained through the cross-entropy) splits CIM's
extra time into the TN's part (only m - ERM) and the triplet's (CIM - only m). Settings:

* ``mlp28``: Colored MNIST's MLP 1024-512-256 on 3 x 28 x 28, batch 128 (a tiny backbone: the TN
  and MS-SSIM are comparable to it, the worst case for the ratio);
* ``resnet18_64``: ResNet-18 on 3 x 64 x 64, batch 32 (a realistic backbone, small images).

    .venv/bin/python benchmarks/cim_step.py [--settings mlp28 resnet18_64] [--rounds 5] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from timing import Target, alternate, per_round, verdict

from robustrep.data.datasets import TensorImageDataset
from robustrep.methods import CIM, ERM

SETTINGS = {
    "mlp28": dict(
        backbone="mlp", backbone_kwargs={"hidden": [1024, 512, 256]}, shape=(3, 28, 28), batch=128
    ),
    "resnet18_64": dict(backbone="resnet18", backbone_kwargs={}, shape=(3, 64, 64), batch=32),
}

CANDIDATES = {
    "ERM": (ERM, {}),
    "VIB": (CIM, dict(transform_network=False, lam=0.0, vib_beta=1e-3)),
    "only m": (CIM, dict(lam=0.0)),  # the TN and the CE through psi(x), no triplet
    "CIM": (CIM, dict(lam=1.0)),
    "CIM+VIB": (CIM, dict(lam=1.0, vib_beta=1e-3)),
    "SCL-E2E": (CIM, dict(transform_network=False, variant="scl", lam=1.0)),
}


def build(name: str, setting: dict, train: TensorImageDataset):
    cls, kwargs = CANDIDATES[name]
    torch.manual_seed(0)
    model = cls(
        backbone=setting["backbone"],
        backbone_kwargs=setting["backbone_kwargs"],
        num_classes=2,
        image_shape=setting["shape"],
        **kwargs,
    )
    if isinstance(model, CIM) and model.lam > 0:
        model.set_triplet_source(train)
        model.triplets.reseed(0)
    model.train()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def step(model, optimizer, batch: dict, i: int) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = model.training_step(batch, i)
    loss.backward()
    optimizer.step()


def run(setting_name: str, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per training step of every candidate, one entry per round."""
    setting = SETTINGS[setting_name]
    c, h, w = setting["shape"]
    gen = torch.Generator().manual_seed(0)
    n = 2048
    train = TensorImageDataset(
        torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=gen),
        torch.randint(0, 2, (n,), generator=gen),
    )
    idx = torch.arange(setting["batch"])
    batch = {
        "image": train.images[idx].float() / 255,
        "label": train.labels[idx],
        "index": idx,
        "group": train.labels[idx],
    }
    models = {name: build(name, setting, train) for name in CANDIDATES}
    candidates = {
        name: (lambda model=model, opt=opt: step(model, opt, batch, 0))
        for name, (model, opt) in models.items()
    }
    return alternate(candidates, rounds=rounds, calls=steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per candidate per round")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # self.log outside a Trainer
    for name in args.settings:
        times = run(name, args.rounds, args.steps)
        erm = statistics.median(times["ERM"])
        print(f"\n{name}: median ms per training step (forward + backward + Adam)")
        for cand, t in times.items():
            med = statistics.median(t)
            print(f"  {cand:<8} {1000 * med:8.1f} ms   {med / erm:5.2f}x ERM")
        print(
            "  CIM / SCL-E2E (paper: CIM faster): "
            f"{statistics.median(per_round(times['CIM'], times['SCL-E2E'])):.2f}"
        )
        verdict(f"CIM / ERM step, {name}", per_round(times["CIM"], times["ERM"]), Target(2.5))


if __name__ == "__main__":
    main()
