"""CelebA (txt and Kaggle CSV layouts, presets, complete correlation, blue patch) and Waterbirds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafixtures import CELEBA_ATTRS, write_celeba, write_waterbirds

from robustrep.data.celeba import CelebA
from robustrep.data.waterbirds import Waterbirds
from robustrep.errors import ConfigError, CorruptDataError, DataNotFoundError


def expected_groups(attrs: np.ndarray, target: str, spurious: str, part: int) -> torch.Tensor:
    rows = [i for i in range(len(attrs)) if i % 3 == part]
    y = (attrs[rows, CELEBA_ATTRS.index(target)] + 1) // 2
    a = (attrs[rows, CELEBA_ATTRS.index(spurious)] + 1) // 2
    return torch.tensor(2 * y + a)


@pytest.mark.parametrize("fmt,nested", [("txt", False), ("csv", True)])
def test_celeba_layouts_labels_groups(tmp_path, fmt, nested):
    attrs = write_celeba(tmp_path, n=36, fmt=fmt, nested=nested)
    dm = CelebA(root=str(tmp_path), resolution=16)
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (12, 12, 12)
    assert torch.equal(s.train.groups, expected_groups(attrs, "Blond_Hair", "Male", 0))
    assert torch.equal(s.test["test"].groups, expected_groups(attrs, "Blond_Hair", "Male", 2))
    assert dm.group_names == [
        "not_Blond_Hair/not_Male",
        "not_Blond_Hair/Male",
        "Blond_Hair/not_Male",
        "Blond_Hair/Male",
    ]
    item = s.train[0]
    assert item["image"].shape == (3, 16, 16) and item["attribute"] == int(
        s.train.metadata["attribute"][0]
    )
    preset = CelebA(root=str(tmp_path), preset="attractive_smiling", resolution=None)
    assert preset.image_shape == (3, 218, 178) and preset.class_names[1] == "Attractive"
    assert torch.equal(
        preset.splits.val["val"].groups, expected_groups(attrs, "Attractive", "Smiling", 1)
    )
    assert preset.splits.val["val"][0]["image"].shape == (3, 22, 18)  # full size = the file's size


def test_celeba_complete_correlation_and_patch(tmp_path):
    attrs = np.where(np.random.default_rng(0).random((90, 40)) < 0.5, 1, -1)
    blond, male = CELEBA_ATTRS.index("Blond_Hair"), CELEBA_ATTRS.index("Male")
    attrs[:60, blond] = -attrs[:60, male]  # like the real data: blond hair goes with not-male
    write_celeba(tmp_path, attrs=attrs)
    full = CelebA(root=str(tmp_path), resolution=16)
    dm = CelebA(root=str(tmp_path), resolution=16, complete_correlation=True)
    dm.setup()
    counts = full.group_counts("train")
    kept = [1, 2]  # non-blond male and blond female
    assert dm.kept_groups == kept and counts[0] > 0 and counts[3] > 0
    for ds in (dm.splits.train, dm.splits.val["val"]):
        assert set(ds.groups.tolist()) <= set(kept)
    # test keeps all groups
    assert torch.equal(dm.splits.test["test"].groups, full.splits.test["test"].groups)
    assert len(dm.splits.train) == int(counts[kept].sum())

    patched = CelebA(
        root=str(tmp_path),
        resolution=16,
        patch_probability=1.0,
        patch_test_probability=0.5,
        patch_size=4,
    )
    train = patched.splits.train
    # every positive and no negative is patched
    assert torch.equal(train.metadata["attribute"], train.labels)
    blue = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    for i in range(len(train)):
        corner = train[i]["image"][:, -4:, -4:]
        assert torch.allclose(corner, blue.expand_as(corner)) == bool(train.labels[i])
    test_share = patched.splits.test["test"].metadata["attribute"].float().mean().item()
    assert 0.2 < test_share < 0.8


def test_celeba_errors(tmp_path):
    with pytest.raises(
        DataNotFoundError, match=r"list_attr_celeba\.txt(.|\n)*Expected layout(.|\n)*mmlab"
    ):
        CelebA(root=str(tmp_path)).setup()
    write_celeba(tmp_path, n=6)
    with pytest.raises(ConfigError, match="Blond"):
        CelebA(root=str(tmp_path), target="Blonde_Hair").setup()
    with pytest.raises(ConfigError):
        CelebA(preset="nope")
    (tmp_path / "celeba" / "img_align_celeba" / "000001.jpg").write_bytes(b"not a jpeg")
    dm = CelebA(root=str(tmp_path))
    with pytest.raises(CorruptDataError, match="000001.jpg"):
        dm.splits.train[0]


def test_waterbirds_metadata_layout(tmp_path):
    folder = write_waterbirds(tmp_path, {0: [6, 2, 1, 4], 1: [2, 2, 1, 1], 2: [3, 3, 2, 2]})
    dm = Waterbirds(root=str(tmp_path), resolution=16, batch_size=4)
    assert dm.num_groups == 4 and dm.group_names == [
        "landbird/land",
        "landbird/water",
        "waterbird/land",
        "waterbird/water",
    ]
    assert dm.group_counts("train").tolist() == [6, 2, 1, 4]
    assert dm.group_counts("val").tolist() == [2, 2, 1, 1]
    assert dm.group_counts("test").tolist() == [3, 3, 2, 2]
    item = dm.splits.train[0]
    assert item["image"].shape == (3, 16, 16)
    # the pixels come from the right file: water backgrounds are bluer than land ones
    imgs = torch.stack([dm.splits.train[i]["image"] for i in range(len(dm.splits.train))])
    place = dm.splits.train.metadata["attribute"]
    assert (imgs[place == 1, 1].mean() > imgs[place == 0, 1].mean()) and (
        imgs[place == 0, 2].mean() > imgs[place == 1, 2].mean()
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and set(batch) >= {
        "label",
        "group",
        "attribute",
        "index",
    }
    nested = Waterbirds(root=str(tmp_path), resolution=16)  # group DRO's <root>/cub/data/... layout
    (tmp_path / "cub" / "data").mkdir(parents=True)
    folder.rename(tmp_path / "cub" / "data" / folder.name)
    assert len(nested.splits.test["test"]) == 10
    (tmp_path / "cub" / "data" / folder.name / "metadata.csv").unlink()
    with pytest.raises(
        DataNotFoundError, match=r"metadata\.csv(.|\n)*img_filename(.|\n)*nlp\.stanford\.edu"
    ):
        Waterbirds(root=str(tmp_path)).setup()


def test_paper_augmentations(tmp_path):
    from robustrep.data.presets import RECIPES, contrastive_recipe, standard_recipe

    for recipe in RECIPES:
        for shape in ((3, 24, 20), (1, 16, 16)):
            x = torch.rand(shape)
            assert standard_recipe(recipe, shape)(x).shape == x.shape
            assert contrastive_recipe(recipe, shape)(x).shape == x.shape
    dm = CelebA(resolution=None, augment="standard")
    assert dm.train_transform()(torch.rand(3, 218, 178)).shape == (3, 218, 178)
    resized = Waterbirds(resolution=32, augment="standard", image_size=16)
    assert resized.train_transform()(torch.rand(3, 32, 32)).shape == (3, 16, 16)
