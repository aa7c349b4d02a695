import pytest
import torch

from robustrep.data.synthetic import SyntheticSpurious, sample_attributes


@pytest.mark.parametrize("correlation", [0.5, 0.9, 0.98])
def test_training_correlation_matches_request(correlation):
    dm = SyntheticSpurious(correlation=correlation, train_size=4000, size=8)
    train = dm.make_split("train")
    aligned = (
        (train.metadata["attribute"] == train.labels % dm.num_attributes).float().mean().item()
    )
    assert aligned == pytest.approx(correlation, abs=0.02)


def test_eval_sets_balanced_and_reversed():
    dm = SyntheticSpurious(size=8, test_size=4000)
    test = dm.make_split("test")
    counts = torch.bincount(test.groups, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03)
    rev = SyntheticSpurious(size=8, test_size=1000, eval_correlation="reversed").make_split("test")
    assert (rev.metadata["attribute"] != rev.labels % 2).all()


def test_background_sets_pair_same_and_random_backgrounds_with_shape_masks():
    dm = SyntheticSpurious(size=16, test_size=2000, noise=0.0, background_sets=True)
    tests = dm.splits.test
    assert list(tests) == ["test", "mixed_same", "mixed_rand"]
    same, rand = tests["mixed_same"], tests["mixed_rand"]
    assert (same.metadata["attribute"] == same.labels % 2).all()  # every shape on its colour
    aligned = (rand.metadata["attribute"] == rand.labels % 2).float().mean()
    assert abs(float(aligned) - 0.5) < 0.04
    # the shape mask marks exactly the pixels that differ from the background colour (no noise)
    images = same.images.float() / 255
    differs = (images - images[:, :, :1, :1]).abs().amax(1) > 0.2
    fg = same.metadata["foreground"].bool()
    assert fg.any((1, 2)).all() and (~fg).any((1, 2)).all()
    assert torch.equal(differs, fg)
    assert "foreground" not in dm.splits.train.metadata  # training batches stay as they were
    # the other splits are generated exactly as without the option
    plain = SyntheticSpurious(size=16, test_size=2000, noise=0.0)
    assert torch.equal(plain.splits.test["test"].images, tests["test"].images)
    assert torch.equal(plain.splits.train.images, dm.splits.train.images)


def test_groups_strata_and_shapes():
    dm = SyntheticSpurious(
        num_classes=3, num_attributes=2, strata_per_class=2, size=12, train_size=300
    )
    assert dm.num_groups == 6 and dm.num_fine_classes == 6 and dm.image_shape == (3, 12, 12)
    ds = dm.make_split("train")
    assert torch.equal(ds.labels, ds.metadata["fine_label"] // 2)
    assert torch.equal(ds.groups, ds.labels * 2 + ds.metadata["attribute"])
    item = ds[5]
    assert (
        item["image"].shape == (3, 12, 12)
        and item["image"].min() >= 0.0
        and item["image"].max() <= 1.0
    )
    assert set(item) >= {"image", "label", "group", "index", "attribute", "fine_label"}
    assert len(dm.group_names) == 6


@pytest.mark.parametrize("size", [8, 28, 64])
def test_sizes_and_determinism(size):
    a = SyntheticSpurious(size=size, train_size=50, seed=3).make_split("train")
    b = SyntheticSpurious(size=size, train_size=50, seed=3).make_split("train")
    c = SyntheticSpurious(size=size, train_size=50, seed=4).make_split("train")
    assert a.images.shape == (50, 3, size, size)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_core_feature_is_learnable_without_colour():
    # one colour only: a linear model on pixels must still separate the shapes well above chance
    from sklearn.linear_model import LogisticRegression

    dm = SyntheticSpurious(num_attributes=1, size=8, train_size=600, test_size=300, noise=0.1)
    tr, te = dm.make_split("train"), dm.make_split("test")
    clf = LogisticRegression(max_iter=500).fit(
        tr.images.flatten(1).float().numpy() / 255, tr.labels.numpy()
    )
    assert clf.score(te.images.flatten(1).float().numpy() / 255, te.labels.numpy()) > 0.9


def test_sample_attributes_rejects_bad_correlation():
    with pytest.raises(ValueError):
        sample_attributes(torch.zeros(4, dtype=torch.long), 2, 1.5, torch.Generator())


def test_sklearn_digits_source():
    from robustrep.data.digits import load_digits

    x, y = load_digits("sklearn", train=True)
    xt, yt = load_digits("sklearn", train=False)
    assert x.shape == (1297, 1, 28, 28) and xt.shape == (500, 1, 28, 28) and x.dtype == torch.uint8
    assert set(y.tolist()) == set(range(10)) and x.max() > 200


def test_sklearn_box_gives_mnist_layout_and_grid_crops_can_hold_a_digit():
    """sklearn_box 20 puts the ink in the centred 20 x 20 box (4 px border, as MNIST); in Grid
    MNIST every digit then fits one 20 x 20 crop on the stride-4 grid, with the default 28 none
    does."""
    from robustrep.data import GridMNIST
    from robustrep.data.digits import load_digits

    full, _ = load_digits("sklearn", train=True)
    boxed, labels = load_digits("sklearn", train=True, sklearn_box=20)
    assert boxed.shape == full.shape and labels.shape[0] == full.shape[0]
    border = torch.ones(28, 28, dtype=torch.bool)
    border[4:24, 4:24] = False
    assert boxed[:, 0][:, border].max() == 0 and boxed.max() > 200
    # the default layout has ink in the top row of every digit
    assert (full[:, 0, 0] > 50).any(1).all()
    with pytest.raises(ValueError, match="sklearn_box"):
        GridMNIST(digits_source="sklearn", sklearn_box=30)

    def fits_one_crop(sklearn_box: int) -> float:
        dm = GridMNIST(digits_source="sklearn", sklearn_box=sklearn_box)
        dm.setup("fit")
        ink = dm.splits.train.images[:100, 0] > 50
        starts = torch.arange(0, 65, 4)
        fits = []
        for img in ink:
            rows, cols = img.any(1).nonzero().squeeze(1), img.any(0).nonzero().squeeze(1)
            ok_r = (starts <= rows.min()) & (starts + 20 > rows.max())
            ok_c = (starts <= cols.min()) & (starts + 20 > cols.max())
            fits.append(bool(ok_r.any() and ok_c.any()))
        return sum(fits) / len(fits)

    assert fits_one_crop(20) == 1.0 and fits_one_crop(28) == 0.0


def test_train_fraction_reindexes_and_keeps_groups():
    dm = SyntheticSpurious(size=8, train_size=100, train_fraction=0.3)
    dm.setup("fit")
    ds = dm.train_dataset()
    assert len(ds) == 30
    assert [ds[i]["index"] for i in range(len(ds))] == list(range(30))
    assert dm.group_counts("train").sum() == 30


def test_transform_presets_keep_non_square_shapes():
    import torch

    from robustrep.data.transforms import build_transform

    x = torch.rand(1, 56, 28)
    for preset in ("standard", "contrastive"):
        assert build_transform(preset, (1, 56, 28))(x).shape == (1, 56, 28)
