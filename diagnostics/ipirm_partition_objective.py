"""Does IP-IRM's maximisation objective prefer the planted attribute to a random split?

For a trained run (its ``config.yaml`` and ``checkpoints/last.ckpt``), embed two augmented views of
every training example as the maximisation step does (eval mode, the run's projection), then

1. score fixed partitions with the objective the step maximises (``soft_partition_objective``
   with 0/1 assignments, mean over ``--chunks`` random chunks of ``--chunk`` examples): a random
   split, the planted attribute (e.g. Colored MNIST's colour) and the label, at each
   ``--lambda2``, with the subset loss and the penalty apart;
2. run the maximisation step itself (``maximise_partition``, ``--epochs`` passes in chunks of
   ``--chunk``) at each ``--lambda2`` and report the partition's NMI / best-match accuracy with
   the attribute and the label, and its epoch means.

docs/reproductions/ipirm.md (self-supervised Colored MNIST) reports its output. Run:

    python diagnostics/ipirm_partition_objective.py RUN_DIR [--lambda2 0.5 0.2 0] [--root data]
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
import yaml

from robustrep.evaluation.features import gathered_view_features
from robustrep.evaluation.partitions import partition_alignment
from robustrep.losses.irm import soft_partition_objective
from robustrep.losses.partition import maximise_partition
from robustrep.methods import IPIRM


def build_datamodule(config: dict, root: str | None):
    """The run's datamodule from its saved ``config.yaml`` (``--root`` replaces its data root)."""
    data = config["data"]
    module, _, name = data["class_path"].rpartition(".")
    kwargs = dict(data.get("init_args") or {})
    if root is not None:
        kwargs["root"] = root
    return getattr(importlib.import_module(module), name)(**kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished IPIRM run (config.yaml, last.ckpt)")
    parser.add_argument("--root", default=None, help="data root (default: the run's)")
    parser.add_argument("--lambda2", type=float, nargs="+", default=[0.5, 0.2, 0.0])
    parser.add_argument("--chunk", type=int, default=1000, help="examples per chunk")
    parser.add_argument("--chunks", type=int, default=5, help="chunks scored per fixed partition")
    parser.add_argument("--epochs", type=int, default=15, help="maximisation epochs (0: skip)")
    parser.add_argument("--attribute", default="attribute", help="the planted metadata field")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = yaml.safe_load((args.run_dir / "config.yaml").read_text())
    model = IPIRM.load_from_checkpoint(
        args.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    ).eval()
    dm = build_datamodule(config, args.root)
    dm.setup("fit")
    index, f1, f2 = gathered_view_features(model, dm.train_views_loader(), model.project, "cpu")
    train = dm.train_dataset()
    planted = torch.as_tensor(train.metadata[args.attribute])[index].long()
    label = train.labels[index].long()
    tau, irm_tau = model.temperature, model.irm_temperature
    gen = torch.Generator().manual_seed(0)
    chunks = torch.randperm(len(index), generator=gen)[: args.chunk * args.chunks]
    scores: dict[str, list[torch.Tensor]] = {"random": [], args.attribute: [], "label": []}
    for c in chunks.split(args.chunk):
        splits = {
            "random": torch.randint(0, 2, (len(c),), generator=gen),
            args.attribute: planted[c],
            "label": label[c],
        }
        for name, split in splits.items():
            probs = torch.nn.functional.one_hot(split, 2).float()
            _, loss, grad = soft_partition_objective(f1[c], f2[c], probs, tau, irm_tau, 0.0)
            scores[name].append(torch.stack([loss.mean(), grad.pow(2).mean()]))
    print(
        f"fixed partitions ({args.chunks} chunks of {args.chunk}; "
        "objective = loss + lambda2 x penalty)"
    )
    print(
        f"{'partition':<12} {'loss':>8} {'penalty':>8} "
        + " ".join(f"{f'l2={l2:g}':>9}" for l2 in args.lambda2)
    )
    for name, values in scores.items():
        loss, penalty = torch.stack(values).mean(0).tolist()
        cells = " ".join(f"{loss + l2 * penalty:9.4f}" for l2 in args.lambda2)
        print(f"{name:<12} {loss:8.4f} {penalty:8.4f} {cells}")
    if args.epochs > 0:
        print(f"\nmaximisation ({args.epochs} epochs, chunks of {args.chunk})")
        for l2 in args.lambda2:
            history: list[float] = []
            assign = maximise_partition(
                f1,
                f2,
                tau=tau,
                irm_tau=irm_tau,
                lambda2=l2,
                epochs=args.epochs,
                batch_size=args.chunk,
                seed=1,
                history=history,
            )
            a, b = partition_alignment(assign, planted), partition_alignment(assign, label)
            print(
                f"lambda2 {l2:g}: {args.attribute} NMI {a['nmi']:.3f} match {a['match']:.3f}, "
                f"label NMI {b['nmi']:.3f} match {b['match']:.3f}; epoch means "
                + " ".join(f"{h:.4f}" for h in history)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
