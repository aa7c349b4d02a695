"""Every ``experiments/erm_<benchmark>.yaml`` runs end to end (fit with ``fast_dev_run``, then test)
through the CLI, with ``data.root`` pointed at one folder holding a tiny fixture of every
benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from datafixtures import (
    IN9_FOLDERS,
    balanced_labels,
    write_celeba,
    write_chest_xray,
    write_cifar10,
    write_cifar100,
    write_image_folder,
    write_isic,
    write_mnist_raw,
    write_stl10,
    write_waterbirds,
)

from robustrep.data import BENCHMARKS
from robustrep.data.vlcs import VLCS_CLASSES, VLCS_DOMAINS

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
ERM_CONFIGS = sorted(EXPERIMENTS.glob("erm_*.yaml"))
#: One config per loader code path runs in the fast tier (each CLI run costs ~1 s of argument
#: parsing); the rest run in the slow tier. tests/test_configs.py instantiates every config in the
#: fast tier.
FAST = {
    "erm_colored_mnist_cim",
    "erm_mf_dominoes",
    "erm_cifar100_coarse_u",
    "erm_stl10",
    "erm_celeba",
    "erm_waterbirds",
    "erm_vlcs",
    "erm_chest_xray",
}
PARAMS = [
    pytest.param(p, id=p.stem, marks=() if p.stem in FAST else pytest.mark.slow)
    for p in ERM_CONFIGS
]


@pytest.fixture(scope="module")
def every_benchmark(tmp_path_factory) -> Path:
    """One root with a tiny copy of every benchmark's real on-disk layout."""
    root = tmp_path_factory.mktemp("benchmarks")
    write_mnist_raw(root, "MNIST", balanced_labels(60), balanced_labels(20))
    write_mnist_raw(root, "FashionMNIST", balanced_labels(60), balanced_labels(20), seed=1)
    write_cifar10(root, per_batch=4)
    write_cifar100(root, list(range(100)) * 2, list(range(100)))
    write_stl10(root, n_train=10, n_test=10)
    write_celeba(root, n=12)
    write_waterbirds(root, {0: [2, 1, 1, 2], 1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})
    write_image_folder(root / "original" / "train", IN9_FOLDERS, 1, tag=1)
    for k, variant in enumerate(["original", "mixed_same", "mixed_rand", "only_fg", "no_fg"]):
        write_image_folder(root / "bg_challenge" / variant / "val", IN9_FOLDERS, 1, tag=10 + k)
    for k, domain in enumerate(VLCS_DOMAINS):
        write_image_folder(root / "VLCS" / domain, VLCS_CLASSES, 2, ext=".jpg", tag=20 + k)
    write_isic(
        root,
        [
            (
                f"ISIC_{i:07d}",
                "malignant" if i % 3 == 0 else "benign",
                i % 2,
                ["train", "val", "test"][i % 3],
            )
            for i in range(12)
        ],
    )
    write_chest_xray(
        root, [int(i % 4 == 0) for i in range(40)], ["1.0" if i % 4 else "0.0" for i in range(40)]
    )
    write_image_folder(root / "imagenet_50" / "train", ["n01", "n02"], 2, tag=30)
    write_image_folder(root / "imagenet_50" / "val", ["n01", "n02"], 1, tag=31)
    return root


def test_every_benchmark_has_an_erm_config():
    shipped = {p.stem.removeprefix("erm_") for p in ERM_CONFIGS}
    assert set(BENCHMARKS) - {"synthetic"} <= shipped


@pytest.mark.parametrize("config", PARAMS)
def test_erm_config_runs_on_fixture(config, every_benchmark, tmp_path):
    args = ["fit", "--config", str(config), "--data.init_args.root", str(every_benchmark)]
    args += ["--data.init_args.num_workers", "0", "--data.init_args.batch_size", "4"]
    # the configured nets are too slow for a test
    args += ["--model.init_args.backbone", "tiny", "--model.init_args.backbone_kwargs", "{}"]
    if "vipriors" in config.stem:
        args += ["--data.init_args.num_classes", "2"]
    if "resolution: 224" in config.read_text() or "resolution: 64" in config.read_text():
        args += ["--data.init_args.resolution", "16"]
    args += [
        "--trainer.fast_dev_run",
        "1",
        "--trainer.logger",
        "false",
        "--output_root",
        str(tmp_path),
    ]
    assert run_cli(args) == 0
    (results,) = list(tmp_path.rglob("results.json"))
    metrics = json.loads(results.read_text())["metrics"]
    assert np.isfinite(metrics["test/acc"])


@pytest.mark.parametrize("name", sorted(set(BENCHMARKS) - {"synthetic"}))
def test_data_check_every_benchmark(name, every_benchmark, capsys):
    assert run_cli(["data", "check", "--data", name, "--root", str(every_benchmark)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{name} at ") and any(line.startswith("total") for line in lines)
    dm = BENCHMARKS[name][0](root=str(every_benchmark))
    header = next(line for line in lines if line.split() and line.split()[0] == "train").split()
    assert header[: 1 + len(dm.val_set_names)] == ["train", *dm.val_set_names]
