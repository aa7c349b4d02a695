"""How a comparison table looks: ``mean ± std`` cells, markdown / csv / html text and a bar plot
(used by ``robustrep report`` and by the paper-table reports of ``robustrep reproduce``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robustrep.errors import ConfigError


def format_cell(
    mean: float, std: float, count: int, total: int, scale: float = 100.0, digits: int = 2
) -> str:
    """``"81.25 ± 1.10"``; ``"81.25"`` for one run; ``"(n=2)"`` appended when fewer runs than the
    group has; ``"-"`` if none.
    """
    if count == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    text = f"{mean * scale:.{digits}f}"
    if count > 1 and not math.isnan(std):
        text += f" ± {std * scale:.{digits}f}"
    if count < total:
        text += f" (n={count})"
    return text


def display_table(
    agg: pd.DataFrame,
    by: Sequence[str],
    metrics: Sequence[str],
    scale: float = 100.0,
    digits: int = 2,
) -> pd.DataFrame:
    """The aggregated frame with one formatted ``mean ± std`` column per metric, plus ``n``."""
    rows = []
    for _, rec in agg.iterrows():
        row = {key: rec[key] for key in by}
        for metric in metrics:
            row[metric] = format_cell(
                rec[metric],
                rec[f"{metric}:std"],
                int(rec[f"{metric}:n"]),
                int(rec["n"]),
                scale,
                digits,
            )
        row["n"] = int(rec["n"])
        rows.append(row)
    return pd.DataFrame(rows, columns=[*by, *metrics, "n"])


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table (numbers right-aligned), without the optional ``tabulate``
    package.
    """
    columns = [str(c) for c in table.columns]
    cells = [
        ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in row]
        for row in table.itertuples(index=False)
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_looks_numeric(r[i]) for r in cells) and cells for i in range(len(columns))]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def _looks_numeric(text: str) -> bool:
    head = text.split(" ")[0].lstrip("+-")
    return head in ("-", "") or head.replace(".", "", 1).isdigit()


def render(table: pd.DataFrame, fmt: str) -> str:
    """``table`` as ``md``, ``csv`` or ``html`` text."""
    if fmt == "md":
        return to_markdown(table) + "\n"
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "html":
        return table.to_html(index=False, na_rep="-", escape=True)
    raise ConfigError(f"unknown format {fmt!r}: use md, csv or html")


def bar_plot(
    agg: pd.DataFrame,
    by: Sequence[str],
    path: str | Path,
    average: str = "test/acc",
    worst: str = "test/worst_group_acc",
    scale: float = 100.0,
    title: str | None = None,
) -> Path:
    """PNG bar plot: average and worst-group accuracy (mean, std error bars) per row of ``agg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [" / ".join(str(rec[k]) for k in by) for _, rec in agg.iterrows()]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(labels) + 1.5), 3.6))
    for offset, metric, label in ((-0.2, average, "average"), (0.2, worst, "worst group")):
        if metric not in agg.columns:
            continue
        means = agg[metric].to_numpy(dtype=float) * scale
        stds = np.nan_to_num(agg[f"{metric}:std"].to_numpy(dtype=float) * scale)
        ax.bar(
            x + offset,
            np.nan_to_num(means),
            width=0.4,
            yerr=stds,
            capsize=3,
            label=f"{label} ({metric})",
        )
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)" if scale == 100.0 else "accuracy")
    ax.set_ylim(0, scale)
    ax.legend(fontsize=7, loc="lower right")
    if title:
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
