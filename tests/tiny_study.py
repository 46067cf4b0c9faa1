"""A tiny study file shared by the study tests: two trials of tiny epochs on a digits
teacher, so a whole study costs Ray's start-up and little else."""

from __future__ import annotations

import yaml

TINY_BASE = {"student": "lenet5-half", "mode": "meta", "replay": "memory", "epochs": 2,
             "iters_per_epoch": 2, "student_steps": 2, "batch_size": 32, "generator_width": 8,
             "latent_dim": 16, "buffer_size": 64, "replay_ratio": 0.25, "insert_every": 1,
             "device": "cpu"}
SPACE = {"alpha": {"type": "loguniform", "low": 0.1, "high": 1.0},
         "buffer_size": {"type": "int", "low": 32, "high": 128, "log": True},
         "replay_ratio": {"type": "uniform", "low": 0.1, "high": 0.5}}
ENGINE_METRICS = ["loss_gen", "loss_acq", "loss_ret", "grad_cos", "buffer_fill",
                  "samples_per_s", "train_s", "lr", "test_acc", "wall_s"]


def tiny_study_data(name="tiny", base=None):
    """The tiny study's mapping: two trials of the tiny base over SPACE, the paper's point
    first."""
    import copy

    return {"name": name, "base": dict(base or TINY_BASE), "space": copy.deepcopy(SPACE),
            "objective": {"metric": "mean_acc", "direction": "max"},
            "budget": {"trials": 2, "max_concurrent": 2},
            "resources": {"cpus": 1, "gpus": 0, "workers": 1},
            "sampler": {"type": "tpe", "n_startup_trials": 1},
            "points_to_evaluate": [{"alpha": 0.9, "buffer_size": 64, "replay_ratio": 0.25}],
            "seed": 3}


def write_study_file(folder, teacher, name="tiny", **changes):
    data = tiny_study_data(name, {**TINY_BASE, "teacher": str(teacher)})
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_tiny_teacher(folder):
    from lrwa.teacher import save_teacher, train_teacher

    path = folder / "digits-lenet5.pt"
    save_teacher(train_teacher("digits", "lenet5", epochs=1, progress=False), path)
    return path


def read_journal(location, name="tiny"):
    """The study's Optuna journal as an optuna.Study, read from its store (a folder or
    s3://...) through a private copy, so reading never touches the driver's file."""
    import tempfile

    import optuna

    from lrwa.tune.journal import stored_journal
    from lrwa.tune.layout import OPTUNA_FILE
    from lrwa.tune.storage import open_study_location

    data = stored_journal(open_study_location(str(location)))
    assert data is not None, f"{location} holds no {OPTUNA_FILE}"
    with tempfile.NamedTemporaryFile(suffix=".journal", delete=False) as copy:
        copy.write(data)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(copy.name))
    return optuna.load_study(study_name=name, storage=storage)


def assert_one_truth(location, name="tiny", budget=None, epochs=None):
    """trials.parquet, curves/ and the journal agree trial for trial and no (trial, epoch)
    row exists twice; with `epochs`, every trial completed that many epochs. Works for a
    folder and for s3://... alike. Returns (trials, curves, journal trials by trial id)."""
    import pandas as pd
    import pytest

    from lrwa.tune import load_study
    from lrwa.tune.layout import RAY_DIR

    trials, curves = load_study(str(location))
    journal = {trial.user_attrs["trial_id"]: trial
               for trial in read_journal(location, name).trials}
    states = {"COMPLETE": "completed", "PRUNED": "stopped early", "FAIL": "errored"}
    assert set(journal) == set(trials["trial_id"])
    assert len(trials) == len(set(trials["trial_id"]))
    if budget is not None:
        assert len(journal) == budget
    if curves.empty:  # no trial reported an epoch
        curves = pd.DataFrame({"trial_id": [], "epoch": [], "test_acc": []})
    assert not curves.duplicated(["trial_id", "epoch"]).any()
    assert set(curves["trial_id"]) <= set(trials["trial_id"])  # no curve without a row
    for row in trials.itertuples():
        trial = journal[row.trial_id]
        assert states.get(trial.state.name) == row.status, (row.trial_id, trial.state)
        own = curves[curves["trial_id"] == row.trial_id]
        assert list(own["epoch"]) == list(range(1, row.epochs_run + 1)), row.trial_id
        # The curve lives in curves/ only; the journal keeps no per-epoch copy of it.
        assert trial.intermediate_values == {}
        if row.status == "completed":
            assert trial.value == pytest.approx(row.mean_acc)
        # An ended trial names the checkpoint folder of its last epoch (its run folder).
        run_dir = trial.user_attrs["run_dir"]
        assert run_dir == f"{RAY_DIR}/{row.trial_id}" or run_dir.startswith(
            f"{RAY_DIR}/{row.trial_id}/checkpoint_"), run_dir
        if epochs is not None:
            assert (row.status, row.epochs_run) == ("completed", epochs), row.trial_id
    return trials, curves, journal
