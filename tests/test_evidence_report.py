"""The verdicts of benchmarks/learning_evolution.py, on small tables with known answers.

BENCHMARKS.md states its verdicts as computed by that script, so the rules it computes
them by are tested here: which tuning value is chosen and whether it sits at the edge of
its grid, when a difference counts as outside the seed spread, and whether two systems'
runs agree epoch for epoch. The studies themselves take hours and are not run here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "learning_evolution.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("learning_evolution_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grid_rows(system: str, axis: str, scores: dict[tuple[float, float], float]) -> pd.DataFrame:
    return pd.DataFrame([{"system": system, "student_lr": lr, "axis": axis, "value": value,
                          "val_mean_acc": score, "status": "completed"}
                         for (lr, value), score in scores.items()])


def test_an_alpha_system_takes_its_best_cell_and_an_edge_is_flagged(report):
    middle = grid_rows("lrwa-memory", "alpha", {
        (0.1, 0.01): 60.0, (0.1, 0.1): 75.0, (0.1, 1.0): 50.0,
        (0.3, 0.01): 70.0, (0.3, 0.1): 74.0, (0.3, 1.0): 40.0,
        (1.0, 0.01): 10.0, (1.0, 0.1): 20.0, (1.0, 1.0): 30.0})
    chosen = report.choose(middle).loc["lrwa-memory"]
    assert (chosen["student_lr"], chosen["alpha"], chosen["val_mean_acc"]) == (0.1, 0.1, 75.0)
    assert (chosen["lr_edge"], chosen["alpha_edge"]) == ("low edge", "")
    at_top = middle.assign(val_mean_acc=middle["val_mean_acc"].where(
        ~((middle["student_lr"] == 0.3) & (middle["value"] == 1.0)), 99.0))
    chosen = report.choose(at_top).loc["lrwa-memory"]
    assert (chosen["student_lr"], chosen["alpha"]) == (0.3, 1.0)
    assert (chosen["lr_edge"], chosen["alpha_edge"]) == ("", "high edge")
    table = "\n".join(report.chosen_table(report.choose(at_top)))
    assert "YES: alpha at its high edge" in table


def test_a_seed_system_is_judged_by_its_mean_and_a_failed_seed_never_wins(report):
    grid = grid_rows("mb-dfkd", "seed", {
        (0.1, 100): 50.0, (0.1, 101): 52.0, (0.1, 102): 54.0,      # mean 52
        (0.3, 100): 90.0, (0.3, 101): 40.0, (0.3, 102): 41.0,      # mean 57, one lucky seed
        (1.0, 100): 95.0, (1.0, 101): math.nan, (1.0, 102): 95.0})  # one seed failed
    chosen = report.choose(grid).loc["mb-dfkd"]
    assert chosen["student_lr"] == 0.3 and chosen["val_mean_acc"] == pytest.approx(57.0)
    assert chosen["alpha"] is None and chosen["lr_edge"] == ""


def test_a_difference_counts_only_outside_the_spread_of_one_run_of_each(report):
    baseline = pd.Series([80.0, 82.0, 84.0])             # std 2
    spread = math.hypot(2.0, 2.0)
    assert report.compare(baseline + 3.0, baseline, 1) == ("holds, outside the seed spread",
                                                           pytest.approx(spread))
    assert report.compare(baseline + 2.0, baseline, 1)[0] == "within the seed spread"
    assert report.compare(baseline - 3.0, baseline, 1)[0] == "REVERSED, outside the seed spread"
    # Lower is better for the variance: a lower value by more than the spread holds.
    assert report.compare(baseline - 3.0, baseline, -1)[0] == "holds, outside the seed spread"
    assert report.compare(pd.Series([90.0]), pd.Series([80.0]), 1)[0] == "too few seeds to judge"


def curves_of(system: str, seeds: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"system": system, "seed": seed, "epoch": epoch + 1, "test_acc": acc}
                         for seed, accs in seeds.items() for epoch, acc in enumerate(accs)])


def runs_of(system: str, seeds: list[int], student_lr: float) -> pd.DataFrame:
    return pd.DataFrame([{"system": system, "seed": seed, "student_lr": student_lr,
                          "status": "completed", "epochs_run": 3, "epochs": 3}
                         for seed in seeds])


def test_the_released_update_is_checked_against_mb_dfkd_epoch_for_epoch(report):
    same = {0: [0.5, 0.7, 0.8], 1: [0.4, 0.6, 0.9]}
    trials = pd.concat([runs_of("mb-dfkd", [0, 1], 0.3), runs_of("released", [0, 1], 0.3)])
    curves = pd.concat([curves_of("mb-dfkd", same), curves_of("released", same)])
    assert report.identical_line(curves, trials).endswith(
        "holds (test accuracy identical at all 2 seeds x 3 epochs)")
    one_epoch_off = {0: [0.5, 0.7, 0.8], 1: [0.4, 0.6, 0.9000001]}
    curves = pd.concat([curves_of("mb-dfkd", same), curves_of("released", one_epoch_off)])
    assert report.identical_line(curves, trials).endswith("NO, seeds [1] differ")
    other_rate = pd.concat([runs_of("mb-dfkd", [0, 1], 0.3), runs_of("released", [0, 1], 0.1)])
    assert "not checked (student_lr 0.1 vs 0.3)" in report.identical_line(curves, other_rate)
