"""Downstream analyses: geometric noise score, strata F1 and clustering, bucket pruning, the analyze
command.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from robustrep.analysis.commands import analyze_command
from robustrep.analysis.common import load_config
from robustrep.analysis.coreset import bucket_prune, correctness_counts, random_subset
from robustrep.analysis.noisy_labels import detect_and_relabel, geometric_scores, run_noisy_labels
from robustrep.analysis.strata import (
    cluster_within_classes,
    reduce_dimensions,
    strata_f1,
    train_linear_head,
)
from robustrep.errors import ConfigError
from robustrep.evaluation.labels import labelled_subset


def blobs(per: int = 30, seed: int = 0):
    """Three classes on three orthogonal directions, tight clusters."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(per)
    z = torch.eye(3, 8)[labels] + 0.05 * torch.randn(3 * per, 8, generator=g)
    return z, labels


def test_geometric_score_flags_the_planted_points():
    z, labels = blobs()
    noisy = labels.clone()
    planted = torch.tensor([3, 40, 77])
    # wrong labels: these points sit in another class's cluster
    noisy[planted] = (labels[planted] + 1) % 3
    score, nearest = geometric_scores(z, noisy, 3)
    assert set(score.argsort()[:3].tolist()) == set(planted.tolist())
    assert torch.equal(nearest[planted], labels[planted])  # nearest centre = their true class
    flagged, corrected, _ = detect_and_relabel(z, noisy, 3 / 90, 3, batch_size=1000)
    assert flagged.nonzero().flatten().tolist() == planted.tolist() and torch.equal(
        corrected, labels
    )


def test_geometric_score_closed_form():
    """Two points per class in 2-D: the score is cos to the class mate minus the mean cos to the
    others.
    """
    z = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1])
    score, _ = geometric_scores(z, y, 2)
    assert score[0].item() == pytest.approx(0.6 - (0.0 + -1.0) / 2)
    assert score[2].item() == pytest.approx(0.0 - (0.0 + 0.8) / 2)


def test_noisy_label_pipeline_improves_labels():
    z, labels = blobs(per=60)
    test_z, test_y = blobs(per=20, seed=1)
    train = {"features": z, "label": labels, "index": torch.arange(len(labels))}
    result = run_noisy_labels(
        train, {"features": test_z, "label": test_y}, 3, 0.2, None, batch_size=90, seed=0
    )
    assert result.label_acc_noisy == pytest.approx(0.8, abs=0.01)
    assert result.precision > 0.9 and result.recall > 0.9 and result.label_acc_corrected > 0.97
    assert result.protocol == "full-labels" and result.ce_labelled is None


def test_noisy_label_paper_protocol_reads_the_labelled_fraction():
    """The paper's protocol: a head on the clean labels of the labelled 20% only (exactly
    round(0.2 n) examples, given by dataset index), beside the three full-set heads."""
    z, labels = blobs(per=30)
    test_z, test_y = blobs(per=20, seed=1)
    index = torch.arange(len(labels)) + 5  # dataset indices need not be positions
    labelled = torch.zeros(len(labels) + 5, dtype=torch.bool)
    labelled[index[labelled_subset(len(labels), 0.2, seed=2)]] = True
    train = {"features": z, "label": labels, "index": index}
    result = run_noisy_labels(
        train, {"features": test_z, "label": test_y}, 3, 0.2, None, 90, 0, labelled=labelled
    )
    assert result.protocol == "paper" and result.ce_labelled == round(0.2 * 90) == 18
    assert result.test_acc["clean labelled fraction only"] > 0.95
    assert "18 of 90" in result.table()


def test_strata_f1_and_clustering():
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    assert strata_f1(torch.tensor([5, 5, 5, 6, 6, 7, 7, 7]), groups) == {0: 1.0, 1: 1.0, 2: 1.0}
    f1 = strata_f1(torch.tensor([5, 5, 6, 6, 6, 7, 7, 7]), groups)
    assert f1[0] == pytest.approx(2 * 2 / (3 + 2)) and f1[1] == pytest.approx(2 * 2 / (2 + 3))
    # two classes, each with two well-separated strata
    g = torch.Generator().manual_seed(0)
    fine = torch.arange(4).repeat_interleave(25)
    x = 3 * torch.eye(4, 6)[fine] + 0.1 * torch.randn(100, 6, generator=g)
    pseudo, info = cluster_within_classes(x, fine // 2, reducer="pca")
    assert info["clusters"] == {0: 2, 1: 2} and set(strata_f1(pseudo, fine).values()) == {1.0}


def test_umap_is_optional():
    x = torch.randn(20, 5).numpy()
    with pytest.warns(UserWarning, match="umap-learn is not installed"):
        _, used = reduce_dimensions(x, 2, "auto")
    assert used == "pca"
    with pytest.raises(ConfigError, match="umap-learn"):
        reduce_dimensions(x, 2, "umap")


def test_group_dro_head_raises_the_worst_group():
    """Minority group (5%) whose label disagrees with a strong spurious feature: Group DRO on the
    true groups must beat ERM on the worst group."""
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randint(2, (n,), generator=g)
    minority = torch.rand(n, generator=g) < 0.05
    spurious = torch.where(minority, 1 - y, y).float()
    x = torch.stack(
        [
            spurious * 2 - 1 + 0.1 * torch.randn(n, generator=g),
            (y * 2 - 1) * 0.3 + 0.3 * torch.randn(n, generator=g),
        ],
        1,
    )
    groups = y * 2 + minority.long()
    erm = train_linear_head(x, y, None, 2, weight_decay=0.0)(x)
    dro = train_linear_head(x, y, groups, 2, step_size=0.1, weight_decay=0.0)(x)
    worst = lambda p: min((p[groups == k] == y[groups == k]).float().mean() for k in range(4))  # noqa: E731
    assert worst(dro) > worst(erm) + 0.2


def test_bucket_prune_removes_from_the_largest_bucket():
    labels = torch.zeros(10, dtype=torch.long)
    # buckets: 3 -> 6 points, 2 -> 2, 0 -> 1, 1 -> 1
    counts = torch.tensor([3, 3, 3, 3, 3, 3, 2, 2, 0, 1])
    keep = bucket_prune(counts, labels, 0.5)
    kept = counts[keep]
    # sizes 6,2,1,1 -> remove from the largest: 2,2,1,1 after four removals; the tie goes to the
    # easier bucket -> 1,2,1,1
    assert (
        len(keep) == 5
        and (kept == 3).sum() == 1
        and (kept == 2).sum() == 2
        and (kept == 0).sum() == 1
    )
    two_classes = torch.tensor([0] * 10 + [1] * 20)
    keep = bucket_prune(torch.randint(4, (30,)), two_classes, 0.3)
    assert torch.bincount(two_classes[keep]).tolist() == [3, 6]
    assert torch.bincount(two_classes[random_subset(30, 0.3, two_classes)]).tolist() == [3, 6]


def fit_tiny(out, *extra: str):
    args = [
        "fit",
        "--config",
        "experiments/spread_synthetic_strata.yaml",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
    ]
    args += [
        "--output_root",
        str(out),
        "--model.init_args.contrastive_label_noise",
        "0.25",
        "--data.init_args.batch_size",
        "32",
        *extra,
    ]
    args += [
        x
        for k, v in {"train_size": 96, "val_size": 32, "test_size": 64, "num_attributes": 2}.items()
        for x in (f"--data.init_args.{k}", str(v))
    ]
    # the experiment config runs end to end through the CLI (fit + test + probes)
    assert run_cli(args) == 0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    fit_tiny(out)
    metrics = json.loads(next(out.rglob("results.json")).read_text())["metrics"]
    assert {"probe/acc", "c2f/acc", "test/worst_group_acc"} <= set(metrics)
    return next(out.rglob("last.ckpt"))


def test_analyze_strata_and_noisy_labels_commands(trained_run, tmp_path, capsys):
    out = tmp_path / "strata.json"
    assert (
        analyze_command(
            [
                "strata",
                "--ckpt",
                str(trained_run),
                "--clusters-per-class",
                "2",
                "--steps",
                "50",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert (
        result["reducer"] == "pca"
        and len(result["f1"]) == 4
        and set(result["worst_group_acc"]) >= {"ERM", "Group DRO (pseudo-groups)"}
    )
    assert "umap-learn is not installed" in capsys.readouterr().out
    out = tmp_path / "noisy.json"
    # the default (paper) protocol refuses an encoder whose CE head saw every clean label
    with pytest.raises(ConfigError, match="ce_labelled_fraction 0.2"):
        analyze_command(["noisy-labels", "--ckpt", str(trained_run)])
    argv = ["noisy-labels", "--ckpt", str(trained_run), "--protocol", "full-labels"]
    assert analyze_command([*argv, "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (
        result["noise_rate"] == 0.25
        and "checkpoint" in result["noise_source"]
        and result["label_acc_noisy"] == pytest.approx(0.75)
        and result["protocol"] == "full-labels"
        and result["ce_labelled"] is None
        and "fully supervised" in result["notes"][0]
    )


def test_analyze_noisy_labels_paper_protocol(tmp_path):
    """Trained with the paper's protocol (CE head on 20% of the clean labels), the default
    analysis reports exactly round(0.2 * 96) labelled examples and the model's own head."""
    fit_tiny(tmp_path, "--model.init_args.ce_labelled_fraction", "0.2")
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = tmp_path / "noisy.json"
    assert analyze_command(["noisy-labels", "--ckpt", str(ckpt), "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["protocol"] == "paper" and result["ce_labelled"] == round(0.2 * 96) == 19
    assert result["train_size"] == 96 and result["notes"] == []
    assert {"clean labelled fraction only", "the model's CE head"} <= set(result["test_acc"])
    with pytest.raises(ConfigError, match="saw 20%"):
        analyze_command(["noisy-labels", "--ckpt", str(ckpt), "--labelled-fraction", "0.1"])


@pytest.mark.parametrize(
    ("protocol", "labelled"),
    [
        # paper: round(1% of 200) = 2 labelled examples in the 100-example subset
        ([], [2]),
        (["--protocol", "full-labels"], [100]),
        (["--labelled-fraction", "0.05"], [10]),
    ],
)
def test_analyze_coreset_command(tmp_path, protocol, labelled):
    args = [
        "coreset",
        "--config",
        "experiments/spread_synthetic_strata.yaml",
        *protocol,
        "--set",
        "train_size=200",
        "test_size=32",
        "batch_size=32",
    ]
    args += [
        "--fractions",
        "0.5",
        "--repeats",
        "1",
        "--max-epochs",
        "1",
        "--target",
        "0.1",
        "--output",
        str(tmp_path / "c.json"),
    ]
    assert analyze_command(args) == 0
    result = json.loads((tmp_path / "c.json").read_text())
    assert (
        result["size"] == 20
        and result["runs"] == 1
        and set(result["test_acc"]) == {"coreset (bucket pruning)", "random subset, same size"}
    )
    # read from the trained model's record of what its CE head saw
    assert result["labelled_per_run"] == labelled
    assert result["protocol"] == ("full-labels" if "full-labels" in protocol else "paper")


def test_correctness_counts_do_not_depend_on_the_global_random_state():
    """Each partial-training run draws its initial weights from its own seed: the counts are the
    same whatever the process drew before (they differed between processes before)."""
    config = load_config("experiments/spread_synthetic_strata.yaml")
    data = {"train_size": 48, "test_size": 16, "batch_size": 16, "size": 8}
    runs = []
    for state in (1, 2):
        torch.manual_seed(state)
        runs.append(correctness_counts(config, [0.5], 1, 1, data, labelled_fraction=0.1)[0])
    assert torch.equal(runs[0], runs[1])


def test_analyze_errors(tmp_path):
    with pytest.raises(ConfigError, match="config.yaml"):
        analyze_command(["strata", "--ckpt", str(tmp_path / "missing.ckpt")])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        analyze_command(
            ["coreset", "--config", "experiments/spread_synthetic_strata.yaml", "--set", "oops"]
        )
