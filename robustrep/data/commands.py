"""``robustrep data list`` and ``robustrep data check --data NAME --root PATH``."""

from __future__ import annotations

import argparse

import pandas as pd


def group_count_table(dm) -> pd.DataFrame:
    """Examples per group (rows) and split (columns) of a set-up datamodule."""
    dm.setup("fit")
    columns = {"train": dm.group_counts("train")}
    for name in dict.fromkeys(dm.val_set_names + dm.test_set_names):
        columns[name] = dm.group_counts(name)
    table = pd.DataFrame({k: v.tolist() for k, v in columns.items()}, index=dm.group_names)
    table.index.name = "group"
    table.loc["total"] = table.sum()
    return table


def data_command(argv: list[str]) -> int:
    from robustrep.data import BENCHMARKS

    parser = argparse.ArgumentParser(prog="robustrep data", description="List the benchmarks or check a copy on disk.")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every benchmark with its expected files and groups")
    check = sub.add_parser("check", help="load a benchmark from ROOT and print its group counts per split")
    check.add_argument("--data", required=True, choices=sorted(BENCHMARKS), help="benchmark name (see `robustrep data list`)")
    check.add_argument("--root", default="data", help="folder that holds the benchmark's files")
    check.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra datamodule arguments, e.g. target=Attractive")
    args = parser.parse_args(argv)
    if args.action == "list":
        rows = [{"name": k, "class": cls.__name__, "expects": files, "groups": groups} for k, (cls, files, groups) in BENCHMARKS.items()]
        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(pd.DataFrame(rows).to_string(index=False))
        return 0
    cls = BENCHMARKS[args.data][0]
    extra = {}
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = _parse_value(value)
    dm = cls(root=args.root, **extra)
    print(f"{args.data} at {args.root}: {dm.num_classes} classes, {dm.num_groups} groups, images {dm.image_shape}")
    print(group_count_table(dm).to_string())
    return 0


def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
