"""Learning-curve statistics the papers report, from a run's per-epoch test accuracy.

best, final, mean and variance of test accuracy over the evaluated epochs (the
PRE-DFKD and LRWA papers' "mean / variance / best"), plus the largest
epoch-to-epoch drop, which is the forgetting the meta update is meant to cut.
Accuracies are fractions in [0, 1]; the variance is therefore in fraction^2
(multiply by 1e4 for the papers' %^2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def curve_statistics(test_accuracies: Sequence[float], warmup_epochs: int = 0
                     ) -> dict[str, float]:
    """The statistics of the curve; `*_after_warmup` leave out its first `warmup_epochs`
    entries (epochs, when every epoch is evaluated), where the early climb dominates."""
    accuracies = np.array([a for a in test_accuracies if not math.isnan(a)], dtype=float)
    later = np.array([a for a in list(test_accuracies)[warmup_epochs:] if not math.isnan(a)],
                     dtype=float)
    late = _spread(later)
    statistics = {"best_acc": math.nan, "final_acc": math.nan, "mean_acc": math.nan,
                  **_spread(accuracies)}
    if accuracies.size:
        statistics.update(best_acc=float(accuracies.max()), final_acc=float(accuracies[-1]),
                          mean_acc=float(accuracies.mean()))
    return {**statistics, "var_acc_after_warmup": late["var_acc"],
            "max_drop_after_warmup": late["max_drop"]}


def _spread(accuracies: np.ndarray) -> dict[str, float]:
    """Variance and largest epoch-to-epoch drop (0 when nothing dropped)."""
    if accuracies.size == 0:
        return {"var_acc": math.nan, "max_drop": math.nan}
    drops = accuracies[:-1] - accuracies[1:]
    return {"var_acc": float(accuracies.var()),
            "max_drop": float(max(0.0, drops.max())) if drops.size else 0.0}
