"""Where a run's results go: the per-epoch Parquet table, the summary and the plot.

Each writer replaces its file atomically, so a reader (or a killed run) only
ever sees a complete file. The Parquet table is rewritten whole each epoch:
a run has at most a few hundred rows, and a single file is what pandas users
expect to open.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lrwa.atomic import atomic_path, write_text
from lrwa.plot_axes import accuracy_axis, chance_percent

METRICS_FILE = "metrics.parquet"
SUMMARY_FILE = "summary.json"
CURVE_FILE = "learning_curve.png"


def write_metrics(out_dir: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(out_dir / METRICS_FILE) as temporary:
        pd.DataFrame(list(rows)).to_parquet(temporary, index=False)


def read_metrics(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(out_dir / METRICS_FILE)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_summary(out_dir: Path, summary: dict[str, Any]) -> None:
    write_text(out_dir / SUMMARY_FILE, json.dumps(_json_safe(summary), indent=2) + "\n")


def plot_learning_curve(out_dir: Path, rows: Sequence[dict[str, Any]], title: str,
                        teacher_acc: float | None = None, num_classes: int | None = None
                        ) -> Any:
    """Write the student's test accuracy per epoch; returns the (closed) matplotlib figure.

    The accuracy axis starts at chance (1 / `num_classes`, drawn when given) and spans at
    least `plot_axes.MIN_SPAN` points, so noise does not look like learning.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    frame = pd.DataFrame(list(rows)).dropna(subset=["test_acc"])
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(frame["epoch"], 100 * frame["test_acc"], marker="o", markersize=3,
              label="student, test accuracy")
    if teacher_acc is not None:
        axis.axhline(100 * teacher_acc, color="grey", linestyle="--",
                     label=f"teacher, test accuracy ({100 * teacher_acc:.2f}%)")
    # Whole epochs only, even for a one-epoch run (its default view spans 0.95 to 1.05).
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    # Plain tick labels: no "1e2" or "+9.8e1" offset when the curve spans a fraction of a point.
    axis.ticklabel_format(style="plain", useOffset=False)
    shown = [*(100 * frame["test_acc"]), *([100 * teacher_acc] if teacher_acc is not None
                                          else [])]
    accuracy_axis(axis, shown, chance_percent(num_classes))
    axis.set_xlabel("epoch")
    axis.set_ylabel("test accuracy (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(out_dir / CURVE_FILE) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
    return figure
