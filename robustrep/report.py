"""``robustrep report``: many runs' ``results.json`` -> one comparison table (mean ± std over
seeds) and a plot.

``robustrep report RUN_DIRS... [--by method,benchmark] [--metrics ...]
[--format md|csv|html] [--out DIR]``

Every argument is a run directory, a ``results.json`` file or a folder searched recursively for
``results.json`` files (``runs/`` works). One row per run goes into a pandas frame (``method``,
``benchmark``, ``name``, ``seed``, ``run_dir`` and one column per metric); rows are grouped by the
``--by`` columns and every metric is aggregated over the group (mean, sample std, count). A run that
lacks a metric simply does not count for it, and the table shows the count beside the mean whenever
it is lower than the group's number of runs. ``--wandb ENTITY/PROJECT`` reads the runs' summaries
through the W&B API instead (online only).

The W&B side (the API reader behind ``--wandb`` and the offline run-file reader) is
:mod:`robustrep.wandb_runs`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robustrep.errors import ConfigError
from robustrep.records import config_key, flat_config
from robustrep.report_format import bar_plot, display_table, render

#: Metrics shown when ``--metrics`` is not given (those present in at least one run).
DEFAULT_METRICS = ("test/worst_group_acc", "test/acc", "test/mean_group_acc", "test/weighted_acc")
#: Columns of a run that are not metrics.
RUN_COLUMNS = (
    "method",
    "benchmark",
    "name",
    "seed",
    "stage",
    "record",
    "config_digest",
    "config_key",
    "selection",
    "diverged",
    "evaluates",
    "run_dir",
)

# ----------------------------------------------------------------------------------- loading runs


def find_results(paths: Iterable[str | Path]) -> list[Path]:
    """``results.json`` files named by ``paths``: files, run directories, or folders searched
    recursively.
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif (path / "results.json").is_file():
            found.append(path / "results.json")
        elif path.is_dir():
            found.extend(sorted(path.rglob("results.json")))
        else:
            raise ConfigError(
                f"no run found at {path}: give run directories, results.json "
                "files or folders holding them"
            )
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: the run columns of ``results.json`` plus one column per metric (NaN where
    missing).

    ``record`` is ``run`` or ``evaluation`` (a later ``robustrep test`` of a run's checkpoint),
    ``config_key`` identifies the experiment (the config without seeds and paths), ``selection`` the
    weights the test metrics come from (a validation metric or ``last``), ``diverged`` the loss
    flag. The flat configs are kept in ``frame.attrs["configs"]`` (by config key) to explain
    differences.
    """
    rows = []
    configs: dict[str, dict[str, Any]] = {}
    for path in find_results(paths):
        try:
            results = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(
                f"{path} is not valid JSON ({err}); delete it or re-run that run"
            ) from err
        row: dict[str, Any] = {key: results.get(key) for key in RUN_COLUMNS}
        row["run_dir"] = row["run_dir"] or str(path.parent)
        # records written before run records existed: a stage-test record was a re-evaluation, and
        # the test pass always scored the last epoch
        row["record"] = results.get("record") or (
            "evaluation" if results.get("stage") == "test" else "run"
        )
        selection = results.get("selection") or {}
        row["selection"] = selection.get("monitor") or selection.get("mode") or "last"
        row["diverged"] = bool((results.get("divergence") or {}).get("diverged"))
        flat = results.get("config") or _config_beside(path)
        row["config_key"] = results.get("config_key") or (
            config_key(flat) if flat else results.get("config_digest") or "unknown"
        )
        configs.setdefault(row["config_key"], flat or {})
        row.update({key: float(value) for key, value in (results.get("metrics") or {}).items()})
        rows.append(row)
    if not rows:
        raise ConfigError(
            "no results.json found under the given paths (a run writes it when it finishes)"
        )
    frame = pd.DataFrame(rows)
    frame.attrs["configs"] = configs
    return frame


def _config_beside(results_path: Path) -> dict[str, Any]:
    config = results_path.parent / "config.yaml"
    return flat_config(config.read_text()) if config.is_file() else {}


def _short_key(key: str) -> str:
    return key.replace(".init_args.", ".").removeprefix("init_args.")


def label_configs(df: pd.DataFrame, by: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Add a ``config`` column that tells apart the configs pooled under one ``by`` group.

    Within a group that holds a single config (the usual case: seeds of one experiment) the label
    is empty; otherwise it lists this config's values of the keys that differ between the group's
    configs (``optimizer.lr=1000000.0``). Returns the frame and one note per mixed group.
    """
    configs = df.attrs.get("configs", {})
    out = df.copy()
    out["config"] = ""
    notes = []
    for keys, group in out.groupby(list(by), sort=False, dropna=False):
        distinct = list(dict.fromkeys(group["config_key"]))
        if len(distinct) < 2:
            continue
        flats = {k: configs.get(k) or {} for k in distinct}
        every_key = sorted(set().union(*flats.values()))
        varying = [
            k
            for k in every_key
            if len({json.dumps(f.get(k), default=str) for f in flats.values()}) > 1
            and not _ignored(k)
        ]
        for ck in distinct:
            parts = [f"{_short_key(k)}={flats[ck].get(k)}" for k in varying[:3]]
            label = (
                ", ".join(parts) + (" ..." if len(varying) > 3 else "")
                if parts
                else f"config {ck[:8]}"
            )
            out.loc[group.index[group["config_key"] == ck], "config"] = label
        name = " / ".join(
            str(k) for k in (keys if isinstance(keys, tuple) else (keys,)) if str(k) != "run"
        )
        notes.append(
            f"{name}: {len(distinct)} different configs, one row each (they differ in "
            f"{', '.join(map(_short_key, varying[:6])) or 'unrecorded keys'})"
        )
    return out, notes


def _ignored(key: str) -> bool:
    from robustrep.records import NOT_IN_CONFIG_KEY

    return any(fnmatch.fnmatchcase(key, p) for p in NOT_IN_CONFIG_KEY)


def run_flags(
    df: pd.DataFrame, group_cols: Sequence[str], named_by: int
) -> tuple[dict[tuple, str], list[str]]:
    """Per group: repeated seeds and diverged runs, as a short cell text (keyed by the group's
    values as strings) and as notes naming the group by its first ``named_by`` columns (and its
    config)."""
    flags: dict[tuple, str] = {}
    notes = []
    for keys, group in df.groupby(list(group_cols), sort=False, dropna=False):
        keys = tuple(str(k) for k in (keys if isinstance(keys, tuple) else (keys,)))
        cell = []
        seeds = group["seed"].astype(str).value_counts()
        repeated = {s: int(c) for s, c in seeds.items() if c > 1}
        if repeated:
            cell.append("repeated seed " + ", ".join(f"{s} x{c}" for s, c in repeated.items()))
        diverged = (
            int(group["diverged"].fillna(False).astype(bool).sum()) if "diverged" in group else 0
        )
        if diverged:
            cell.append(f"{diverged} diverged")
        if cell:
            flags[keys] = "; ".join(cell)
            config = str(group["config"].iloc[0]) if "config" in group else ""
            name = " / ".join(keys[:named_by]) + (f" ({config})" if config else "")
            notes.append(f"{name}: {'; '.join(cell)}")
    return flags, notes


def metric_columns(df: pd.DataFrame) -> list[str]:
    """The metric columns of a runs frame, in order of appearance."""
    return [c for c in df.columns if "/" in str(c) and c not in RUN_COLUMNS]


def select_metrics(df: pd.DataFrame, patterns: Sequence[str] | None) -> list[str]:
    """Metric columns matching ``patterns`` (exact names or globs like ``test/*/acc``), in the given
    order.
    """
    available = metric_columns(df)
    if not patterns:
        chosen = [m for m in DEFAULT_METRICS if m in available]
        return chosen or [m for m in available if m.count("/") == 1 and not m.endswith("/loss")]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [m for m in available if fnmatch.fnmatchcase(m, pattern)]
        if not hits:
            raise ConfigError(
                f"no run has a metric matching {pattern!r}; available: "
                f"{', '.join(available) or 'none'}"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


# ----------------------------------------------------------------------------------- aggregation


def aggregate(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Mean, sample standard deviation (ddof 1; NaN for one run) and count of each metric per group.

    Returns one row per group with the ``by`` columns, ``n`` (runs in the group) and, per metric,
    ``<metric>`` (mean), ``<metric>:std`` and ``<metric>:n`` (runs that have it).
    """
    missing = [b for b in by if b not in df.columns]
    if missing:
        raise ConfigError(
            f"cannot group by {missing}: the runs have columns {', '.join(map(str, df.columns))}"
        )
    frame = df.copy()
    for key in by:
        frame[key] = frame[key].fillna("?").astype(str)
    grouped = frame.groupby(list(by), sort=False, dropna=False)
    out = grouped.size().rename("n").to_frame()
    for metric in metrics:
        col = grouped[metric] if metric in frame.columns else None
        if col is None:
            out[metric], out[f"{metric}:std"], out[f"{metric}:n"] = math.nan, math.nan, 0
            continue
        out[metric] = col.mean()
        out[f"{metric}:std"] = col.std(ddof=1)
        out[f"{metric}:n"] = col.count()
    return out.reset_index()


# ----------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of this subcommand (also used to check documented command lines)."""
    parser = argparse.ArgumentParser(
        prog="robustrep report",
        description=(
            "Aggregate runs (results.json) over seeds into a comparison table "
            "(mean ± std, n) and a bar plot."
        ),
        epilog=(
            "examples:\n  robustrep report runs/\n  robustrep report runs/erm_waterbirds "
            "runs/cim_waterbirds --by method --format csv --out reports/wb\n  robustrep report "
            "runs/ --metrics 'test/*acc' --by method,benchmark,name"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="*", help="run directories, results.json files, or folders searched for them"
    )
    parser.add_argument(
        "--by",
        default="method,benchmark",
        help=(
            "columns to group runs by, comma-separated (default: method,benchmark; also name, seed)"
        ),
    )
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help=(
            "metric names or globs (default: worst-group, average, "
            "mean-group and weighted accuracy)"
        ),
    )
    parser.add_argument(
        "--format",
        choices=("md", "csv", "html"),
        default="md",
        help=(
            "md/html: 'mean ± std' text in percent; csv: numeric <metric>:mean/:std/:n "
            "columns as stored (default: md)"
        ),
    )
    parser.add_argument(
        "--out",
        default=None,
        help=(
            "folder to write report.<format>, report_runs.csv and "
            "report.png into (default: print only)"
        ),
    )
    parser.add_argument(
        "--raw", action="store_true", help="show fractions as stored instead of percentages"
    )
    parser.add_argument(
        "--wandb",
        default=None,
        metavar="PROJECT",
        help="read runs from the W&B API (ENTITY/PROJECT, online) instead of paths",
    )
    return parser


def report_command(argv: list[str]) -> int:
    """Entry point of ``robustrep report``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.wandb:
        from robustrep.wandb_runs import runs_from_wandb

        df = runs_from_wandb(args.wandb)
    elif args.paths:
        df = load_runs(args.paths)
    else:
        raise ConfigError("give run directories (e.g. `robustrep report runs/`) or --wandb PROJECT")
    by = [b.strip() for b in args.by.split(",") if b.strip()]
    metrics = select_metrics(df, args.metrics)
    missing = [b for b in by if b not in df.columns]
    if missing:
        raise ConfigError(
            f"cannot group by {missing}: the runs have columns {', '.join(map(str, df.columns))}"
        )
    fill = {"record": "run", "config_key": "unknown", "selection": "last", "diverged": False}
    for column in ("record", "config_key", "selection", "diverged", "seed"):
        if column not in df.columns:
            df[column] = fill.get(column)
    df, config_notes = label_configs(df, [*by, "record"] if "record" not in by else by)
    # never pool different experiments: rows are split by config, by record kind and by selection
    extra = [c for c in ("record", "config", "selection") if c not in by]
    group_cols = [*by, *extra, "config_key"]
    agg = aggregate(df, group_cols, metrics)
    flags, flag_notes = run_flags(df, group_cols, len(by))
    scale = 1.0 if args.raw else 100.0
    table = display_table(agg, group_cols, metrics, scale=scale, digits=4 if args.raw else 2)
    table["flags"] = [
        flags.get(tuple(str(rec[c]) for c in group_cols), "") for _, rec in agg.iterrows()
    ]
    shown = [
        c
        for c in table.columns
        if c != "config_key"
        and not (c in ("config", "flags") and not table[c].astype(str).str.len().any())
    ]
    if "record" in shown and set(table["record"]) == {"run"}:
        shown.remove("record")
    table = table[shown]
    # numbers, not text: mean, std and count of each metric, as stored (fractions)
    if args.format == "csv":
        text = agg.rename(columns={m: f"{m}:mean" for m in metrics}).to_csv(index=False)
    else:
        text = render(table, args.format)
    notes = [*config_notes, *flag_notes]
    if "evaluation" in set(df["record"]):
        notes.append(
            "record = evaluation: a later `robustrep test` of a run's checkpoint, kept "
            "apart from the training runs"
        )
    if notes and args.format != "csv":
        text += "\n" + "\n".join(f"note: {n}" for n in notes) + "\n"
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"report.{args.format}").write_text(text)
        df.to_csv(out / "report_runs.csv", index=False)
        written = [out / f"report.{args.format}", out / "report_runs.csv"]
        plotted = [m for m in ("test/acc", "test/worst_group_acc") if m in df.columns]
        if plotted:
            written.append(
                bar_plot(aggregate(df, by, plotted), by, out / "report.png", scale=scale)
            )
        print("written: " + ", ".join(str(p) for p in written))
    return 0
