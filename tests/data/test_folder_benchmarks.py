"""Background Challenge, VLCS, VIPriors, ISIC and Chest X-ray from their real folder / CSV
layouts.
"""

from __future__ import annotations

import pytest
import torch
from datafixtures import IN9_FOLDERS, write_chest_xray, write_image_folder, write_isic

from robustrep.data.chestxray import ChestXray
from robustrep.data.imagenet9 import BackgroundChallenge
from robustrep.data.isic import ISIC
from robustrep.data.vipriors import VIPriors
from robustrep.data.vlcs import VLCS, VLCS_CLASSES, VLCS_DOMAINS
from robustrep.errors import DataNotFoundError


def red_class(image: torch.Tensor) -> int:
    """The class index the fixture wrote into the red channel (20 * c + 20)."""
    return int(round((image[0].mean().item() * 255 - 20) / 20))


def test_background_challenge_named_variants(tmp_path):
    write_image_folder(tmp_path / "original" / "train", IN9_FOLDERS, 3, tag=1)
    for k, variant in enumerate(["original", "mixed_same", "mixed_rand", "only_fg", "no_fg"]):
        write_image_folder(tmp_path / "bg_challenge" / variant / "val", IN9_FOLDERS, 1, tag=10 + k)
    dm = BackgroundChallenge(root=str(tmp_path), resolution=12, val_fraction=1 / 3)
    s = dm.splits
    assert list(s.test) == ["original", "mixed_same", "mixed_rand", "only_fg", "no_fg"]
    assert (len(s.train), len(s.val["val"])) == (18, 9)
    assert dm.num_classes == 9 and dm.class_names[2] == "wheeled vehicle"
    mixed = s.test["mixed_rand"]
    assert mixed.labels.tolist() == list(range(9))
    for i in range(9):
        item = mixed[i]
        assert (
            item["image"].shape == (3, 12, 12)
            and red_class(item["image"]) == item["label"]
            and item["domain"] == 2
        )
        assert item["index"] == i
    train = s.train
    # re-indexed after the val carve
    assert [train[i]["index"] for i in range(len(train))] == list(range(len(train)))
    with pytest.raises(DataNotFoundError, match=r"only_bg_t.val(.|\n)*MadryLab"):
        BackgroundChallenge(root=str(tmp_path), eval_variants=["only_bg_t"]).setup()


def test_vlcs_leave_one_domain_out(tmp_path):
    for k, domain in enumerate(VLCS_DOMAINS):
        write_image_folder(tmp_path / "VLCS" / domain, VLCS_CLASSES, 5 + k, ext=".jpg", tag=k)
    dm = VLCS(root=str(tmp_path), test_domain="SUN09", holdout_fraction=0.2, resolution=8)
    s = dm.splits
    assert list(s.test) == ["SUN09", "Caltech101", "LabelMe", "VOC2007"]
    assert len(s.test["SUN09"]) == 5 * 7 and set(s.test["SUN09"].metadata["domain"].tolist()) == {2}
    assert set(s.train.metadata["domain"].tolist()) == {0, 1, 3}
    for k, domain in [(0, "Caltech101"), (1, "LabelMe"), (3, "VOC2007")]:
        n = 5 * (5 + k)
        assert len(s.test[domain]) == round(0.2 * n)
        assert int((s.train.metadata["domain"] == k).sum()) == n - round(0.2 * n)
    assert len(s.val["val"]) == sum(len(s.test[d]) for d in ("Caltech101", "LabelMe", "VOC2007"))
    assert not set(s.train.paths) & set(s.val["val"].paths)
    assert (
        torch.equal(s.train.groups, s.train.labels * 4 + s.train.metadata["domain"])
        and dm.num_groups == 20
    )
    item = s.test["SUN09"][7]
    assert red_class(item["image"]) == item["label"]
    by_index = VLCS(root=str(tmp_path), test_domain=0, resolution=8)
    assert by_index.test_set_names[0] == "Caltech101"
    with pytest.raises(DataNotFoundError, match=r"VLCS.Caltech101(.|\n)*DomainBed"):
        VLCS(root=str(tmp_path / "nowhere")).setup()


def test_vipriors_folders_and_predict(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    write_image_folder(tmp_path / "imagenet_50" / "train", wnids, 4, size=(12, 16), tag=1)
    write_image_folder(tmp_path / "imagenet_50" / "val", wnids, 2, size=(16, 12), tag=2)
    write_image_folder(tmp_path / "imagenet_50" / "test", ["imgs"], 5, tag=3)
    dm = VIPriors(root=str(tmp_path), resolution=8, batch_size=4)
    assert dm.num_classes == 3  # counted from the class folders at construction
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (12, 6, 6)
    assert dm.class_names == wnids
    assert (
        s.test["test"][0]["image"].shape == (3, 8, 8)
        and red_class(s.train[5]["image"]) == s.train[5]["label"] == 1
    )
    carved = VIPriors(root=str(tmp_path), resolution=8, val_fraction=0.25)
    assert (len(carved.splits.train), len(carved.splits.val["val"])) == (9, 3)
    (predict,) = dm.predict_dataloader()
    batch = next(iter(predict))
    assert batch["image"].shape == (4, 3, 8, 8) and (batch["label"] == -1).all()
    with pytest.raises(
        DataNotFoundError, match=r"imagenet_50.train(.|\n)*vipriors-challenges-toolkit"
    ):
        VIPriors(root=str(tmp_path / "none"), num_classes=1000).setup()


def test_isic_george_labels(tmp_path):
    rows = [
        ("ISIC_0000000", "benign", 0, "train"),
        ("ISIC_0000001", "benign", 1, "train"),
        ("ISIC_0000002", "malignant", 0, "train"),
        ("ISIC_0000003", "indeterminate", 0, "train"),  # dropped
        ("ISIC_0000004", "benign", 1, "val"),
        ("ISIC_0000005", "malignant", 0, "test"),
        ("ISIC_0000006.jpg", "benign", 0, "test"),
        ("ISIC_0000007", "benign", 1, "train_clean"),  # other folds are ignored
    ]
    write_isic(tmp_path, rows)
    dm = ISIC(root=str(tmp_path), resolution=8)
    s = dm.splits
    assert (len(s.train), len(s.val["val"]), len(s.test["test"])) == (3, 1, 2)
    assert s.train.labels.tolist() == [0, 0, 1]
    assert s.train.metadata["attribute"].tolist() == [0, 1, 0]
    assert s.train.groups.tolist() == [0, 1, 2]
    assert s.train.metadata["fine_label"].tolist() == [0, 1, 2]  # GEORGE's patch ontology
    assert s.test["test"][1]["image"].shape == (3, 8, 8)
    with pytest.raises(DataNotFoundError, match=r"isic.labels\.csv(.|\n)*hidden-stratification"):
        ISIC(root=str(tmp_path / "none")).setup()


def test_chest_xray_hospital_correlation(tmp_path):
    nih = [1 if i % 5 == 0 else 0 for i in range(200)]  # 20% pneumonia
    chex = [
        "1.0" if i % 2 == 0 else ("0.0" if i % 4 == 1 else ("" if i % 8 == 3 else "-1.0"))
        for i in range(240)
    ]
    write_chest_xray(tmp_path, nih, chex, lateral_every=12)
    dm = ChestXray(root=str(tmp_path), resolution=8, split_fractions=(0.6, 0.2, 0.2), channels=1)
    s = dm.splits
    train = s.train
    hospital = train.metadata["attribute"]
    assert torch.equal(train.metadata["domain"], hospital) and torch.equal(
        train.groups, train.labels * 2 + hospital
    )
    nih_pos = train.labels[hospital == 0].float().mean().item()
    chex_pos = train.labels[hospital == 1].float().mean().item()
    assert abs(nih_pos - 0.1) < 0.02 and abs(chex_pos - 0.9) < 0.02
    assert int((hospital == 0).sum()) == int((hospital == 1).sum())  # equal_hospitals
    test = s.test["test"]
    for h in (0, 1):
        assert abs(test.labels[test.metadata["attribute"] == h].float().mean().item() - 0.5) < 0.06
    assert all("frontal" in p for p in train.paths if "CheXpert" in p)

    # no patient crosses splits
    def patients(ds):
        return {p.split("/")[-3] if "CheXpert" in p else p.rsplit("/", 1)[-1] for p in ds.paths}

    assert not patients(train) & patients(test) and not patients(train) & patients(s.val["val"])
    assert train[0]["image"].shape == (1, 8, 8)
    capped = ChestXray(
        root=str(tmp_path), resolution=8, split_fractions=(0.6, 0.2, 0.2), max_per_hospital=10
    )
    assert len(capped.splits.train) == 20
    with pytest.raises(DataNotFoundError, match=r"Data_Entry_2017\.csv(.|\n)*nihcc"):
        ChestXray(root=str(tmp_path / "none")).setup()
    nih_only = tmp_path / "nih_only"
    nih_only.mkdir()
    (tmp_path / "nih").rename(nih_only / "nih")
    with pytest.raises(
        DataNotFoundError, match=r"CheXpert-v1\.0-small.train\.csv(.|\n)*stanfordmlgroup"
    ):
        ChestXray(root=str(nih_only)).setup()
