"""Partition alignment: NMI and best-match accuracy against a naive computation and known cases,
and the callback on a real IP-IRM fit."""

from __future__ import annotations

import math
from collections import Counter
from itertools import permutations

import pytest
import torch
from conftest import quick_trainer, tiny_synthetic

from robustrep.callbacks import PartitionAlignment
from robustrep.errors import ConfigError
from robustrep.evaluation.partitions import partition_alignment
from robustrep.methods import ERM
from robustrep.methods.ipirm import IPIRM


def naive_nmi(a: list[int], b: list[int]) -> float:
    """Mutual information over the arithmetic mean of the entropies, from counts."""
    n = len(a)
    pa, pb, pab = Counter(a), Counter(b), Counter(zip(a, b, strict=True))
    mi = sum(c / n * math.log(c * n / (pa[x] * pb[y])) for (x, y), c in pab.items())
    ha = -sum(c / n * math.log(c / n) for c in pa.values())
    hb = -sum(c / n * math.log(c / n) for c in pb.values())
    return mi / ((ha + hb) / 2) if ha + hb > 0 else 1.0


def naive_match(a: list[int], b: list[int]) -> float:
    """Best one-to-one renaming of subsets to attribute values, by trying every one."""
    subsets, values = sorted(set(a)), sorted(set(b))
    best = 0
    if len(subsets) <= len(values):
        for chosen in permutations(values, len(subsets)):
            rename = dict(zip(subsets, chosen, strict=True))
            best = max(best, sum(rename[x] == y for x, y in zip(a, b, strict=True)))
    else:
        for chosen in permutations(subsets, len(values)):
            rename = dict(zip(chosen, values, strict=True))
            best = max(best, sum(rename.get(x) == y for x, y in zip(a, b, strict=True)))
    return best / len(a)


@pytest.mark.parametrize("seed", range(6))
def test_alignment_equals_a_naive_computation(seed):
    g = torch.Generator().manual_seed(seed)
    n = 60
    attribute = torch.randint(3, (n,), generator=g)
    # a partition that follows the attribute with noise, some examples outside the bank
    assignment = torch.where(torch.rand(n, generator=g) < 0.7, attribute % 2, 1 - attribute % 2)
    assignment[:5] = -1
    got = partition_alignment(assignment, attribute)
    a, b = assignment[5:].tolist(), attribute[5:].tolist()
    assert got["nmi"] == pytest.approx(naive_nmi(a, b), abs=1e-9)
    assert got["match"] == pytest.approx(naive_match(a, b), abs=1e-12)


def test_identical_partition_up_to_renaming_scores_one_and_an_independent_one_near_zero():
    colour = torch.arange(400) % 2
    assert partition_alignment(1 - colour, colour) == {"nmi": 1.0, "match": 1.0}
    independent = (torch.arange(400) // 2) % 2  # balanced and independent of colour
    scores = partition_alignment(independent, colour)
    assert scores["nmi"] == pytest.approx(0.0, abs=1e-12) and scores["match"] == 0.5


def test_callback_scores_every_partition_of_a_real_ipirm_fit_against_the_planted_attribute(
    tmp_path, capsys
):
    dm = tiny_synthetic(num_views=2, augment="contrastive")
    model = IPIRM(
        backbone="tiny",
        projection_hidden=16,
        projection_dim=8,
        maximise_epochs=2,
        maximise_batch_size=32,
        image_shape=dm.image_shape,
        num_classes=dm.num_classes,
        partition_every=1,
    )
    callback = PartitionAlignment()
    quick_trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(model, dm)
    assert len(callback.scores) == len(model.partition_epochs) == 2
    train = dm.train_dataset()
    for k, scores in enumerate(callback.scores):
        expected = partition_alignment(model.partitions[k], train.metadata["attribute"])
        assert scores[f"partition/{k + 1}/nmi_attribute"] == pytest.approx(expected["nmi"])
        assert scores[f"partition/{k + 1}/match_attribute"] == pytest.approx(expected["match"])
        assert {f"partition/{k + 1}/nmi_label", f"partition/{k + 1}/match_group"} <= set(scores)
    assert "IP-IRM partition 2 (epoch 1) vs the training set: label NMI" in capsys.readouterr().out
    # repeated with the test metrics (so results.json and the reports have them)
    metrics = quick_trainer(tmp_path, callbacks=[callback]).test(model, dm, verbose=False)[0]
    for scores in callback.scores:
        for name, value in scores.items():
            assert metrics[name] == pytest.approx(value)


def test_callback_names_what_is_missing(tmp_path):
    dm = tiny_synthetic()
    model = ERM(backbone="tiny", image_shape=dm.image_shape, num_classes=dm.num_classes)
    with pytest.raises(ConfigError, match="(?s)PartitionModel.*lacks partitions, partition_epochs"):
        quick_trainer(tmp_path, callbacks=[PartitionAlignment()]).fit(model, dm)
    views = tiny_synthetic(num_views=2, augment="contrastive")
    ipirm = IPIRM(backbone="tiny", image_shape=views.image_shape, num_classes=views.num_classes)
    with pytest.raises(ConfigError, match="no attribute \\['colour'\\].*attribute"):
        quick_trainer(tmp_path, callbacks=[PartitionAlignment(["colour"])]).fit(ipirm, views)
