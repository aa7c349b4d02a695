r"""``robustrep analyze strata|noisy-labels|coreset|cim-mask|chroma-latents``: analyses of a
trained representation.

Examples::

    robustrep analyze strata --ckpt runs/spread_x/<run>/checkpoints/last.ckpt
    robustrep analyze noisy-labels --ckpt <ckpt>
    robustrep analyze noisy-labels --ckpt <ckpt> --protocol full-labels --noise-rate 0.2
    robustrep analyze coreset --config experiments/spread_synthetic_strata.yaml --target 0.3 \
        --max-epochs 3
    robustrep analyze cim-mask --ckpt runs/cim_colored_mnist/<run>/checkpoints/last.ckpt \
        --set digits_source=sklearn
    robustrep analyze chroma-latents --ckpt runs/chroma_colored_mnist/<run>/checkpoints/last.ckpt

``--config`` defaults to the ``config.yaml`` of the checkpoint's run directory; ``--set KEY=VALUE``
overrides datamodule arguments (e.g. ``--set digits_source=sklearn``). Results are printed and,
with ``--output FILE``, written as JSON.

``noisy-labels`` and ``coreset`` follow the L_spread paper's label protocols by default
(``--protocol paper``: the CE head trained on the clean labels of 20% of the training set in the
noisy-label study, on 1% in the coreset runs; App. E.3) and keep the first-shipped variants as
``--protocol full-labels`` (the head sees every label it is given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings
from pathlib import Path

from robustrep.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of this subcommand (also used to check documented command lines)."""
    parser = argparse.ArgumentParser(
        prog="robustrep analyze",
        description=(
            "Downstream applications of a trained representation (L_spread paper, section 5), "
            "CIM's mask statistics, Chroma-VAE's latents."
        ),
    )
    sub = parser.add_subparsers(dest="analysis", required=True)

    def common(p: argparse.ArgumentParser, ckpt_required: bool) -> None:
        p.add_argument("--ckpt", required=ckpt_required, help="checkpoint of the trained method")
        p.add_argument(
            "--config",
            help="the run's YAML (default: config.yaml of the checkpoint's run directory)",
        )
        p.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="KEY=VALUE",
            help="datamodule overrides, e.g. digits_source=sklearn batch_size=64",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--output", help="also write the result as JSON to this file")

    s = sub.add_parser(
        "strata",
        help=(
            "cluster training embeddings per class, score the pseudo-groups (F1), Group DRO on them"
        ),
    )
    common(s, True)
    s.add_argument(
        "--clusters-per-class",
        type=int,
        default=None,
        help="fixed k; default: chosen by silhouette in 2..--max-clusters",
    )
    s.add_argument("--max-clusters", type=int, default=6)
    s.add_argument(
        "--reducer",
        default="auto",
        choices=["auto", "umap", "pca", "none"],
        help="auto = UMAP if umap-learn is installed, else PCA",
    )
    s.add_argument("--components", type=int, default=2, help="dimensions after the reducer")
    s.add_argument(
        "--truth",
        default="auto",
        choices=["auto", "group", "fine_label"],
        help=(
            "true strata to score against: the benchmark's groups, or fine labels (auto: fine "
            "labels when there is no attribute)"
        ),
    )
    s.add_argument(
        "--steps",
        type=int,
        default=300,
        help="full-batch steps of the linear Group DRO / ERM heads",
    )
    s.add_argument("--step-size", type=float, default=0.01, help="Group DRO eta")

    protocols = {
        "choices": ["paper", "full-labels"],
        "default": "paper",
    }
    n = sub.add_parser("noisy-labels", help="geometric noisy-label detection and relabelling")
    common(n, True)
    n.add_argument(
        "--protocol",
        **protocols,
        help=(
            "paper (default): the checkpoint's CE head was trained on the clean labels of "
            "--labelled-fraction of the training set (SpreadSupCon ce_labelled_fraction, checked); "
            "reports that head and a linear head on the labelled fraction too. full-labels: the "
            "first-shipped study, any checkpoint (its CE head may have seen every clean label)"
        ),
    )
    n.add_argument(
        "--labelled-fraction",
        type=float,
        default=0.2,
        help="paper protocol: fraction of clean labels the CE head was trained on (paper 0.2)",
    )
    n.add_argument(
        "--noise-rate",
        type=float,
        default=None,
        help="fraction of noisy labels (default: the checkpoint's contrastive_label_noise)",
    )
    n.add_argument(
        "--batch-size",
        type=int,
        default=512,
        help="batch in which scores and class centres are computed",
    )

    c = sub.add_parser(
        "coreset", help="partial-training difficulty buckets -> pruned coreset -> fresh model"
    )
    common(c, False)
    c.add_argument(
        "--target", type=float, default=0.3, help="coreset size as a fraction of the training set"
    )
    c.add_argument(
        "--fractions",
        type=float,
        nargs="+",
        default=[0.1, 0.2, 0.5],
        help="subset sizes t of the partial-training runs",
    )
    c.add_argument("--repeats", type=int, default=3, help="runs per subset size")
    c.add_argument(
        "--protocol",
        **protocols,
        help=(
            "paper (default): in each partial-training run the CE head (or, without one, the "
            "probe) is trained on the clean labels of --labelled-fraction of the full training "
            "set, drawn from the run's subset; full-labels: on every label of the subset"
        ),
    )
    c.add_argument(
        "--labelled-fraction",
        type=float,
        default=0.01,
        help="paper protocol: labelled examples per run as a fraction of the training set (1%%)",
    )
    c.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="epochs of each partial-training run (default: the config's)",
    )
    c.add_argument(
        "--eval-epochs",
        type=int,
        default=None,
        help="epochs of the fresh model (default: --max-epochs)",
    )
    m = sub.add_parser(
        "cim-mask", help="CIM: mean mask on the foreground / background / per class of a test set"
    )
    common(m, True)
    m.add_argument("--eval-set", default=None, help="named test set (default: the primary one)")
    v = sub.add_parser(
        "chroma-latents",
        help=(
            "Chroma-VAE: kNN read-outs of label / fine label / attribute "
            "from z1, z2 and z; active units"
        ),
    )
    common(v, True)
    v.add_argument(
        "--pixel-baseline",
        action="store_true",
        help=(
            "also read the grey image (channels averaged) with the same kNN: the shape-only ceiling"
        ),
    )
    return parser


def _overrides(items: list[str]) -> dict:
    from robustrep.analysis.common import parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = parse_value(value)
    return out


def analyze_command(argv: list[str]) -> int:
    """Entry point of ``robustrep analyze``; returns the exit status."""
    from robustrep.analysis import common

    args = build_parser().parse_args(argv)
    overrides = _overrides(args.set)
    if args.config is None and args.ckpt is None:
        raise ConfigError(
            "give --config (the method + data YAML) or --ckpt of a run that saved its config.yaml"
        )
    config = common.load_config(args.config or common.find_run_config(args.ckpt))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        result = _run(args, config, overrides)
    for message in dict.fromkeys(str(w.message) for w in caught):
        if "umap" in message.lower():
            print(f"notice: {message}")
    print(result.table())
    if args.output:
        Path(args.output).write_text(json.dumps(dataclasses.asdict(result), indent=2))
        print(f"written: {args.output}")
    return 0


def _run(args, config: dict, overrides: dict):
    from robustrep.analysis import common

    if args.analysis == "coreset":
        from robustrep.analysis.coreset import run_coreset

        epochs = args.max_epochs or int((config.get("trainer") or {}).get("max_epochs", 10))
        return run_coreset(
            config,
            args.target,
            args.fractions,
            args.repeats,
            epochs,
            args.eval_epochs,
            data_overrides=overrides,
            seed=args.seed,
            labelled_fraction=args.labelled_fraction if args.protocol == "paper" else None,
        )
    dm = common.build_datamodule(config, overrides)
    model = common.load_model(args.ckpt)
    if args.analysis == "cim-mask":
        from robustrep.analysis.cim_mask import mask_statistics

        return mask_statistics(model, dm, args.eval_set)
    if args.analysis == "chroma-latents":
        from robustrep.analysis.chroma_latents import latent_readout

        return latent_readout(model, dm, pixel_baseline=args.pixel_baseline)
    feats = common.embed_splits(model, dm, ("train", "test"))
    if args.analysis == "strata":
        from robustrep.analysis.strata import run_strata

        truth = args.truth
        if truth == "auto":
            truth = (
                "fine_label"
                if dm.num_attributes == 1 and (feats["train"]["fine_label"] >= 0).any()
                else "group"
            )
        num_groups = dm.num_groups
        if truth == "fine_label":
            if (feats["train"]["fine_label"] < 0).all():
                raise ConfigError(f"--truth fine_label: {type(dm).__name__} has no fine labels")
            for split in feats.values():
                split["group"] = split["fine_label"]
            num_groups = int(max(f["fine_label"].max() for f in feats.values())) + 1
        print(f"true strata: {truth}")
        return run_strata(
            feats["train"],
            feats["test"],
            dm.num_classes,
            num_groups,
            args.clusters_per_class,
            args.max_clusters,
            args.reducer,
            args.components,
            args.steps,
            args.step_size,
            args.seed,
        )
    from robustrep.analysis.noisy_labels import head_accuracy, run_noisy_labels

    stored = getattr(model, "noisy_labels", None)
    rate = (
        args.noise_rate
        if args.noise_rate is not None
        else getattr(model, "contrastive_label_noise", 0.0)
    )
    if not rate:
        raise ConfigError(
            "give --noise-rate (the checkpoint was trained without contrastive_label_noise)"
        )
    if (
        stored is not None
        and args.noise_rate is not None
        and abs(args.noise_rate - model.contrastive_label_noise) > 1e-9
    ):
        stored = None  # a different rate than the one trained with: inject fresh noise
    labelled = None
    if args.protocol == "paper":
        trained = getattr(model, "ce_labelled_fraction", None)
        if trained is None or abs(trained - args.labelled_fraction) > 1e-9:
            raise ConfigError(
                f"--protocol paper: the paper trains the CE head on the clean labels of "
                f"{args.labelled_fraction:.0%} of the training set, but this checkpoint's CE head "
                f"saw {'no such setting' if trained is None else f'{trained:.0%}'}; retrain with "
                f"--model.init_args.ce_labelled_fraction {args.labelled_fraction} (SpreadSupCon) "
                "or pass --protocol full-labels for the first-shipped study"
            )
        labelled = model.ce_labelled
    result = run_noisy_labels(
        feats["train"],
        feats["test"],
        dm.num_classes,
        rate,
        stored,
        args.batch_size,
        args.seed,
        labelled=labelled,
    )
    if getattr(model, "has_classifier", False):
        result.test_acc["the model's CE head"] = head_accuracy(model, feats["test"])
        if labelled is None and getattr(model, "ce_labelled", None) is None:
            result.notes.append(
                "the CE head was trained jointly on every clean training label: the encoder was "
                "fully supervised whatever the contrastive labels"
            )
    return result
