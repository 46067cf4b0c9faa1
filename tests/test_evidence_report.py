"""The verdicts of benchmarks/learning_evolution.py, on small tables with known answers.

BENCHMARKS.md states its verdicts as computed by that script, so the rules it computes
them by are tested here: a pair's paired comparison and its reading for metrics where
lower is better, the retention and forgetting of a probe curve, the choice of the tuned
alpha, and the README block that repeats the verdicts. The studies themselves take an
hour and more and are not run here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "learning_evolution.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("learning_evolution_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def runs_for(report, meta_minus_joint: list[float], drop_difference: float = 0.0):
    """Final-study runs of every pair over len(meta_minus_joint) seeds: the meta runs'
    mean accuracy is the joint's plus the given per-seed differences."""
    rows = []
    for seed, difference in enumerate(meta_minus_joint):
        joint_acc = 50.0 + 3 * seed  # seeds differ a lot; the pairing removes it
        baselines = {baseline for _, baseline, _ in report.pairs()}
        variants = {variant for _, _, variant in report.pairs()}
        for name in sorted(baselines | variants):
            shift, drop = (0.0, 5.0) if name in baselines else (difference,
                                                                5.0 + drop_difference)
            rows.append({"variant": name, "seed": seed, "alpha": 0.9,
                         "mean_acc": joint_acc + shift, "late_mean_acc": joint_acc,
                         "final_acc": joint_acc, "var_acc_after_warmup": 4.0,
                         "max_drop_after_warmup": drop, "retention": math.nan,
                         "forgetting": 2.0 + seed})
    return pd.DataFrame(rows)


def test_a_consistent_gain_wins_and_a_mixed_one_does_not(report):
    # +1 point at every seed but noise: the interval excludes 0, 10/10 seeds, p = 2/1024.
    gains = [1.0 + 0.1 * ((-1) ** seed) for seed in range(10)]
    table, differences = report.compare_pairs(runs_for(report, gains))
    first = report.pairs()[0][0]
    mean = table[(table["pair"] == first) & (table["metric"].str.startswith("mean accuracy "
                                                                               "over"))].iloc[0]
    assert mean["n"] == 10 and mean["mean"] == pytest.approx(np.mean(gains))
    assert mean["sign_flip_p"] == pytest.approx(2 / 1024) and mean["higher"] == 10
    assert mean["ci_low"] > 0 and mean["verdict"] == "meta better"
    # The seeds' own spread (3 points a seed) is paired away: the detectable effect is small.
    assert mean["detectable"] < 0.5
    assert len(differences) == 10 * len(report.METRICS) * 8 - 10 * 8  # retention is NaN
    # Signs that cancel: nothing detected, whatever the size.
    table, _ = report.compare_pairs(runs_for(report, [3.0, -3.0] * 5))
    mean = table[(table["pair"] == first) & (table["metric"].str.startswith("mean accuracy "
                                                                               "over"))].iloc[0]
    assert mean["verdict"] == "no difference detected" and mean["sign_flip_p"] == 1.0


def test_lower_is_better_for_drops_and_forgetting(report):
    # The meta runs drop 1 point more at every seed: higher, hence worse.
    table, _ = report.compare_pairs(runs_for(report, [0.0] * 10, drop_difference=1.0))
    first = report.pairs()[0][0]
    drop = table[(table["pair"] == first)
                 & table["metric"].str.startswith("largest drop")].iloc[0]
    assert drop["mean"] == pytest.approx(1.0) and drop["verdict"] == "joint better"
    assert report.verdict_text("meta higher", -1) == "joint better"
    assert report.verdict_text("joint higher", -1) == "meta better"
    assert report.verdict_text("no difference detected", -1) == "no difference detected"
    # A metric without values (no probe sets) is not judged.
    retention = table[(table["pair"] == first) & table["metric"].str.startswith("probe "
                                                                                  "agreement")]
    assert retention.iloc[0]["verdict"] == "too few seeds to judge"


def test_a_run_statistics_row_from_its_trial_and_curve(report):
    trials = pd.DataFrame([{
        "trial_id": "t", "variant": "v", "seed": 0, "alpha": 0.9, "status": "completed",
        "epochs_run": 4, "epochs": 4, "warmup": 2, "mean_acc": 0.5, "final_acc": 0.6,
        "var_acc_after_warmup": 0.0025, "max_drop_after_warmup": 0.1, "wall_s": 1.0}])
    curves = pd.DataFrame({
        "trial_id": ["t"] * 4, "epoch": [1, 2, 3, 4], "test_acc": [0.2, 0.4, 0.7, 0.6],
        "probe_agree_e1": [0.5, 0.9, 0.8, 0.6], "probe_agree_e3": [math.nan, math.nan, 0.7,
                                                                   0.7]})
    row = report.run_statistics(trials, curves).iloc[0]
    assert row["late_mean_acc"] == pytest.approx(65.0)  # epochs 3 and 4
    assert row["var_acc_after_warmup"] == pytest.approx(25.0)  # %²
    assert row["retention"] == pytest.approx(65.0)  # mean of 60 and 70
    assert row["forgetting"] == pytest.approx(15.0)  # (90 - 60 + 70 - 70) / 2
    # An unfinished trial is no run.
    assert report.run_statistics(trials.assign(epochs_run=3), curves).empty


def test_the_tuned_alpha_is_the_best_mean_and_an_edge_is_named(report):
    trials = pd.DataFrame([{"variant": f"memory.separate.meta.alpha-{a}", "alpha": a,
                            "seed": seed, "mean_acc": score + (seed - 100) / 100,
                            "status": "completed", "epochs_run": 2, "epochs": 2}
                           for a, score in ((0.03, 0.40), (0.1, 0.50), (0.9, 0.45))
                           for seed in (100, 101)])
    grid = report.tuning_choice(trials)
    assert grid[grid["chosen"]]["alpha"].tolist() == [0.1]
    table = "\n".join(report.tuning_table(grid))
    assert "**50.50**" in table and "| 0.1 |" in table
    at_edge = trials.assign(mean_acc=trials["mean_acc"].where(trials["alpha"] != 0.9, 0.9))
    assert "0.9 (highest tried)" in "\n".join(report.tuning_table(report.tuning_choice(at_edge)))


def test_headings_name_seeds_as_plain_integers(report):
    # Parquet gives int64 seeds; a sorted list of them printed "[np.int64(100), ...]".
    trials = pd.DataFrame({"seed": np.array([101, 100, 101], dtype=np.int64)})
    assert report.seed_list(trials) == "100, 101"
    text = (ROOT / "benchmarks" / "BENCHMARKS.md").read_text()
    assert "np.int64" not in text and "seeds 100, 101" in text


def test_the_readme_block_is_replaced_and_a_missing_one_refused(report):
    text = f"intro\n{report.README_START}\nold line\n{report.README_END}\nrest\n"
    replaced = report.readme_with(text, ["- new verdict."])
    assert replaced == f"intro\n{report.README_START}\n- new verdict.\n{report.README_END}\nrest\n"
    with pytest.raises(ValueError, match="no <!-- evidence verdicts"):
        report.readme_with("no markers here", ["- x"])


def test_the_readme_repeats_the_benchmarks_verdicts_word_for_word(report):
    benchmarks = (ROOT / "benchmarks" / "BENCHMARKS.md").read_text()
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(report.README_START), readme.index(report.README_END)
    block = readme[start + len(report.README_START):end].strip().splitlines()
    assert block and all(line.startswith("- ") for line in block)
    verdicts = benchmarks.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
    assert all(line in verdicts.splitlines() for line in block)
    assert len(block) == len([line for line in verdicts.splitlines() if line.startswith("- ")])
