"""Data-loading throughput (images/s) of an in-memory and a folder-of-JPEGs benchmark, 0 and 2
workers.

    python benchmarks/dataload.py                      # 10,000 CIFAR images, 3,000 Waterbirds JPEGs
    python benchmarks/dataload.py --jpegs 1000 --jpeg-size 256 --workers 0 2 4

It writes both fixtures in the real on-disk formats into a temporary folder (CIFAR-10 python
pickles; Waterbirds ``metadata.csv`` + CUB-style class folders of JPEGs), then iterates the training
loader of ``robustrep.data.CIFAR10`` (uint8 tensors in memory, ``standard`` augmentation) and of
``robustrep.data.Waterbirds`` (lazy JPEG decode, resize + centre crop to ``--resolution``, standard
augmentation) for ``--epochs`` epochs and prints images/s per worker count. The first epoch of a
worker setting includes starting the workers. One run prints everything, so compare numbers within
the output rather than across machines.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_cifar(root: Path, n: int) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = max(1, n // 5)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "data": rng.integers(0, 255, size=(per, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, per).tolist(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)


def write_waterbirds(root: Path, n: int, size: int) -> None:
    folder = root / "waterbird_complete95_forest2water2"
    rng = np.random.default_rng(0)
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    base = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
    for i in range(n):
        y, place = int(rng.integers(2)), int(rng.integers(2))
        rel = f"{y:03d}.Species_{y}/Bird_{i:05d}.jpg"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        # smooth structure + noise: compresses like a photo, not like flat colour
        img = np.kron(np.roll(base, i, axis=0), np.ones((8, 8, 1), dtype=np.uint8))
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 12, size=img.shape), 0, 255).astype(
            np.uint8
        )
        Image.fromarray(img).save(folder / rel, quality=90)
        rows.append(f"{i + 1},{rel},{y},0,{place},/o/ocean/1.jpg")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")


def throughput(dm, epochs: int) -> list[float]:
    """Images per second of each epoch over the training loader."""
    loader = dm.train_dataloader()
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for batch in loader:
            seen += batch["image"].shape[0]
        rates.append(seen / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cifar-images",
        type=int,
        default=10_000,
        help="in-memory training images (CIFAR-10 format)",
    )
    parser.add_argument(
        "--jpegs", type=int, default=3_000, help="Waterbirds-format JPEGs to generate"
    )
    parser.add_argument(
        "--jpeg-size",
        type=int,
        default=320,
        help="side of the generated JPEGs in px (real Waterbirds images are ~300-500 px)",
    )
    parser.add_argument(
        "--resolution",
        type=int,
        default=224,
        help="Waterbirds output side after resize + centre crop",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from robustrep.data import CIFAR10, Waterbirds

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_cifar(root, args.cifar_images)
        write_waterbirds(root, args.jpegs, args.jpeg_size)
        print(
            f"fixtures written in {time.perf_counter() - t0:.1f} s: {args.cifar_images} CIFAR "
            f"images, {args.jpegs} JPEGs of {args.jpeg_size} px"
        )
        print(
            f"{'benchmark':<34} {'workers':>7} "
            + " ".join(f"{'epoch ' + str(e + 1):>12}" for e in range(args.epochs))
            + "   (images/s)"
        )
        results = {}
        for name, make in [
            (
                "CIFAR10 in memory (32 px, crop+flip)",
                lambda w: CIFAR10(
                    root=str(root),
                    val_fraction=0.01,
                    augment="standard",
                    batch_size=args.batch_size,
                    num_workers=w,
                ),
            ),
            (
                f"Waterbirds JPEGs ({args.resolution} px)",
                lambda w: Waterbirds(
                    root=str(root),
                    resolution=args.resolution,
                    augment="standard",
                    batch_size=args.batch_size,
                    num_workers=w,
                ),
            ),
        ]:
            for w in args.workers:
                dm = make(w)
                dm.setup("fit")
                rates = throughput(dm, args.epochs)
                results[(name, w)] = rates[-1]
                print(f"{name:<34} {w:>7} " + " ".join(f"{r:>12,.0f}" for r in rates))
        print()
        for name in dict.fromkeys(n for n, _ in results):
            base = results.get((name, args.workers[0]))
            for w in args.workers[1:]:
                print(
                    f"{name}: {w} workers / {args.workers[0]} workers = "
                    f"{results[(name, w)] / base:.2f}x (last epoch)"
                )


if __name__ == "__main__":
    main()
