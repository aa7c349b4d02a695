"""``curves.png``: a run's logged metrics over training, drawn from its ``metrics.csv``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Panels: (title, metric name prefixes); a panel is drawn when the run logged one of them.
PANELS = (
    ("training loss", ("train/loss",)),
    ("validation accuracy", ("val/acc", "val/worst_group_acc", "val/mean_group_acc")),
    ("validation loss", ("val/loss",)),
    ("other training metrics", ("train/",)),
)


def plot_curves(metrics_csv: str | Path, out: str | Path, title: str | None = None) -> Path | None:
    """Plot the metrics of a Lightning ``metrics.csv`` against the training step; returns the PNG
    path (None when the file holds no training or validation curve)."""
    frame = pd.read_csv(metrics_csv)
    if "step" not in frame.columns:
        return None
    used: set[str] = set()
    panels = []
    for name, prefixes in PANELS:
        columns = [
            c
            for c in frame.columns
            if c not in used
            and any(c == p or (p.endswith("/") and c.startswith(p)) for p in prefixes)
        ]
        columns = [c for c in columns if frame[c].notna().sum() > 1]
        if columns:
            used.update(columns)
            panels.append((name, columns[:6]))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (name, columns) in zip(axes[0], panels, strict=True):
        for column in columns:
            points = frame[["step", column]].dropna()
            ax.plot(
                points["step"],
                points[column],
                marker="." if len(points) < 30 else None,
                label=column,
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
