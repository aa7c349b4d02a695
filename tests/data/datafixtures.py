"""Tiny copies of the real on-disk formats of every benchmark, written into a temporary folder."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """Write a uint8 array in the idx format of MNIST (magic 0x0000 0x08 ndim, big-endian dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_raw(root: Path, folder: str, train_labels: np.ndarray, test_labels: np.ndarray, seed: int = 0, gz: bool = False) -> None:
    """``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``; images encode their label
    as brightness so tests can check the pairing of images and labels."""
    rng = np.random.default_rng(seed)
    for prefix, labels in (("train", train_labels), ("t10k", test_labels)):
        labels = np.asarray(labels, dtype=np.uint8)
        images = rng.integers(0, 20, size=(len(labels), 28, 28)).astype(np.uint8)
        images[:, 10:18, 10:18] = 100 + 15 * labels[:, None, None]
        raw = root / folder / "raw"
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels, gz)


def balanced_labels(n: int, classes: int = 10) -> np.ndarray:
    return np.arange(n) % classes


def save_image(path: Path, size: tuple[int, int] = (16, 16), colour: tuple[int, int, int] = (120, 60, 200), seed: int = 0) -> None:
    """A small JPEG/PNG with a random pattern on a base colour."""
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(colour)[None, None] + rng.integers(-30, 30, size=(*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_cifar10(root: Path, per_batch: int = 10) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        data = rng.integers(0, 255, size=(per_batch, 3072)).astype(np.uint8)
        data[:, 0] = labels  # first red pixel = label, to check pairing
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data, "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)


def cifar100_fine_to_coarse() -> list[int]:
    """A fine -> coarse mapping with five fine classes per superclass (as in the official pickles)."""
    return [
        4,
        1,
        14,
        8,
        0,
        6,
        7,
        7,
        18,
        3,
        3,
        14,
        9,
        18,
        7,
        11,
        3,
        9,
        7,
        11,
        6,
        11,
        5,
        10,
        7,
        6,
        13,
        15,
        3,
        15,
        0,
        11,
        1,
        10,
        12,
        14,
        16,
        9,
        11,
        5,
        5,
        19,
        8,
        8,
        15,
        13,
        14,
        17,
        18,
        10,
        16,
        4,
        17,
        4,
        2,
        0,
        17,
        4,
        18,
        17,
        10,
        3,
        2,
        12,
        12,
        16,
        12,
        1,
        9,
        19,
        2,
        10,
        0,
        1,
        16,
        12,
        9,
        13,
        15,
        13,
        16,
        19,
        2,
        4,
        6,
        19,
        5,
        5,
        8,
        19,
        18,
        1,
        2,
        15,
        6,
        0,
        17,
        8,
        14,
        13,
    ]


def write_cifar100(root: Path, train_fine: list[int], test_fine: list[int]) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    mapping = cifar100_fine_to_coarse()
    rng = np.random.default_rng(1)
    for name, fine in (("train", train_fine), ("test", test_fine)):
        data = rng.integers(0, 255, size=(len(fine), 3072)).astype(np.uint8)
        data[:, 0] = fine
        entry = {
            "filenames": [f"{i}.png" for i in range(len(fine))],
            "batch_label": name,
            "fine_labels": list(fine),
            "coarse_labels": [mapping[f] for f in fine],
            "data": data,
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}, f)


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, size: int = 96) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # stored 1-10
        images = rng.integers(0, 255, size=(n, 3, size, size)).astype(np.uint8)  # N, C, W, H (column-major)
        images[:, 0, 0, 1] = labels  # x=0, y=1 -> after transposition pixel (row 1, col 0)
        images.tofile(folder / f"{split}_X.bin")
        labels.tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]) + "\n")
