import pytest
import torch

from robustrep.metrics import GroupAccuracy


def test_hand_made_predictions():
    # groups: 0 -> 2/2 right, 1 -> 1/2 right, 2 -> 0/1 right, 3 -> 3/3 right
    preds = torch.tensor([0, 0, 1, 0, 1, 1, 1, 1])
    target = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    m = GroupAccuracy(4, ["a", "b", "c", "d"], train_group_counts=torch.tensor([10, 1, 1, 8]))
    m.update(preds, target, groups)
    out = m.compute()
    assert out["acc"].item() == pytest.approx(6 / 8)
    assert out["worst_group_acc"].item() == pytest.approx(0.0)
    assert out["mean_group_acc"].item() == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert out["weighted_acc"].item() == pytest.approx((10 * 1 + 1 * 0.5 + 1 * 0 + 8 * 1) / 20)
    assert out["group_acc/b"].item() == pytest.approx(0.5)


def test_logits_and_accumulation_over_batches():
    m = GroupAccuracy(2)
    m.update(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0]), torch.tensor([0, 1]))
    m.update(torch.tensor([1, 1]), torch.tensor([1, 0]), torch.tensor([1, 1]))
    out = m.compute()
    assert out["acc"].item() == pytest.approx(2 / 4)
    assert out["group_acc/g0"].item() == 1.0
    assert out["group_acc/g1"].item() == pytest.approx(1 / 3)


def test_empty_groups_are_skipped():
    m = GroupAccuracy(4, train_group_counts=torch.tensor([5, 0, 0, 5]))
    m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), torch.tensor([0, 3, 3]))
    out = m.compute()
    assert out["worst_group_acc"].item() == 1.0  # groups 1 and 2 absent, not counted as 0
    assert "group_acc/g1" not in out and "group_acc/g2" not in out
    assert out["mean_group_acc"].item() == 1.0


def test_ungrouped_examples_count_for_acc_only():
    m = GroupAccuracy(2)
    m.update(torch.tensor([0, 1, 0]), torch.tensor([0, 0, 0]), torch.tensor([-1, -1, 0]))
    out = m.compute()
    assert out["acc"].item() == pytest.approx(2 / 3)
    assert out["worst_group_acc"].item() == 1.0


def test_no_train_counts_weighted_equals_acc():
    m = GroupAccuracy(2)
    m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1]))
    out = m.compute()
    assert out["weighted_acc"].item() == pytest.approx(out["acc"].item())


def test_group_out_of_range_raises():
    m = GroupAccuracy(2)
    with pytest.raises(ValueError, match="num_groups"):
        m.update(torch.tensor([0]), torch.tensor([0]), torch.tensor([5]))
