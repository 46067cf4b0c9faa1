"""The report says only what its trials can carry: parameter importances need enough
completed trials with two or more varied parameters and differing objectives; means are
over completed trials only; stopped-early trials stay off the completed trials' scale."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from lrwa.tune.layout import COMPLETED, OPTUNA_FILE, STOPPED_EARLY
from lrwa.tune.report import (
    MIN_IMPORTANCE_TRIALS,
    chance_level,
    parameter_importances,
    plot_curves_by_mode,
)
from lrwa.tune.storage import open_study_location

DISTRIBUTIONS = {"alpha": FloatDistribution(0.05, 2.0, log=True),
                 "replay_ratio": FloatDistribution(0.05, 0.5),
                 "replay": CategoricalDistribution(["memory", "generative"])}


def journal_study(folder, rows):
    """A study folder whose Optuna journal holds one COMPLETE trial per (params, value)."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(folder / OPTUNA_FILE)))
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    for params, value in rows:
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={name: DISTRIBUTIONS[name] for name in params},
            value=value))
    return open_study_location(str(folder))


def varied_rows(count):
    return [({"alpha": 0.05 + 0.1 * index, "replay_ratio": 0.5 - 0.02 * index,
              "replay": "memory"}, 0.5 + 0.03 * index * (index % 3)) for index in range(count)]


def test_too_few_completed_trials_give_no_importances(tmp_path):
    store = journal_study(tmp_path / "s", varied_rows(2))
    importances, note = parameter_importances(store, multi_objective=False)
    assert importances is None
    assert note == (f"no parameter importances: they need at least {MIN_IMPORTANCE_TRIALS} "
                    "completed trials, the study has 2")


def test_one_varied_parameter_gives_no_importances(tmp_path):
    # The smoke study's case: alpha and replay the same in every trial.
    rows = [({"alpha": 0.9, "replay_ratio": 0.1 + 0.01 * index, "replay": "memory"},
             0.4 + 0.01 * index) for index in range(MIN_IMPORTANCE_TRIALS)]
    importances, note = parameter_importances(journal_study(tmp_path / "s", rows), False)
    assert importances is None
    assert note.startswith("no parameter importances: only replay_ratio varied among the "
                           f"{MIN_IMPORTANCE_TRIALS} completed trials")


def test_equal_objectives_give_no_importances(tmp_path):
    rows = [(params, 0.7) for params, _ in varied_rows(MIN_IMPORTANCE_TRIALS)]
    importances, note = parameter_importances(journal_study(tmp_path / "s", rows), False)
    assert importances is None
    assert note == (f"no parameter importances: all {MIN_IMPORTANCE_TRIALS} completed trials "
                    "have the same objective")


def test_enough_varied_trials_give_importances_of_the_varied_only(tmp_path):
    store = journal_study(tmp_path / "s", varied_rows(MIN_IMPORTANCE_TRIALS))
    importances, note = parameter_importances(store, multi_objective=False)
    assert set(importances) == {"alpha", "replay_ratio"}  # replay took one value
    assert math.isclose(sum(importances.values()), 1.0)
    assert note == (f"over {MIN_IMPORTANCE_TRIALS} completed trials, 2 varied parameters; "
                    "not varied: replay")


def test_mode_means_cover_completed_trials_only(tmp_path, monkeypatch):
    store = open_study_location(str(tmp_path / "s"))
    # Two completed trials of 4 epochs and one stopped after 2 at a much higher accuracy:
    # a per-epoch mean over survivors would jump at epoch 3; the mean of the completed does not.
    curves = pd.DataFrame(
        [{"trial_id": trial, "epoch": epoch, "mode": "meta", "replay": "memory",
          "test_acc": acc} for trial, accs in (("a", [0.2, 0.3, 0.4, 0.5]),
                                               ("b", [0.4, 0.5, 0.6, 0.7]),
                                               ("c", [0.9, 0.9]))
         for epoch, acc in enumerate(accs, start=1)])
    trials = pd.DataFrame({"trial_id": ["a", "b", "c"],
                           "status": [COMPLETED, COMPLETED, STOPPED_EARLY]})
    import matplotlib.pyplot as plt

    captured = {}  # the figure the report saves, kept open to read its lines
    monkeypatch.setattr(plt, "close", lambda figure: captured.setdefault("figure", figure))
    assert plot_curves_by_mode(store, curves, trials, chance=10.0)
    monkeypatch.undo()
    [axis] = captured["figure"].axes
    [mean] = [line for line in axis.get_lines() if line.get_linewidth() == 2.5]
    assert list(mean.get_ydata()) == pytest.approx([30.0, 40.0, 50.0, 60.0])
    assert mean.get_label() == ("meta / memory: mean of 2 completed trials; 1 stopped early "
                                "or unfinished (dashed), not averaged")
    assert axis.get_ylim()[0] <= 10.0  # from chance, which is drawn
    assert (tmp_path / "s" / "report" / "learning_curves_by_mode.png").is_file()


def test_chance_level_of_the_embedded_teacher_and_of_an_unknown_one(tmp_path):
    assert chance_level({"teacher": None, "dataset": None}) == pytest.approx(10.0)
    assert chance_level({"teacher": str(tmp_path / "missing.pt"), "dataset": None}) is None
