"""Chroma-VAE stage-2 kNN: robustrep's chunked brute-force kNN vs scikit-learn's brute-force
``KNeighborsClassifier`` on the same random features (CelebA-sized: 160k x 24 latents, k = sqrt(N)).

Each round times both (fit + predict, one thread each) in alternating order; the verdict is on the
median per-round speed ratio sklearn / ours (target >= 1). Ours holds at most ``--block`` floats of
distances at a time (default 2^25 = 128 MB) whatever the bank size.

    python benchmarks/knn_stage2.py [--bank 160000] [--queries 5000] [--dim 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math

import torch
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits
from timing import Target, alternate, per_round, verdict

from robustrep.evaluation.knn import euclidean_knn_votes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bank", type=int, default=160_000, help="training latents (CelebA ~ 160k)"
    )
    parser.add_argument("--queries", type=int, default=5_000, help="test latents to classify")
    parser.add_argument(
        "--dim", type=int, default=24, help="latent size (mu_2 of dim_z 32, z_p 1/4)"
    )
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=2**25, help="floats of distances per block")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(args.bank, args.dim, generator=gen)
    labels = torch.randint(args.classes, (args.bank,), generator=gen)
    queries = torch.randn(args.queries, args.dim, generator=gen)
    k = round(math.sqrt(args.bank))
    predictions = {}

    def ours() -> None:
        votes = euclidean_knn_votes(bank, labels, queries, k, args.classes, args.block)
        predictions["ours"] = votes.argmax(1)

    def sklearn() -> None:
        with threadpool_limits(limits=args.threads):
            clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", n_jobs=args.threads)
            clf.fit(bank.numpy(), labels.numpy())
            predictions["sklearn"] = torch.as_tensor(clf.predict(queries.numpy()))

    times = alternate({"ours": ours, "sklearn": sklearn}, rounds=args.rounds, warmup=0)
    agree = (predictions["ours"] == predictions["sklearn"]).float().mean().item()
    print(
        f"kNN stage 2: bank {args.bank} x {args.dim}, {args.queries} queries, k = {k}, "
        f"{args.threads} thread(s); prediction agreement {agree:.4f}"
    )
    for name, t in times.items():
        print(f"  {name:<8} " + " ".join(f"{s:.2f}" for s in t) + " s per round")
    verdict(
        "kNN stage 2 speed-up (sklearn brute / ours)",
        per_round(times["sklearn"], times["ours"]),
        Target(1.0, at_most=False),
    )


if __name__ == "__main__":
    main()
