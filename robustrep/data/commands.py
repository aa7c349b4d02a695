"""``robustrep data list`` and
``robustrep data check --data NAME --root PATH [--set KEY=VALUE ...] [--decode]``.

``list`` prints every benchmark with the files it expects and its groups. ``check`` loads a user's
copy (metadata only: images are decoded lazily, so this is quick even for CelebA), prints the
examples per group and split as a table, and - where the benchmark publishes reference counts
(CelebA Blond/Male, Waterbirds) - says whether the copy matches them. With ``--decode`` it then
opens every image file the splits name, with the dataset's own decoder, and exits with status 1
when any is missing or unreadable.
"""

from __future__ import annotations

import argparse
import sys
import textwrap

import pandas as pd
import yaml


def group_count_table(dm) -> pd.DataFrame:
    """Examples per group (rows) and split (columns) of a datamodule; sets it up if needed."""
    dm.setup("fit")
    columns = {"train": dm.group_counts("train")}
    for name in dict.fromkeys(dm.val_set_names + dm.test_set_names):
        columns[name] = dm.group_counts(name)
    table = pd.DataFrame({k: v.tolist() for k, v in columns.items()}, index=dm.group_names)
    table.index.name = "group"
    table.loc["total"] = table.sum()
    return table


def compare_published(dm, table: pd.DataFrame) -> list[str]:
    """Lines saying whether each split matches ``dm.published_counts()`` (empty if none
    published).
    """
    published = dm.published_counts() if hasattr(dm, "published_counts") else None
    if not published:
        return []
    lines = []
    for split, counts in published.items():
        if split not in table.columns:
            continue
        found = table[split].iloc[:-1].tolist()
        status = (
            "matches" if found == list(counts) else f"DIFFERS from the published {list(counts)}"
        )
        lines.append(f"  {split:<6} {found} {status}")
    return ["published group counts:", *lines] if lines else []


def decode_all(dm) -> tuple[int, list[tuple[str, str]]] | None:
    """Decode every image file of train and of every val and test set once, with the decoder of the
    dataset that names it (the code ``__getitem__`` uses). Returns (files, [(path, reason)]), or
    None when no split is file-backed (the images are held in memory)."""
    from tqdm import tqdm

    from robustrep.errors import CorruptDataError, DataNotFoundError

    splits = dm.splits
    decoders = {}
    for ds in [splits.train, *splits.val.values(), *splits.test.values()]:
        if hasattr(ds, "image_paths"):
            for path in ds.image_paths():
                decoders.setdefault(path, ds.decode)
    if not decoders:
        return None
    bad = []
    for path, decode in tqdm(decoders.items(), desc="decoding", unit="img", file=sys.stderr):
        try:
            decode(path)
        except DataNotFoundError:
            bad.append((path, "missing"))
        except CorruptDataError as err:
            bad.append((path, f"unreadable: {err.__cause__ or err}"))
        except Exception as err:  # e.g. PIL's DecompressionBombError: training would fail on it too
            bad.append((path, f"unreadable: {type(err).__name__}: {err}"))
    return len(decoders), bad


def list_benchmarks() -> str:
    """The text of ``robustrep data list``."""
    from robustrep.data import BENCHMARKS

    out = []
    for name, (cls, files, groups) in BENCHMARKS.items():
        out.append(f"{name}  ({cls.__module__}.{cls.__name__})")
        out.append(
            textwrap.fill(
                files, width=110, initial_indent="    files:  ", subsequent_indent=" " * 12
            )
        )
        out.append(f"    groups: {groups}")
    out.append(
        "\nCheck a copy on disk: robustrep data check --data NAME --root PATH "
        "[--set key=value ...] [--decode]"
    )
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``robustrep data`` (also used to check documented command lines)."""
    from robustrep.data import BENCHMARKS

    parser = argparse.ArgumentParser(
        prog="robustrep data", description="List the benchmarks or check a copy on disk."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="every benchmark with its expected files and groups")
    check = sub.add_parser(
        "check",
        help="load a benchmark from ROOT and print its group counts per split",
        description=(
            "Load a benchmark from ROOT and print its group counts per split. Reads the metadata "
            "only unless --decode is given."
        ),
    )
    check.add_argument(
        "--data",
        required=True,
        choices=sorted(BENCHMARKS),
        help="benchmark name (see `robustrep data list`)",
    )
    check.add_argument("--root", default="data", help="folder that holds the benchmark's files")
    check.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "extra datamodule arguments in YAML syntax, e.g. target=Attractive "
            "digits_source=sklearn eval_variants=[original,mixed_rand]"
        ),
    )
    check.add_argument(
        "--decode",
        action="store_true",
        help=(
            "also open every image file the train, val and test splits name (each once) with the "
            "loader's own decoder; list each missing or unreadable file and exit with status 1 if "
            "there is any. Slow for large benchmarks. Benchmarks held in memory have no image "
            "files: their raw files are read while loading, so there is nothing more to check"
        ),
    )
    return parser


def data_command(argv: list[str]) -> int:
    from robustrep.data import BENCHMARKS

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.action == "list":
        print(list_benchmarks())
        return 0
    cls = BENCHMARKS[args.data][0]
    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key] = _parse_value(value)
    dm = cls(root=args.root, **extra)
    table = group_count_table(dm)
    shape = "x".join(str(s) for s in dm.image_shape)
    print(
        f"{args.data} at {args.root}: {dm.num_classes} classes, "
        f"{dm.num_groups} groups, images {shape}"
    )
    print(table.to_string())
    for line in compare_published(dm, table):
        print(line)
    if not args.decode:
        return 0
    result = decode_all(dm)
    if result is None:
        print("images are held in memory (loaded above); nothing to decode beyond loading")
        return 0
    total, bad = result
    for path, reason in bad:
        print(f"{path}: {reason}")
    if bad:
        print(f"{len(bad)} of {total} images could not be read")
        return 1
    print(f"all {total} images decode")
    return 0


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
