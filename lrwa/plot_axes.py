"""Accuracy axes that do not magnify noise, shared by a run's plot and a study's report.

matplotlib fits the y axis to the data, so a curve that wanders between 9.2% and
9.4% (chance on ten classes) fills the plot like a steep rise. An accuracy axis
here starts at the chance level when it is known (drawn as a dotted line) and
spans at least `MIN_SPAN` percentage points, within [0, 100]; tick labels are
plain numbers, never an offset such as "+9.8e1".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

MIN_SPAN = 10.0  # percentage points: less than this is seed-to-seed noise on these data sets
MARGIN = 0.04    # of the span, above and below, so markers at the limits are not cut


def accuracy_limits(values: Iterable[float], chance: float | None = None
                    ) -> tuple[float, float]:
    """y limits (in %) for accuracies `values` (in %), from `chance` up when given."""
    points = [float(value) for value in values if value is not None and math.isfinite(value)]
    if chance is not None:
        points.append(chance)
    if not points:
        return 0.0, 100.0
    low, high = min(points), max(points)
    if high - low < MIN_SPAN:
        high = min(100.0, low + MIN_SPAN)
        low = max(0.0, min(low, high - MIN_SPAN))
    margin = MARGIN * (high - low)
    return max(0.0, low - margin), min(100.0, high + margin)


def accuracy_axis(axis: Any, values: Iterable[float], chance: float | None = None) -> None:
    """Label and limit `axis`'s y axis for accuracies in %, and draw the chance level."""
    axis.set_ylim(*accuracy_limits(values, chance))
    axis.ticklabel_format(axis="y", style="plain", useOffset=False)
    if chance is not None:
        axis.axhline(chance, color="black", linestyle=":", linewidth=1,
                     label=f"chance ({chance:.3g}%)")


def chance_percent(num_classes: int | None) -> float | None:
    """Accuracy of guessing one of `num_classes` classes, in %."""
    return 100.0 / num_classes if num_classes else None
