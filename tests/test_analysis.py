"""Reading studies back without Ray: the curves layout, ranking and the Pareto front."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lrwa.analysis import load_study, pareto_mask, rank_trials
from lrwa.config import DistillConfig
from lrwa.errors import LrwaError
from lrwa.tune.curves import curve_path, write_trial_curve, write_trials_table

SEARCHED = ("alpha", "buffer_size")


def _rows(epochs: int, offset: float = 0.0) -> list[dict]:
    return [{"epoch": epoch, "loss_acq": 1.0 / epoch, "test_acc": offset + 0.1 * epoch}
            for epoch in range(1, epochs + 1)]


def test_rewriting_a_trial_curve_replaces_its_rows(tmp_path):
    config = DistillConfig(alpha=0.3, buffer_size=128)
    write_trial_curve(tmp_path, "s", "t1", SEARCHED, config, _rows(2))
    # A resumed trial rewrites its whole history: epochs 1-2 again, plus 3.
    write_trial_curve(tmp_path, "s", "t1", SEARCHED, config, _rows(3))
    write_trial_curve(tmp_path, "s", "t2", SEARCHED, DistillConfig(alpha=0.5), _rows(1))
    write_trials_table(tmp_path, SEARCHED, [{"study": "s", "trial_id": "t1"},
                                            {"study": "s", "trial_id": "t2"}])
    # An atomic write in flight is a dot-file: readers never see it.
    (curve_path(tmp_path, "t1").parent / ".curve.parquet.abc.tmp").write_bytes(b"partial")
    trials, curves = load_study(tmp_path)
    assert list(trials["trial_id"]) == ["t1", "t2"]
    assert list(zip(curves["trial_id"], curves["epoch"])) == [("t1", 1), ("t1", 2), ("t1", 3),
                                                             ("t2", 1)]
    assert list(curves.columns[:5]) == ["study", "trial_id", "epoch", "alpha", "buffer_size"]
    assert curves.loc[0, "alpha"] == 0.3 and curves.loc[3, "buffer_size"] == 640


def test_pareto_front_and_ranking():
    values = np.array([[0.9, 0.02], [0.8, 0.01], [0.7, 0.03], [0.9, 0.01]])
    assert list(pareto_mask(values, ["max", "min"])) == [False, False, False, True]
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "status": ["completed", "stopped early",
                                                     "completed", "errored"],
        "mean_acc": [0.8, 0.95, 0.85, np.nan], "var_acc": [0.01, 0.02, 0.03, np.nan],
        "config": [json.dumps({"alpha": 0.1})] * 4})
    single = rank_trials(trials, [{"metric": "mean_acc", "direction": "max"}])
    # Completed trials first (their numbers cover the whole run), errored ones never.
    assert list(single["trial_id"]) == ["c", "a", "b"]
    double = rank_trials(trials, [{"metric": "mean_acc", "direction": "max"},
                                  {"metric": "var_acc", "direction": "min"}])
    assert dict(zip(double["trial_id"], double["pareto"])) == {"c": False, "a": True,
                                                               "b": True}


def test_load_study_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(LrwaError, match="does not exist"):
        load_study(tmp_path / "missing")
    with pytest.raises(LrwaError, match="holds no study results"):
        load_study(tmp_path)
