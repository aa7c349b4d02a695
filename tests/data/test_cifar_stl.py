"""CIFAR-10(-Coarse), CIFAR-100(-Coarse, -Coarse-U) and STL-10 from their real file formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafixtures import cifar100_fine_to_coarse, write_cifar10, write_cifar100, write_stl10

from robustrep.data.cifar import CIFAR10, CIFAR100, CIFAR10Coarse, CIFAR100Coarse, CIFAR100CoarseU
from robustrep.data.stl10 import STL10
from robustrep.errors import DataNotFoundError


def test_cifar10_and_coarse(tmp_path):
    write_cifar10(tmp_path, per_batch=10)
    dm = CIFAR10(root=str(tmp_path), val_fraction=0.2)
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (40, 10, 10)
    for ds in (s.train, s.val["val"], s.test["test"]):
        # fixture wrote the label into pixel (R, 0, 0)
        assert torch.equal(ds.images[:, 0, 0, 0].long(), ds.labels)
    coarse = CIFAR10Coarse(root=str(tmp_path), val_fraction=0.2)
    ds = coarse.splits.train
    fine = ds.metadata["fine_label"]
    assert torch.equal(ds.labels, torch.isin(fine, torch.tensor([0, 1, 8, 9])).long())
    assert coarse.num_groups == 12 and coarse.group_names[6] == "vehicle/stratum0"
    # the stratum is the fine class's rank inside its coarse class
    assert torch.equal(ds.groups[fine == 8], torch.full(((fine == 8).sum(),), 6 + 2))
    assert torch.equal(ds.groups[fine == 2], torch.zeros((fine == 2).sum(), dtype=torch.long))


def test_cifar100_coarse_reads_coarse_labels_from_the_pickle(tmp_path):
    train_fine = [f for f in range(100) for _ in range(3)]
    write_cifar100(tmp_path, train_fine, list(range(100)))
    mapping = torch.tensor(cifar100_fine_to_coarse())
    plain = CIFAR100(root=str(tmp_path), val_fraction=0.1)
    assert plain.num_classes == 100 and torch.equal(
        plain.splits.test["test"].labels, torch.arange(100)
    )
    dm = CIFAR100Coarse(root=str(tmp_path), val_fraction=0.1)
    test = dm.splits.test["test"]
    assert torch.equal(test.labels, mapping)
    assert torch.equal(test.metadata["fine_label"], torch.arange(100))
    rank = test.metadata["attribute"]
    for c in range(20):  # ranks 0-4 follow the fine class index inside every superclass
        members = (mapping == c).nonzero().squeeze(1)
        assert rank[members].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(test.groups, test.labels * 5 + rank) and dm.num_groups == 100


def test_cifar100_coarse_u_counts(tmp_path):
    train_fine = [f for f in range(100) for _ in range(12)]
    write_cifar100(tmp_path, train_fine, list(range(100)))
    dm = CIFAR100CoarseU(root=str(tmp_path), counts=[8, 4, 2, 1, 1], val_fraction=0.2, seed=1)
    train, val = dm.splits.train, dm.splits.val["val"]
    assert len(val) == 240  # validation is carved first and not subsampled
    per_class = torch.bincount(train.metadata["fine_label"], minlength=100)
    left = 12 - torch.bincount(val.metadata["fine_label"], minlength=100)
    rank = dm.splits.test["test"].metadata["attribute"]  # test holds fine class f at position f
    expected = torch.minimum(torch.tensor([8, 4, 2, 1, 1])[rank], left)
    assert torch.equal(per_class, expected)
    assert (per_class[rank == 0] > per_class[rank == 4].max()).all()  # the head stratum dominates


def test_stl10_binary_layout(tmp_path):
    write_stl10(tmp_path, n_train=20, n_test=10)
    dm = STL10(root=str(tmp_path), val_fraction=0.25)
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (15, 5, 10)
    test = s.test["test"]
    assert test.images.shape[1:] == (3, 96, 96)
    assert torch.equal(test.labels, torch.arange(10))  # file labels 1-10 -> 0-9
    # column-major storage: the fixture's byte at (x=0, y=1) must land at row 1, column 0
    assert torch.equal(test.images[:, 0, 1, 0].long(), test.labels + 1)
    unl = np.random.default_rng(0).integers(0, 255, size=(4, 3, 96, 96)).astype(np.uint8)
    unl.tofile(tmp_path / "stl10_binary" / "unlabeled_X.bin")
    (tmp_path / "stl10_binary" / "fold_indices.txt").write_text(
        "\n".join(" ".join(str(i) for i in range(k, 20, 10)) for k in range(10)) + "\n"
    )
    with_u = STL10(
        root=str(tmp_path), val_fraction=0.5, fold=3, include_unlabeled=True, batch_size=8
    )
    train = with_u.splits.train
    assert len(train) == 1 + 4
    item = train[4]
    assert item["label"] == -1 and item["group"] == -1 and item["image"].shape == (3, 96, 96)
    assert torch.allclose(item["image"], torch.from_numpy(unl[3]).transpose(1, 2).float() / 255)
    batch = next(iter(with_u.train_dataloader()))
    assert batch["image"].shape == (5, 3, 96, 96)


@pytest.mark.parametrize(
    "cls,name",
    [
        (CIFAR10, "cifar-10-batches-py/data_batch_1"),
        (CIFAR100, "cifar-100-python/train"),
        (STL10, "stl10_binary/train_X.bin"),
    ],
)
def test_missing_files_are_named(tmp_path, cls, name):
    with pytest.raises(DataNotFoundError, match=name.replace("/", ".")) as info:
        cls(root=str(tmp_path)).setup()
    assert "Expected layout" in str(info.value) and "download: true" in str(info.value)


def test_corrupt_files_are_named(tmp_path):
    from datafixtures import write_mnist_raw

    from robustrep.data.mnist import FashionMNIST
    from robustrep.errors import CorruptDataError

    write_cifar10(tmp_path, per_batch=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04truncated")
    with pytest.raises(CorruptDataError, match="data_batch_3"):
        CIFAR10(root=str(tmp_path)).setup()
    write_mnist_raw(tmp_path, "FashionMNIST", np.arange(10), np.arange(10))
    path = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])  # truncated: fewer values than the header promises
    with pytest.raises(CorruptDataError, match="train-images-idx3-ubyte"):
        FashionMNIST(root=str(tmp_path)).setup()
