"""Paper tables as files (``experiments/tables/NAME.yaml``): loading them, planning their runs, and
the report that puts ours beside the paper's numbers. ``robustrep reproduce``
(:mod:`robustrep.reproduce`) runs the plan; the file format is described there.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustrep.errors import ConfigError
from robustrep.report import aggregate, load_runs
from robustrep.report_format import bar_plot, format_cell, render

#: Overrides of every row under ``--profile smoke`` (tables add their own, e.g. embedded data).
SMOKE: dict[str, Any] = {
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 2,
    "trainer.limit_test_batches": 2,
    "trainer.num_sanity_val_steps": 0,
    "trainer.enable_progress_bar": False,
    "trainer.enable_model_summary": False,
    "data.init_args.batch_size": 32,
}
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {"smoke": SMOKE}
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One row of a paper table."""

    label: str
    config: Path
    overrides: list[str] = field(default_factory=list)
    paper: dict[str, float | None] = field(default_factory=dict)
    profiles: dict[str, list[str]] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return slugify(self.label)


@dataclass
class Table:
    """A paper table: rows, the paper column -> metric map (a row may remap columns), and
    per-profile overrides.
    """

    name: str
    path: Path
    title: str
    rows: list[Row]
    columns: dict[str, str]
    paper_scale: float = 100.0
    seeds: int = 1
    source: str = ""
    profiles: dict[str, list[str]] = field(default_factory=dict)
    seed_keys: list[str] = field(default_factory=list)

    @property
    def has_paper(self) -> bool:
        """Whether any row has paper numbers (reports show paper / diff columns only then)."""
        return any(r.paper for r in self.rows)


@dataclass
class Job:
    """One (row, seed) run."""

    row: Row
    seed: int
    run_dir: Path
    args: list[str]
    status: str  # "finished", "resume", "new"
    # finished, but by a command with other arguments (another override, an older table file)
    stale: bool = False

    def command(self, program: list[str]) -> list[str]:
        extra = (
            ["--ckpt_path", str(self.run_dir / "checkpoints" / "last.ckpt")]
            if self.status == "resume"
            else []
        )
        return [*program, *self.args, *extra]


def slugify(text: str) -> str:
    """``"CIM + VIB (alpha 1)"`` -> ``"cim_vib_alpha_1"``: a folder name for a row."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug or "row"


def overrides_to_args(spec: Any, where: str) -> list[str]:
    """Overrides as CLI tokens: a mapping ``{key: value}`` -> ``["--key", "value", ...]``, or a list
    kept as is.
    """
    if spec is None:
        return []
    if isinstance(spec, list):
        return [str(s) for s in spec]
    if isinstance(spec, dict):
        out = []
        for key, value in spec.items():
            out += [f"--{str(key).lstrip('-')}", _cli_value(value)]
        return out
    raise ConfigError(
        f"{where}: overrides must be a mapping or a list of CLI tokens, got {type(spec).__name__}"
    )


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def find_table(name: str) -> Path:
    """``experiments/tables/<name>.yaml`` in the current folder or the repository, or a path to a
    YAML file.
    """
    candidates = [
        Path(name),
        Path("experiments/tables") / f"{name}.yaml",
        REPO_ROOT / "experiments" / "tables" / f"{name}.yaml",
    ]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(p.stem for p in (REPO_ROOT / "experiments" / "tables").glob("*.yaml"))
    raise ConfigError(
        f"no table {name!r}: expected experiments/tables/{name}.yaml; known tables: "
        f"{', '.join(known) or 'none'}"
    )


def load_table(name_or_path: str) -> Table:
    """Parse and check a table file (every config must exist, labels must be unique)."""
    import yaml

    path = find_table(name_or_path)
    spec = yaml.safe_load(path.read_text()) or {}
    where = str(path)
    if not isinstance(spec.get("rows"), list) or not spec["rows"]:
        raise ConfigError(f"{where}: needs a non-empty `rows:` list")
    base = path.resolve().parents[2] if path.resolve().parent.name == "tables" else Path.cwd()
    columns = dict(spec.get("columns") or {})
    rows, slugs = [], set()
    for i, raw in enumerate(spec["rows"]):
        if not isinstance(raw, dict) or "label" not in raw or "config" not in raw:
            raise ConfigError(f"{where}: row {i} needs `label` and `config`")
        config = Path(raw["config"])
        config = (
            config
            if config.is_absolute()
            else (base / config if (base / config).exists() else Path.cwd() / config)
        )
        if not config.is_file():
            raise ConfigError(
                f"{where}: row {raw['label']!r} names {raw['config']}, which does not exist"
            )
        paper = dict(raw.get("paper") or {})
        row_columns = {str(k): str(v) for k, v in (raw.get("columns") or {}).items()}
        unknown = (set(paper) | set(row_columns)) - set(columns)
        if unknown:
            raise ConfigError(
                f"{where}: row {raw['label']!r} has paper numbers for {sorted(unknown)}, not in "
                f"`columns` {sorted(columns)}"
            )
        profiles = {
            k: overrides_to_args(v, f"{where} row {raw['label']!r} profile {k}")
            for k, v in (raw.get("profiles") or {}).items()
        }
        row = Row(
            str(raw["label"]),
            config,
            overrides_to_args(raw.get("overrides"), f"{where} row {raw['label']!r}"),
            paper,
            profiles,
            row_columns,
        )
        if row.slug in slugs:
            raise ConfigError(
                f"{where}: two rows share the folder name {row.slug!r}; make the labels differ"
            )
        slugs.add(row.slug)
        rows.append(row)
    return Table(
        name=path.stem,
        path=path,
        title=str(spec.get("title") or path.stem),
        rows=rows,
        columns=columns,
        paper_scale=float(spec.get("paper_scale", 100.0)),
        seeds=int(spec.get("seeds", 1)),
        source=str(spec.get("source") or ""),
        profiles={
            k: overrides_to_args(v, f"{where} profile {k}")
            for k, v in (spec.get("profiles") or {}).items()
        },
        seed_keys=[str(k) for k in (spec.get("seed_keys") or [])],
    )


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def table_root(table: Table, output_root: str | Path, profile: str | None) -> Path:
    return Path(output_root) / "tables" / (table.name if not profile else f"{table.name}-{profile}")


def plan(
    table: Table,
    seeds: list[int],
    output_root: str | Path,
    profile: str | None,
    extra: list[str],
    rows: str | None = None,
) -> list[Job]:
    """The (row, seed) jobs in order, each marked finished / resume / new from its run directory."""
    if (
        profile
        and profile not in BUILTIN_PROFILES
        and profile not in table.profiles
        and not any(profile in r.profiles for r in table.rows)
    ):
        raise ConfigError(
            f"unknown profile {profile!r}: built in {sorted(BUILTIN_PROFILES)}, table "
            f"{table.name} defines {sorted(table.profiles)}"
        )
    chosen = [
        r
        for r in table.rows
        if rows is None or any(fnmatch.fnmatch(x, rows) for x in (r.label, r.slug))
    ]
    if not chosen:
        raise ConfigError(f"--rows {rows!r} matches none of {[r.label for r in table.rows]}")
    root = table_root(table, output_root, profile)
    jobs = []
    for row in chosen:
        profile_args: list[str] = []
        if profile:
            profile_args = (
                overrides_to_args(BUILTIN_PROFILES.get(profile), "profile")
                + table.profiles.get(profile, [])
                + row.profiles.get(profile, [])
            )
        for seed in seeds:
            run_dir = root / row.slug / f"seed{seed}"
            args = [
                "fit",
                "--config",
                _display_path(row.config),
                *row.overrides,
                *profile_args,
                *extra,
                "--seed_everything",
                str(seed),
                *[token for key in table.seed_keys for token in (f"--{key}", str(seed))],
                "--name",
                f"{table.name}.{row.slug}",
                "--run_dir",
                str(run_dir),
            ]
            jobs.append(Job(row, seed, run_dir, args, *run_status(run_dir, args)))
    return jobs


def run_status(run_dir: Path, args: list[str]) -> tuple[str, bool]:
    """``(status, stale)`` of a run directory for a command's ``args``, from its files: "finished"
    (it has results.json; stale if a command with other arguments made it), "resume" (an
    interrupted run of the same arguments: it has ``checkpoints/last.ckpt``) or "new".

    A launcher's task calls this again when it starts, so a requeued task resumes the checkpoint
    its previous attempt saved.
    """
    if (run_dir / "results.json").is_file():
        return "finished", _recorded_args(run_dir) not in (None, args)
    if (run_dir / "checkpoints" / "last.ckpt").is_file() and _recorded_args(run_dir) in (
        None,
        args,
    ):
        return "resume", False
    return "new", False


def _recorded_args(run_dir: Path) -> list[str] | None:
    path = run_dir / "reproduce.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("args")
    except json.JSONDecodeError:
        return None


def _scaled(rec: pd.Series | None, key: str, scale: float) -> float:
    """``rec[key] * scale``, NaN where the record or its value is missing."""
    return float(rec[key]) * scale if rec is not None and not pd.isna(rec[key]) else math.nan


def table_report(table: Table, root: Path, jobs: list[Job]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numeric frame, display frame): ours (mean ± std over seeds), the paper's number and the
    difference per column (the display leaves out the last two where no row has paper numbers).
    """
    done = [j for j in jobs if (j.run_dir / "results.json").is_file()]
    labels = {j.row.slug: j.row.label for j in jobs}
    default = table.columns or {"worst_group_acc": "test/worst_group_acc", "acc": "test/acc"}
    row_columns = {r.slug: {**default, **r.columns} for r in table.rows}
    all_metrics = list(dict.fromkeys(m for cols in row_columns.values() for m in cols.values()))
    order = list(dict.fromkeys(j.row.slug for j in jobs))
    if done:
        runs = load_runs([j.run_dir for j in done])
        runs["row"] = [Path(d).parent.name for d in runs["run_dir"]]
    else:
        runs = pd.DataFrame({"row": pd.Series(dtype=str)})
    for metric in all_metrics:
        if metric not in runs.columns:
            runs[metric] = math.nan
    agg = aggregate(runs, ["row"], all_metrics).set_index("row") if len(runs) else None
    numeric, display = [], []
    row_by_slug = {r.slug: r for r in table.rows}
    scale = table.paper_scale
    digits = 2 if scale >= 100 else 4  # percentages: 2 decimals; fractions (paper_scale 1): 4
    for slug in order:
        row = row_by_slug[slug]
        num: dict[str, Any] = {"row": labels[slug], "n": 0}
        disp: dict[str, Any] = {"row": labels[slug]}
        rec = agg.loc[slug] if agg is not None and slug in agg.index else None
        num["n"] = int(rec["n"]) if rec is not None else 0

        for col, metric in row_columns[slug].items():
            mean, std = _scaled(rec, metric, scale), _scaled(rec, f"{metric}:std", scale)
            count = int(rec[f"{metric}:n"]) if rec is not None else 0
            paper = row.paper.get(col)
            paper = math.nan if paper is None else float(paper)
            num.update({f"{col} ours": mean, f"{col} ours std": std, f"{col} paper": paper})
            num[f"{col} diff"] = mean - paper
            disp[f"{col} ours"] = format_cell(
                mean / scale, std / scale, count, num["n"], scale=scale, digits=digits
            )
            if table.has_paper:
                disp[f"{col} paper"] = "-" if math.isnan(paper) else f"{paper:g}"
                gap = mean - paper
                disp[f"{col} diff"] = "-" if math.isnan(gap) else f"{gap:+.{digits}f}"
        disp["n"] = num["n"]
        numeric.append(num)
        display.append(disp)
    return pd.DataFrame(numeric), pd.DataFrame(display)


def write_report(table: Table, root: Path, jobs: list[Job], profile: str | None) -> str:
    """Write ``report.{md,csv,html}`` (and ``report.png`` when runs have accuracies) under ``root``;
    return the markdown.
    """
    numeric, display = table_report(table, root, jobs)
    root.mkdir(parents=True, exist_ok=True)
    head = f"## {table.title}" + (f" (profile: {profile})" if profile else "")
    diff = "diff = ours - paper, in the paper's units." if table.has_paper else "no paper numbers."
    notes = [
        f"Source: {table.source}." if table.source else "",
        f"Ours: mean ± std over seeds (n runs); {diff}",
    ]
    markdown = "\n\n".join([head, *[n for n in notes if n], render(display, "md")])
    (root / "report.md").write_text(markdown)
    numeric.to_csv(root / "report.csv", index=False)
    (root / "report.html").write_text(f"<h2>{table.title}</h2>\n" + render(display, "html"))
    finished = [j.run_dir for j in jobs if (j.run_dir / "results.json").is_file()]
    if finished:
        runs = load_runs(finished)
        labels = {str(j.run_dir.resolve()): j.row.label for j in jobs}
        runs["row"] = [
            labels.get(str(Path(d).resolve()), Path(d).parent.name) for d in runs["run_dir"]
        ]
        plotted = [m for m in ("test/acc", "test/worst_group_acc") if m in runs.columns]
        if plotted:
            bar_plot(
                aggregate(runs, ["row"], plotted), ["row"], root / "report.png", title=table.title
            )
    return markdown
