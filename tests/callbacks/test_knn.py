"""kNN monitor: weighted votes against a naive loop, chunking invariance, logging in fit/test."""

import pytest
import torch
import torch.nn.functional as F
from conftest import quick_trainer, tiny_synthetic

from robustrep.callbacks import KNNMonitor
from robustrep.errors import ConfigError
from robustrep.evaluation.knn import cosine_knn_scores as knn_predict
from robustrep.methods import ERM


def _naive_knn(bank, labels, queries, k, temperature, num_classes):
    bank, queries = F.normalize(bank, dim=1), F.normalize(queries, dim=1)
    out = torch.zeros(len(queries), num_classes)
    for i, q in enumerate(queries):
        sims = bank @ q
        top = sims.argsort(descending=True)[:k]
        for j in top:
            out[i, labels[j]] += torch.exp(sims[j] / temperature)
    return out


def test_weighted_votes_match_a_naive_loop_and_chunking_changes_nothing():
    torch.manual_seed(0)
    bank, labels, queries = torch.randn(50, 6), torch.randint(0, 4, (50,)), torch.randn(17, 6)
    ref = _naive_knn(bank, labels, queries, 7, 0.3, 4)
    assert torch.allclose(
        knn_predict(bank, labels, queries, k=7, temperature=0.3, num_classes=4), ref, atol=1e-5
    )
    # one query per block
    chunked = knn_predict(
        bank, labels, queries, k=7, temperature=0.3, num_classes=4, max_block_elements=60
    )
    assert torch.allclose(chunked, ref, atol=1e-5)


def test_k_larger_than_bank_and_unlabelled_bank_rows():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    labels = torch.tensor([0, 1, -1])  # the unlabelled row never votes
    scores = knn_predict(bank, labels, torch.tensor([[1.0, 0.05]]), k=200, temperature=0.5)
    assert scores.shape == (1, 2) and scores.argmax(1).item() == 0
    assert scores[0, 0] == pytest.approx(
        torch.exp(F.cosine_similarity(torch.tensor([1.0, 0.05]), bank[0], dim=0) / 0.5).item(),
        rel=1e-5,
    )


def test_monitor_logs_val_and_test_accuracy(tmp_path):
    dm = tiny_synthetic()
    torch.manual_seed(0)
    model = ERM(
        backbone="tiny",
        image_shape=dm.image_shape,
        num_classes=dm.num_classes,
        num_groups=dm.num_groups,
    )
    knn = KNNMonitor(k=5, every_n_epochs=1)
    trainer = quick_trainer(tmp_path, max_epochs=2, callbacks=[knn])
    trainer.fit(model, dm)
    assert 0.0 <= knn.last["val/knn/acc"] <= 1.0
    metrics = trainer.test(model, dm, verbose=False)[0]
    assert 0.0 <= metrics["knn/acc"] <= 1.0
    # the logged value is the kNN accuracy of the model's embed features on the test set
    dm.setup()
    from robustrep.evaluation import extract_features

    train = extract_features(model, dm.train_eval_dataloader(shard=False))
    test = extract_features(model, dm.test_dataloader()[0])
    preds = knn_predict(
        train["features"], train["label"], test["features"], k=5, temperature=0.5
    ).argmax(1)
    assert metrics["knn/acc"] == pytest.approx((preds == test["label"]).float().mean().item())


def test_bad_arguments():
    with pytest.raises(ConfigError):
        KNNMonitor(k=0)
    with pytest.raises(ConfigError):
        KNNMonitor(temperature=0)
