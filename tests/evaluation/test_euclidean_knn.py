"""The Euclidean kNN search: the block-pruned selection against a plain sort, and against
scikit-learn's brute-force classifier."""

from __future__ import annotations

import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from robustrep.evaluation.knn import euclidean_knn_votes, knn_indices, smallest_k


@pytest.mark.parametrize("n", [50, 4000, 4003, 20011])  # no blocks, blocks, a padded last block
@pytest.mark.parametrize("k", [1, 7, 40])
def test_smallest_k_finds_the_k_smallest_entries_of_each_row(n, k):
    g = torch.Generator().manual_seed(n + k)
    d = torch.randn(9, n, generator=g)
    d[0, : n // 2] = 0.5  # many exact ties
    values, indices = smallest_k(d, k)
    expected = d.sort(1).values[:, :k]
    torch.testing.assert_close(values.sort(1).values, expected, rtol=0, atol=0)
    torch.testing.assert_close(d.gather(1, indices), values, rtol=0, atol=0)
    assert all(len(set(row.tolist())) == k for row in indices)  # k distinct columns


def test_knn_votes_agree_with_scikit_learn_brute_force_and_the_bank_chunked_path():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(6000, 5, generator=g), torch.randn(300, 5, generator=g)
    labels = torch.randint(3, (6000,), generator=g)
    k = 77
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(bank.numpy(), labels.numpy())
    expected = torch.as_tensor(clf.predict_proba(queries.numpy()), dtype=torch.float32)
    torch.testing.assert_close(euclidean_knn_votes(bank, labels, queries, k, 3), expected)
    # blocks smaller than one query row: the bank is chunked and the running top-k merged
    small = knn_indices(bank, queries, k, max_elements=1000)
    assert [set(r.tolist()) for r in small] == [
        set(r.tolist()) for r in knn_indices(bank, queries, k)
    ]
