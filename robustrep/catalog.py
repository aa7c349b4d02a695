"""``robustrep methods``: every method, its paper, and the shipped configs that run it (with their
benchmarks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]

#: method class -> (what it is, the paper or baseline it implements, its reproduction record)
METHODS: dict[str, tuple[str, str, str]] = {
    "CIM": (
        "contrastive input morphing: a learned input mask + triplet loss (+ VIB); also "
        "VIB, SCL-E2E, ERM as variants",
        "Contrastive Input Morphing (papers/cim.txt; METHODS.md section 1)",
        "docs/reproductions/cim.md",
    ),
    "ChromaVAE": (
        "VAE classifier on z1, then a classifier on the shortcut-free z2 (stage 2)",
        "Chroma-VAE, Yang, Kirichenko, Goldblum, Wilson, NeurIPS 2022 "
        "(papers/chroma_vae.md; METHODS.md section 2)",
        "docs/reproductions/chroma_vae.md",
    ),
    "NaiveVAEClass": (
        "Chroma-VAE baseline: a VAE classifier on all of mu",
        "Chroma-VAE paper, Table 2",
        "docs/reproductions/chroma_vae.md",
    ),
    "NaiveIndependent": (
        "Chroma-VAE baseline: unsupervised VAE, then a classifier on mu",
        "Chroma-VAE paper, Table 2",
        "docs/reproductions/chroma_vae.md",
    ),
    "CRLTAC": (
        "contrastive learning with a trainable augmentation (crop) "
        "policy; SimCLR with policy: uniform",
        "Contrastive representation learning with trainable augmentation channel "
        "(papers/crltac.txt; METHODS.md section 3)",
        "docs/reproductions/crltac.md",
    ),
    "SpreadSupCon": (
        "L_spread = alpha L_attract + (1 - alpha) L_repel; also SupCon, SimCLR, attract-only",
        "The Details Matter: Preventing Class Collapse in Supervised Contrastive Learning "
        "(papers/spread_supcon.txt; METHODS.md section 4)",
        "docs/reproductions/spread_supcon.md",
    ),
    "IPIRM": (
        "SimCLR / SimSiam invariant across iteratively found partitions; "
        "invariance: false = the base",
        "Wang, Yue, Huang, Sun, Zhang, Self-Supervised Learning Disentangled Group Representation "
        "as Feature, NeurIPS 2021 (papers/ipirm.txt; METHODS.md section 5)",
        "docs/reproductions/ipirm.md",
    ),
    "Distill": (
        "IP-IRM stage II: a student distilled from a frozen teacher",
        "the VIPriors report on IP-IRM (papers/ipirm.txt)",
        "docs/reproductions/ipirm.md",
    ),
    "ERM": (
        "empirical risk minimisation: backbone + linear head, cross-entropy",
        "baseline",
        "docs/reproductions/baselines.md",
    ),
    "GroupDRO": (
        "worst-group loss with group labels",
        "Sagawa et al., Distributionally Robust Neural Networks, ICLR 2020",
        "docs/reproductions/baselines.md",
    ),
    "JTT": (
        "Just Train Twice: upweight the examples a short ERM run gets wrong",
        "Liu et al., Just Train Twice, ICML 2021",
        "docs/reproductions/baselines.md",
    ),
}


def shipped_configs(root: Path = REPO_ROOT / "experiments") -> dict[str, list[tuple[str, str]]]:
    """method class -> [(config stem, datamodule class)] for every YAML in ``experiments/``."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(root.glob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        model = str((config.get("model") or {}).get("class_path", "")).rsplit(".", 1)[-1]
        data = str((config.get("data") or {}).get("class_path", "")).rsplit(".", 1)[-1]
        if model:
            found.setdefault(model, []).append((path.stem, data))
    return found


def methods_text(verbose: bool = False) -> str:
    """The text of ``robustrep methods``."""
    from robustrep.data import BENCHMARKS

    benchmark_of = {cls.__name__: name for name, (cls, _, _) in BENCHMARKS.items()}
    configs = shipped_configs()
    lines = []
    for cls, (what, paper, record) in METHODS.items():
        runs = configs.get(cls, [])
        benches = sorted({benchmark_of.get(d, d) for _, d in runs})
        lines += [f"{cls}: {what}", f"    paper:      {paper}", f"    record:     {record}"]
        lines.append(f"    benchmarks: {', '.join(benches) or '-'}")
        shown = runs if verbose else runs[:6]
        more = f" (+{len(runs) - len(shown)} more; --verbose)" if len(runs) > len(shown) else ""
        lines.append(
            "    configs:    "
            f"{', '.join(f'experiments/{stem}.yaml' for stem, _ in shown) or '-'}{more}"
        )
    lines.append(
        "\nRun one: robustrep fit --config experiments/<config>.yaml; its arguments: robustrep "
        "fit --model <Class> --model.help <Class>"
    )
    return "\n".join(lines)


def methods_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="robustrep methods",
        description="Every method, its paper, its configs and their benchmarks.",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="list every config (default: the first six per method)",
    )
    args = parser.parse_args(argv)
    print(methods_text(args.verbose))
    return 0
