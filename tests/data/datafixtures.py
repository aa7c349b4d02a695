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
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header + array.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_mnist_raw(
    root: Path,
    folder: str,
    train_labels: np.ndarray,
    test_labels: np.ndarray,
    seed: int = 0,
    gz: bool = False,
) -> None:
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


def save_image(
    path: Path,
    size: tuple[int, int] = (16, 16),
    colour: tuple[int, int, int] = (120, 60, 200),
    seed: int = 0,
) -> None:
    """A small JPEG/PNG with a random pattern on a base colour."""
    rng = np.random.default_rng(seed)
    array = np.clip(
        np.array(colour)[None, None] + rng.integers(-30, 30, size=(*size, 3)), 0, 255
    ).astype(np.uint8)
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
            pickle.dump(
                {
                    "batch_label": name,
                    "labels": labels,
                    "data": data,
                    "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
                },
                f,
            )
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, f)


def cifar100_fine_to_coarse() -> list[int]:
    """A fine -> coarse mapping with five fine classes per superclass (as in the official
    pickles).
    """
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
        pickle.dump(
            {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)],
            },
            f,
        )


def write_stl10(root: Path, n_train: int = 20, n_test: int = 10, size: int = 96) -> None:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10 + 1).astype(np.uint8)  # stored 1-10
        # N, C, W, H (column-major)
        images = rng.integers(0, 255, size=(n, 3, size, size)).astype(np.uint8)
        images[:, 0, 0, 1] = labels  # x=0, y=1 -> after transposition pixel (row 1, col 0)
        images.tofile(folder / f"{split}_X.bin")
        labels.tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text(
        "\n".join(
            ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
        )
        + "\n"
    )


CELEBA_ATTRS = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]


def write_celeba(
    root: Path,
    n: int = 40,
    fmt: str = "txt",
    nested: bool = False,
    size: tuple[int, int] = (22, 18),
    seed: int = 0,
    attrs: np.ndarray | None = None,
) -> np.ndarray:
    """CelebA annotations in the official txt layout (or the Kaggle CSVs) plus tiny JPEGs.
    Returns the attribute matrix (n x 40, values -1/1); partition = i % 3."""
    rng = np.random.default_rng(seed)
    if attrs is None:
        attrs = np.where(rng.random((n, 40)) < 0.5, 1, -1)
    n = len(attrs)
    folder = root / "celeba"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    if fmt == "txt":
        lines = [str(n), " ".join(CELEBA_ATTRS) + " "]
        # the real file pads with spaces
        lines += [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, attrs)]
        (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (folder / "list_eval_partition.txt").write_text(
            "".join(f"{name} {i % 3}\n" for i, name in enumerate(names))
        )
    else:
        header = "image_id," + ",".join(CELEBA_ATTRS)
        rows = [name + "," + ",".join(str(v) for v in row) for name, row in zip(names, attrs)]
        (folder / "list_attr_celeba.csv").write_text("\n".join([header, *rows]) + "\n")
        (folder / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{name},{i % 3}\n" for i, name in enumerate(names))
        )
    images = folder / "img_align_celeba"
    if nested:
        images = images / "img_align_celeba"
    for i, name in enumerate(names):
        save_image(images / name, size=size, colour=(40 + 5 * (i % 30), 90, 150), seed=i)
    return attrs


def write_waterbirds(
    root: Path, per_group: dict[int, list[int]], size: tuple[int, int] = (20, 24), quality: int = 90
) -> Path:
    """``root/waterbird_complete95_forest2water2/`` with metadata.csv and JPEGs.
    ``per_group[split]`` = examples of groups 0-3 (g = 2y + place) in that split."""
    folder = root / "waterbird_complete95_forest2water2"
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    img_id = 1
    for split, counts in per_group.items():
        for g, count in enumerate(counts):
            y, place = divmod(g, 2)
            for _ in range(count):
                species = "001.Black_footed_Albatross" if y else "002.Laysan_Albatross"
                fname = f"{species}/{species.split('.')[1]}_{img_id:04d}_{g}.jpg"
                colour = (30, 80 + 100 * place, 200 - 100 * place)
                path = folder / fname
                path.parent.mkdir(parents=True, exist_ok=True)
                rng = np.random.default_rng(img_id)
                array = np.clip(
                    np.array(colour)[None, None] + rng.integers(-20, 20, size=(*size, 3)), 0, 255
                ).astype(np.uint8)
                Image.fromarray(array).save(path, quality=quality)
                place_dir = "/o/ocean/00001.jpg" if place else "/b/bamboo_forest/00001.jpg"
                rows.append(f"{img_id},{fname},{y},{split},{place},{place_dir}")
                img_id += 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


IN9_FOLDERS = [
    "00_dog",
    "01_bird",
    "02_wheeled vehicle",
    "03_reptile",
    "04_carnivore",
    "05_insect",
    "06_musical instrument",
    "07_primate",
    "08_fish",
]


def write_image_folder(
    folder: Path,
    classes: list[str],
    per_class: int,
    ext: str = ".JPEG",
    size: tuple[int, int] = (12, 12),
    tag: int = 0,
) -> None:
    """ImageFolder layout ``folder/<class>/<n>.<ext>``; the red channel encodes the class index."""
    for c, name in enumerate(classes):
        for i in range(per_class):
            save_image(
                folder / name / f"img_{tag}_{c}_{i}{ext}",
                size=size,
                colour=(20 * c + 20, 100, 100),
                seed=1000 * tag + 10 * c + i,
            )


def write_isic(root: Path, rows: list[tuple[str, str, int, str]]) -> None:
    """``root/isic/labels.csv`` (GEORGE columns) + ``images/``; rows = (name, benign_malignant,
    patch, fold).
    """
    folder = root / "isic"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = ["Image Index,benign_malignant,Diagnosis,patch,diagnosis_confirm_type,fold"]
    for i, (name, bm, patch, fold) in enumerate(rows):
        lines.append(f"{name},{bm},{int(bm == 'malignant')},{patch},histopathology,{fold}")
        save_image(
            folder / "images" / (name if "." in name else name + ".jpg"), size=(14, 14), seed=i
        )
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View "
    "Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung "
    "Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural "
    "Effusion,Pleural Other,Fracture,Support Devices"
)


def write_chest_xray(
    root: Path, nih_labels: list[int], chexpert_values: list[str], lateral_every: int = 0
) -> None:
    """NIH ``nih/Data_Entry_2017.csv`` + PNGs in ``nih/images_001/images/`` and CheXpert-v1.0-small
    ``train.csv`` + JPEGs. ``chexpert_values`` are the raw Pneumonia cells ('1.0', '0.0', '-1.0',
    '')."""
    nih = root / "nih"
    lines = [NIH_HEADER]
    for i, y in enumerate(nih_labels):
        name = f"{i + 1:08d}_000.png"
        finding = "Pneumonia|Effusion" if y else ("No Finding" if i % 2 else "Cardiomegaly")
        lines.append(f"{name},{finding},0,{i + 1},58,M,PA,2682,2749,0.143,0.143,")
        rng = np.random.default_rng(i)
        path = nih / "images_001" / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(16, 16)).astype(np.uint8), mode="L").save(path)
    nih.mkdir(parents=True, exist_ok=True)
    (nih / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    chex = root / "CheXpert-v1.0-small"
    lines = [CHEXPERT_HEADER]
    for i, value in enumerate(chexpert_values):
        view = "Lateral" if lateral_every and i % lateral_every == lateral_every - 1 else "Frontal"
        rel = (
            f"CheXpert-v1.0-small/train/patient{i // 2 + 1:05d}/study1/"
            f"view{i % 2 + 1}_{view.lower()}.jpg"
        )
        lines.append(f"{rel},Female,68,{view},AP,,,,1.0,,,,{value},,,,,,1.0")
        rng = np.random.default_rng(10_000 + i)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(20, 16)).astype(np.uint8), mode="L").save(path)
    (chex / "train.csv").write_text("\n".join(lines) + "\n")
