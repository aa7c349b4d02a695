"""Chroma-VAE stage-2 kNN: robustrep's chunked brute-force kNN vs scikit-learn's brute-force
``KNeighborsClassifier`` on the same random features (CelebA-sized: 160k x 24 latents, k = sqrt(N)).

    python benchmarks/knn_stage2.py [--bank 160000] [--queries 10000] [--dim 24] [--threads 1]

Prints both wall times (fit + predict), their ratio and whether the predictions agree.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from robustrep.evaluation.knn import euclidean_knn_votes as knn_predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bank", type=int, default=160_000, help="training latents (CelebA train ~ 160k)"
    )
    parser.add_argument("--queries", type=int, default=10_000, help="test latents to classify")
    parser.add_argument(
        "--dim", type=int, default=24, help="latent size (mu_2 of dim_z=32, z_p=1/4)"
    )
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads for both implementations"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(args.bank, args.dim, generator=gen)
    labels = torch.randint(args.classes, (args.bank,), generator=gen)
    queries = torch.randn(args.queries, args.dim, generator=gen)
    k = round(math.sqrt(args.bank))

    start = time.perf_counter()
    ours = (
        knn_predict(
            bank.to(args.device), labels.to(args.device), queries.to(args.device), k, args.classes
        )
        .argmax(1)
        .cpu()
    )
    t_ours = time.perf_counter() - start

    from sklearn.neighbors import KNeighborsClassifier
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=args.threads):
        start = time.perf_counter()
        clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", n_jobs=args.threads).fit(
            bank.numpy(), labels.numpy()
        )
        ref = torch.as_tensor(clf.predict(queries.numpy()))
        t_ref = time.perf_counter() - start

    agree = (ours == ref).float().mean().item()
    print(
        f"kNN stage 2: bank {args.bank} x {args.dim}, {args.queries} queries, k = {k}, "
        f"{args.threads} thread(s), device {args.device}"
    )
    print(f"  robustrep knn_predict : {t_ours:8.2f} s")
    print(f"  sklearn brute-force   : {t_ref:8.2f} s")
    print(f"  ratio sklearn / ours  : {t_ref / t_ours:8.2f}x   (prediction agreement {agree:.4f})")


if __name__ == "__main__":
    main()
