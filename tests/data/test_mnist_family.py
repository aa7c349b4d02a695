"""MNIST, MNIST-Coarse, FashionMNIST, Colored MNIST (CIM and IRM), Grid MNIST and MF-Dominoes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafixtures import balanced_labels, write_mnist_raw

from robustrep.data.colored_mnist import ColoredMNISTCIM, ColoredMNISTIRM
from robustrep.data.digit_compositions import GridMNIST, MFDominoes, cell_box
from robustrep.data.mnist import MNIST, FashionMNIST, MNISTCoarse
from robustrep.errors import ConfigError, DataNotFoundError


@pytest.fixture
def mnist_root(tmp_path):
    write_mnist_raw(tmp_path, "MNIST", balanced_labels(120), balanced_labels(40))
    write_mnist_raw(
        tmp_path, "FashionMNIST", balanced_labels(200), balanced_labels(60), seed=1, gz=True
    )
    return tmp_path


def centre_code(images: torch.Tensor) -> torch.Tensor:
    """The label the fixture wrote into an image's centre (brightness 100 + 15 * label)."""
    return ((images[:, 0, 14, 14].long() - 100) // 15).long()


def test_mnist_reads_raw_files_and_carves_val(mnist_root):
    dm = MNIST(root=str(mnist_root), digits_source="mnist", val_fraction=0.25, seed=3)
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (90, 30, 40)
    assert dm.image_shape == (1, 28, 28) and dm.num_groups == 10
    for ds in (s.train, s.val["val"], s.test["test"]):
        # images stay paired with their labels
        assert torch.equal(centre_code(ds.images), ds.labels)
        assert torch.equal(ds.groups, ds.labels)
    # val is a seeded, disjoint carve of the training file
    train_codes = set(map(tuple, s.train.images.flatten(1).tolist()))
    assert not train_codes & set(map(tuple, s.val["val"].images.flatten(1).tolist()))
    again = MNIST(root=str(mnist_root), digits_source="mnist", val_fraction=0.25, seed=3).splits
    assert torch.equal(again.val["val"].images, s.val["val"].images)
    item = s.train[0]
    assert (
        item["image"].dtype == torch.float32
        and item["image"].max() <= 1.0
        and set(item) >= {"image", "label", "group", "index"}
    )


def test_mnist_reads_gz_files(tmp_path):
    write_mnist_raw(tmp_path, "MNIST", balanced_labels(24), balanced_labels(10), gz=True)
    ds = MNIST(root=str(tmp_path), val_fraction=0.25).splits.test["test"]
    assert torch.equal(centre_code(ds.images), ds.labels) and len(ds) == 10


def test_mnist_coarse_labels_and_strata(mnist_root):
    dm = MNISTCoarse(root=str(mnist_root), digits_source="mnist")
    ds = dm.splits.test["test"]
    digits = centre_code(ds.images)
    assert torch.equal(ds.labels, (digits >= 5).long())
    assert torch.equal(ds.metadata["fine_label"], digits)
    assert torch.equal(ds.groups, digits)  # group = label * 5 + digit % 5
    assert dm.num_groups == 10 and dm.num_fine_classes == 10 and dm.group_names[7] == "5-9/stratum2"
    by_label = MNISTCoarse(root=str(mnist_root), digits_source="mnist", group_by="label")
    assert by_label.num_groups == 2 and torch.equal(by_label.splits.test["test"].groups, ds.labels)


def test_missing_mnist_files_name_the_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        MNIST(root=str(tmp_path), digits_source="mnist").setup()
    with pytest.raises(
        DataNotFoundError,
        match=r"FashionMNIST.*train-images-idx3-ubyte(.|\n)*Expected layout(.|\n)*zalandoresearch",
    ):
        FashionMNIST(root=str(tmp_path)).setup()


def test_fashion_mnist_reads_gz_idx(mnist_root):
    dm = FashionMNIST(root=str(mnist_root), val_fraction=0.1)
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (180, 20, 60)
    assert torch.equal(centre_code(s.test["test"].images), s.test["test"].labels)


def test_colored_mnist_cim_construction():
    dm = ColoredMNISTCIM(digits_source="sklearn", alpha=2.0, val_fraction=0.1, seed=0)
    s = dm.splits
    train, test = s.train, s.test["test"]
    assert dm.image_shape == (3, 28, 28) and dm.num_groups == 4
    for y in (0, 1):
        in_class = train.labels == y
        aligned = (train.metadata["attribute"][in_class] == y).sum().item()
        assert aligned == round(0.02 * in_class.sum().item())  # exactly alpha% get the test colour
    assert torch.equal(test.metadata["attribute"], test.labels)  # test: 0-4 yellow, 5-9 blue
    assert torch.equal(train.labels, (train.metadata["fine_label"] >= 5).long())
    assert torch.equal(train.groups, train.labels * 2 + train.metadata["attribute"])
    # the corner pixel is background: yellow (255, 255, 0) or blue (0, 0, 255)
    corner = train.images[:, :, 0, 0]
    yellow = torch.tensor([255, 255, 0], dtype=torch.uint8)
    blue = torch.tensor([0, 0, 255], dtype=torch.uint8)
    expected = torch.where((train.metadata["attribute"] == 0)[:, None], yellow, blue)
    assert torch.equal(corner, expected)
    balanced = s.test["test_balanced"]
    for y in (0, 1):
        share = (balanced.metadata["attribute"][balanced.labels == y] == y).float().mean().item()
        assert abs(share - 0.5) < 0.01
    caption = ColoredMNISTCIM(digits_source="sklearn", alpha=2.0, test_aligned=0.02).splits.test[
        "test"
    ]
    assert (caption.metadata["attribute"] == caption.labels).float().mean().item() < 0.05


def test_colored_mnist_cim_asymmetric_test_colouring():
    """The paper's test sentence read literally: 0-4 yellow strokes on black, 5-9 on blue."""
    plain = ColoredMNISTCIM(digits_source="sklearn", alpha=2.0, seed=0)
    dm = ColoredMNISTCIM(
        digits_source="sklearn", alpha=2.0, seed=0, test_colour_regions=["digit", "background"]
    )
    test, plain_test = dm.splits.test["test"], plain.splits.test["test"]
    black, blue = torch.zeros(3, dtype=torch.uint8), torch.tensor([0, 0, 255], dtype=torch.uint8)
    corner = test.images[:, :, 0, 0]
    assert (corner[test.labels == 0] == black).all() and (corner[test.labels == 1] == blue).all()
    # strokes of 0-4 are yellow: red = green, no blue anywhere
    zero_to_four = test.images[test.labels == 0].int()
    assert (zero_to_four[:, 2] == 0).all() and (zero_to_four[:, 0] == zero_to_four[:, 1]).all()
    assert zero_to_four[:, 0].amax((1, 2)).min() > 200
    # 5-9 and every other split are coloured as without the option
    assert torch.equal(test.images[test.labels == 1], plain_test.images[plain_test.labels == 1])
    assert torch.equal(dm.splits.train.images, plain.splits.train.images)
    assert torch.equal(
        dm.splits.test["test_balanced"].images, plain.splits.test["test_balanced"].images
    )
    with pytest.raises(ConfigError, match="one region per class"):
        ColoredMNISTCIM(digits_source="sklearn", test_colour_regions=["digit"])
    with pytest.raises(ConfigError, match="stroke"):
        ColoredMNISTCIM(digits_source="sklearn", test_colour_regions=["digit", "stroke"])


def test_colored_mnist_irm_rates_and_channels():
    dm = ColoredMNISTIRM(digits_source="sklearn", val_fraction=0.1, seed=1)
    s = dm.splits
    train, test = s.train, s.test["test"]
    digit_label = (train.metadata["fine_label"] >= 5).long()
    assert abs((train.labels != digit_label).float().mean().item() - 0.25) < 0.04
    assert abs((train.metadata["attribute"] != train.labels).float().mean().item() - 0.1) < 0.03
    assert abs((test.metadata["attribute"] != test.labels).float().mean().item() - 0.9) < 0.04
    iid = s.test["test_iid"]
    assert abs((iid.metadata["attribute"] != iid.labels).float().mean().item() - 0.1) < 0.04
    # the digit sits in the channel of its colour, the other channel is zero
    n = len(train)
    colour = train.metadata["attribute"]
    assert train.images[torch.arange(n), 1 - colour].sum() == 0
    assert (train.images[torch.arange(n), colour].flatten(1).sum(1) > 0).all()
    assert torch.equal(train.groups, 2 * train.labels + colour)
    small = ColoredMNISTIRM(
        digits_source="sklearn", size=14, channels=3, train_colour_flip=[0.1, 0.2]
    )
    assert small.image_shape == (3, 14, 14)
    st = small.splits.train
    assert st.images.shape[1:] == (3, 14, 14) and st.images[:, 2].sum() == 0
    env = st.metadata["domain"]
    assert abs((env == 0).float().mean().item() - 0.5) < 0.01
    rates = [
        (st.metadata["attribute"][env == e] != st.labels[env == e]).float().mean().item()
        for e in (0, 1)
    ]
    assert abs(rates[0] - 0.1) < 0.05 and abs(rates[1] - 0.2) < 0.05
    other_seed = ColoredMNISTIRM(digits_source="sklearn", val_fraction=0.1, seed=2).splits.train
    assert not torch.equal(other_seed.metadata["attribute"], train.metadata["attribute"])


def test_contrastive_no_colour_views_keep_each_digits_colour_and_jitter_does_not():
    # issue 20's self-supervised Colored MNIST: the colour must survive every view (no colour
    # operation), while the standard contrastive recipe changes it in some views
    def off_channel_ink(augment: str) -> torch.Tensor:
        dm = ColoredMNISTIRM(
            digits_source="sklearn",
            size=14,
            channels=3,
            label_noise=0.0,
            augment=augment,
            num_views=2,
            batch_size=64,
            seed=0,
        )
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        colour = batch["attribute"]  # 0 = red channel, 1 = green channel
        views = torch.cat(batch["views"])
        other = torch.cat([1 - colour, 1 - colour])
        off = views[torch.arange(len(views)), other] + views[:, 2]  # the other channels' ink
        return off.flatten(1).amax(1)

    assert off_channel_ink("contrastive_no_colour").max() == 0
    jittered = off_channel_ink("contrastive")
    assert (jittered > 0.05).float().mean() > 0.3


def test_grid_mnist_places_digit_in_its_cell():
    dm = GridMNIST(digits_source="sklearn", val_fraction=0.1)
    ds = dm.splits.test["test"]
    assert ds.images.shape[1:] == (1, 84, 84) and dm.num_groups == 90
    boxes = dm.digit_boxes("test")
    cells = ds.metadata["attribute"]
    counts = torch.bincount(cells, minlength=9)
    assert counts.min() > 30  # uniform over the 9 cells (500 test digits)
    inside = torch.zeros_like(ds.images, dtype=torch.bool)
    for i, (t, l, b, r) in enumerate(boxes.tolist()):
        inside[i, :, t:b, l:r] = True
    assert ds.images[~inside].sum() == 0  # nothing outside the cell
    assert (ds.images.float() * inside).flatten(1).sum(1).gt(0).all()
    assert torch.equal(ds.groups, ds.labels * 9 + cells)
    assert cell_box(5).tolist() == [28, 56, 56, 84]


def test_mf_dominoes_correlation_and_test_sets(mnist_root):
    dm = MFDominoes(root=str(mnist_root), digits_source="mnist", val_fraction=0.2, seed=0)
    s = dm.splits
    assert dm.image_shape == (1, 56, 28)
    train = s.train
    assert train.images.shape[1:] == (1, 56, 28)
    # 40 coats + dresses in the fixture's train file
    assert len(train) == 32 and len(s.val["val"]) == 8
    top, bottom = train.images[:, :, :28], train.images[:, :, 28:]
    item_class = centre_code(bottom)
    assert torch.equal(train.labels, (item_class == 3).long()) and set(item_class.tolist()) <= {
        3,
        4,
    }
    # the top digit is the attribute
    assert torch.equal(centre_code(top), train.metadata["attribute"])
    assert torch.equal(train.metadata["attribute"], train.labels)  # completely correlated
    assert set(train.groups.tolist()) == {0, 3}
    mixed = s.test["mnist_randomized"]
    assert len(mixed) == 12 and set(mixed.groups.tolist()) <= {0, 1, 2, 3}
    assert torch.equal(mixed.labels, (centre_code(mixed.images[:, :, 28:]) == 3).long())
    assert torch.equal(centre_code(mixed.images[:, :, :28]), mixed.metadata["attribute"])
    frand = s.test["fmnist_randomized"]
    # label follows the digit
    assert torch.equal(frand.labels, centre_code(frand.images[:, :, :28]))
    assert torch.equal(s.test["correlated"].labels, s.test["correlated"].metadata["attribute"])
    assert list(s.test) == ["mnist_randomized", "fmnist_randomized", "correlated"]


def test_mf_dominoes_randomized_is_balanced_on_more_data(tmp_path):
    write_mnist_raw(tmp_path, "FashionMNIST", balanced_labels(40), balanced_labels(2000), seed=1)
    dm = MFDominoes(root=str(tmp_path), digits_source="sklearn", val_fraction=0.5)
    mixed = dm.splits.test["mnist_randomized"]
    counts = torch.bincount(mixed.groups, minlength=4).float()
    assert counts.sum() == 400 and (counts / 400 - 0.25).abs().max() < 0.07
    assert np.isclose(
        (mixed.metadata["attribute"] == mixed.labels).float().mean().item(), 0.5, atol=0.07
    )


def test_augmentation_recipes_keep_the_benchmark_shape():
    torch.manual_seed(0)
    for dm in (
        MFDominoes(augment="standard"),
        MFDominoes(augment="contrastive"),
        ColoredMNISTIRM(channels=2, augment="contrastive"),
    ):
        t = dm.train_transform()
        x = torch.rand(dm.image_shape)
        assert t(x).shape == x.shape
    # digits are never mirrored: the standard recipe only translates
    digit = torch.zeros(1, 28, 28)
    digit[0, 4:24, 6] = 1.0  # a vertical stroke left of centre
    t = MNIST(augment="standard").train_transform()
    for _ in range(30):
        cols = t(digit)[0].sum(0).nonzero().squeeze(1)
        assert cols.max() <= 8
