"""The training loader: order, augmentations and position are functions of (seed, epoch, index)."""

from __future__ import annotations

import torch

from robustrep.data.datasets import TensorImageDataset
from robustrep.data.sampling import EpochSampler, ResumableLoader, SeededExamples
from robustrep.data.transforms import build_transform


def augmented(n: int = 40) -> TensorImageDataset:
    images = torch.randint(
        0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return TensorImageDataset(
        images,
        torch.arange(n) % 2,
        num_views=2,
        transform=build_transform("contrastive", (3, 8, 8)),
    )


def test_order_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    b.set_epoch(1)
    first = [i for i, _ in a]
    torch.rand(100)  # the global generator does not matter
    assert [i for i, _ in a] == first and sorted(first) == list(range(50))
    assert [i for i, _ in b] != first
    assert [i for i, _ in EpochSampler(50, seed=4)] != first
    assert [i for i, _ in EpochSampler(5, seed=3, shuffle=False)] == [0, 1, 2, 3, 4]


def test_ranks_share_one_permutation_padded_like_distributed_sampler():
    ranks = [EpochSampler(11, seed=0, num_replicas=3, rank=r) for r in range(3)]
    orders = [[i for i, _ in s] for s in ranks]
    assert all(len(o) == len(s) == 4 for o, s in zip(orders, ranks, strict=True))
    full = EpochSampler(11, seed=0).order(0).tolist()
    interleaved = [orders[r][k] for k in range(4) for r in range(3)]
    assert interleaved == (full + full[:1])  # 12 slots: the permutation, then wrapped
    seeds = {idx: seed for s in ranks for idx, seed in s}
    # an example's augmentation seed does not depend on its rank
    assert seeds == dict(EpochSampler(11, seed=0))


def test_seeded_examples_repeat_their_augmentation_and_leave_the_global_generator_alone():
    ds = SeededExamples(augmented())
    state = torch.random.get_rng_state()
    one, again, other = ds[(5, 123)], ds[(5, 123)], ds[(5, 124)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(one["views"], again["views"], strict=True))
    assert not torch.equal(one["views"][0], other["views"][0])
    assert not torch.equal(one["views"][0], one["views"][1])  # two views of one example differ


def test_batches_do_not_depend_on_the_number_of_workers():
    ds = augmented()
    single = list(ResumableLoader(ds, batch_size=8, seed=1))
    workers = list(ResumableLoader(ds, batch_size=8, seed=1, num_workers=2))
    assert len(single) == len(workers) == 5
    for a, b in zip(single, workers, strict=True):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["views"][1], b["views"][1])


def test_loader_state_resumes_at_the_next_batch_and_starts_a_new_epoch_afresh():
    ds = augmented()
    loader = ResumableLoader(ds, batch_size=8, seed=2)
    loader.sampler.set_epoch(3)
    full = list(loader)
    it = iter(loader)
    seen = [next(it), next(it)]
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 2}
    resumed = ResumableLoader(ds, batch_size=8, seed=2)
    resumed.load_state_dict(state)
    rest = list(resumed)  # the epoch is the saved one: skip what was trained on
    assert [b["index"].tolist() for b in seen + rest] == [b["index"].tolist() for b in full]
    assert all(
        torch.equal(a["views"][0], b["views"][0]) for a, b in zip(rest, full[2:], strict=True)
    )
    resumed.load_state_dict({"epoch": 3, "batches": 5})
    resumed.sampler.set_epoch(4)  # what Lightning does when the saved epoch had ended
    nxt = list(resumed)
    fresh = ResumableLoader(ds, batch_size=8, seed=2)
    fresh.sampler.set_epoch(4)
    assert [b["index"].tolist() for b in nxt] == [b["index"].tolist() for b in fresh]


def test_untransformed_tensor_batches_are_collated_in_one_go_exactly_as_item_by_item():
    n = 30
    gen = torch.Generator().manual_seed(1)
    plain = TensorImageDataset(
        torch.randint(0, 256, (n, 3, 5, 5), dtype=torch.uint8, generator=gen),
        torch.randint(0, 3, (n,), generator=gen),
        torch.randint(0, 4, (n,), generator=gen),
        place=torch.arange(n) % 5,
    )
    assert plain.batch([0, 1]) is not None
    # an identity transform forces the item-by-item path (default_collate)
    itemwise = plain.with_transform(lambda image: image)
    assert itemwise.batch([0, 1]) is None
    fast = list(ResumableLoader(plain, batch_size=7, seed=2))
    slow = list(ResumableLoader(itemwise, batch_size=7, seed=2))
    assert len(fast) == len(slow) == 5
    for a, b in zip(fast, slow, strict=True):
        assert type(a) is dict and list(a) == list(b)
        for key in a:
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
