"""Studies end to end on a 2-CPU Ray: one truth per trial in curves/, trials.parquet and the
Optuna journal; Ray's checkpoints; budgets, interrupts and errors that resume; the lock; the
umask; the signed Ray state; strict study files.

One Ray session serves the module; trials distil from a one-epoch digits teacher with
tiny sizes, so each study costs Ray's start-up and little else.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from tiny_study import (
    ENGINE_METRICS,
    SPACE,
    assert_one_truth,
    read_journal,
    write_study_file,
)

from lrwa.config import from_mapping
from lrwa.errors import LrwaError
from lrwa.tune import load_study
from lrwa.tune.commands import add_commands, report_command, tune_command
from lrwa.tune.estimate import dry_run
from lrwa.tune.layout import CURVES_DIR, RAY_DIR, STUDY_JSON, TRIALS_FILE
from lrwa.tune.report import write_report
from lrwa.tune.resources import check_cluster, resources_per_trial, trial_bundles
from lrwa.tune.runner import run_study, summarise
from lrwa.tune.storage import open_store
from lrwa.tune.study import load_study_file, resolve_study_path, shipped_studies, studies_dir
from lrwa.tune.trainable import FaultPlan


def _journal(study_dir, name="tiny"):
    return read_journal(study_dir, name)


def _ray_state(study_dir):
    """Every file Ray keeps for the study, trial folders included, with its bytes."""
    ray_dir = study_dir / RAY_DIR
    return {path.relative_to(ray_dir).as_posix(): path.read_bytes()
            for path in ray_dir.rglob("*") if path.is_file()}


# -- whole studies ---------------------------------------------------------------------------

def test_smoke_study_end_to_end(ray_session, teacher_file, tmp_path, capsys):
    previous_umask = os.umask(0o022)
    try:
        # Probe sets drawn at both epochs; the statistics after a one-epoch warm-up.
        study = load_study_file(write_study_file(
            tmp_path, teacher_file,
            base={"probe_size": 16, "probe_epochs": "1,2", "warmup_epochs": 1}))
        outcome = run_study(study, tmp_path / "results")
        study_dir = tmp_path / "results" / "tiny"
        assert outcome.store.local_path() == study_dir and not outcome.resumed
        assert outcome.complete and outcome.statuses["completed"] == 2
        report = write_report(study_dir, plots=True)
    finally:
        os.umask(previous_umask)

    trials, curves, _ = assert_one_truth(study_dir, budget=2)
    assert trials["error"].isna().all() and (trials["epochs_run"] == 2).all()
    assert trials["version_torch"].notna().all() and trials["teacher_acc"].notna().all()
    # The paper's point is evaluated first; the searched values are columns of both tables.
    first = trials.sort_values("number").iloc[0]
    assert (first["alpha"], first["buffer_size"], first["replay_ratio"]) == (0.9, 64, 0.25)
    merged = curves.merge(trials[["trial_id", "alpha", "buffer_size"]], on="trial_id",
                          suffixes=("", "_trial"))
    assert (merged["alpha"] == merged["alpha_trial"]).all()

    # One file per trial; each carries its trial id as a string column.
    trial_id = first["trial_id"]
    schema = pq.read_schema(study_dir / CURVES_DIR / f"{trial_id}.parquet")
    assert schema.names[:9] == ["study", "trial_id", "epoch", "alpha", "buffer_size",
                                "replay_ratio", "mode", "replay", "seed"]
    assert set(ENGINE_METRICS) <= set(schema.names)
    assert schema.field("trial_id").type == pa.string()
    assert schema.field("buffer_size").type == pa.int64()
    assert all(schema.field(name).type == pa.float64() for name in ENGINE_METRICS)

    # The forgetting curves: each probe column is the engine's own, epoch for epoch (the
    # set of epoch 2 does not exist at epoch 1); the after-warm-up statistics leave out
    # epoch 1.
    checkpoints = sorted((study_dir / RAY_DIR / trial_id).glob("checkpoint_*"))
    engine = pd.read_parquet(checkpoints[-1] / "metrics.parquet")
    curve = curves[curves["trial_id"] == trial_id].reset_index(drop=True)
    for column in ("probe_agree_e1", "probe_agree_e2"):
        assert schema.field(column).type == pa.float64()
        assert curve[column].tolist() == pytest.approx(engine[column].tolist(), nan_ok=True)
    assert math.isnan(curve["probe_agree_e2"][0]) and 0 <= curve["probe_agree_e2"][1] <= 1
    for _, trial in trials.iterrows():
        accuracy = curves[curves["trial_id"] == trial["trial_id"]]["test_acc"].to_numpy()
        assert trial["var_acc"] == pytest.approx(accuracy.var())
        assert trial["var_acc_after_warmup"] == pytest.approx(accuracy[1:].var()) == 0
        assert trial["max_drop_after_warmup"] == 0

    # Ray holds each trial's checkpoints; the last one has the student and the plot.
    assert len(checkpoints) == 2
    assert {"checkpoint.pt", "student.pt", "learning_curve.png", "metrics.parquet"} <= {
        path.name for path in checkpoints[-1].iterdir()}

    # Ray's TensorBoard event files, read with TensorBoard's own reader, hold each epoch's
    # accuracy under ray/tune/<metric>, equal to the curve's.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(study_dir / RAY_DIR / trial_id))
    events.Reload()
    assert {"ray/tune/test_acc", "ray/tune/mean_acc", "ray/tune/best_acc"} <= set(
        events.Tags()["scalars"])
    logged = [event.value for event in events.Scalars("ray/tune/test_acc")]
    curve = curves[curves["trial_id"] == trial_id]["test_acc"].tolist()
    assert logged == pytest.approx(curve, abs=1e-6)

    # The report: best_config.yaml is a DistillConfig that `lrwa distill` accepts as is.
    config = from_mapping(yaml.safe_load((study_dir / "best_config.yaml").read_text()))
    assert config.teacher == str(teacher_file) and config.epochs == 2
    assert {p.rpartition("/")[2] for p in report["plots"]} >= {"top_learning_curves.png",
                                                               "alpha_replay_ratio.png"}
    assert "best trials" in capsys.readouterr().out

    # Files follow the umask: 0644 under 022, lrwa's and Ray's alike.
    modes = {path.relative_to(study_dir).as_posix(): stat.S_IMODE(path.stat().st_mode)
             for path in study_dir.rglob("*") if path.is_file()}
    assert modes and {mode for mode in modes.values()} == {0o644}, modes

    # Rerunning a finished study reports it complete and leaves Ray's state alone.
    before = _ray_state(study_dir)
    # Not vacuous: the experiment state Ray would resume from and each trial's checkpoints.
    assert "tuner.pkl" in before and any(name.startswith("experiment_state-") for name in before)
    assert {name.split("/")[0] for name in before if "/checkpoint_" in name} == set(
        trials["trial_id"])
    again = run_study(study, tmp_path / "results")
    assert not again.ran and again.complete and again.statuses["completed"] == 2
    assert "already complete" in summarise(again, study)[0]
    after = _ray_state(study_dir)
    assert [name for name in sorted(before.keys() | after.keys())
            if before.get(name) != after.get(name)] == []  # the files the rerun changed
    assert load_study(study_dir)[1].equals(curves)
    # A lost curve file is rebuilt from what Ray persisted, probe columns included.
    (study_dir / CURVES_DIR / f"{trial_id}.parquet").unlink()
    assert load_study(study_dir)[1].equals(curves)


def test_asha_stops_are_pruned_and_ranked_as_the_report_ranks(ray_session, teacher_file,
                                                              tmp_path):
    study = load_study_file(write_study_file(
        tmp_path, teacher_file, base={"epochs": 4}, budget={"trials": 4, "max_concurrent": 1},
        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2}))
    outcome = run_study(study, tmp_path / "results")
    assert outcome.complete and outcome.statuses["stopped early"] >= 1
    trials, _, journal = assert_one_truth(outcome.store.local_path(), budget=4)
    stopped = trials[trials["status"] == "stopped early"]
    assert (stopped["epochs_run"] < 4).all()
    assert {journal[t].state for t in stopped["trial_id"]} == {optuna.trial.TrialState.PRUNED}
    # optuna-dashboard's ranking (COMPLETE trials by value) is the report's.
    ranked = write_report(outcome.store.local_path(), plots=False)["ranked"]
    optuna_study = _journal(outcome.store.local_path())
    completed = sorted((t for t in optuna_study.trials
                        if t.state == optuna.trial.TrialState.COMPLETE),
                       key=lambda t: (-t.value, t.number))
    report_completed = ranked[ranked["status"] == "completed"]["trial_id"].tolist()
    assert [t.user_attrs["trial_id"] for t in completed] == report_completed
    assert optuna_study.best_trial.user_attrs["trial_id"] == ranked.iloc[0]["trial_id"]


def test_engine_errors_fail_once_and_stay_failed(ray_session, teacher_file, tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": 3}))
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "fault-once"))
    outcome = run_study(study, tmp_path / "results", faults=faults)
    assert outcome.complete and outcome.statuses["errored"] == 1
    study_dir = outcome.store.local_path()
    trials, _, journal = assert_one_truth(study_dir, budget=2)
    errored = trials[trials["status"] == "errored"].iloc[0]
    assert errored["error"].startswith("NonFiniteLoss: non-finite loss_acq at epoch 2")
    assert journal[errored["trial_id"]].user_attrs["error"] == errored["error"]
    assert errored["epochs_run"] == 1  # the failing epoch was never reported
    # Ray did not retry a deterministic failure; a rerun keeps the decision.
    assert not (study_dir / RAY_DIR / errored["trial_id"] / "error.txt").exists()
    again = run_study(study, tmp_path / "results")
    assert not again.ran and again.statuses["errored"] == 1


def test_a_study_whose_every_trial_errored_exits_non_zero(ray_session, teacher_file,
                                                          tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    outcome = run_study(study, tmp_path / "results", faults=FaultPlan(epoch=1))
    assert outcome.complete and outcome.statuses["errored"] == 2
    with pytest.raises(LrwaError, match="all 2 trials errored") as info:
        summarise(outcome, study)
    assert "\n" not in str(info.value)


def test_interrupted_study_resumes_without_duplicates(ray_session, teacher_file, tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": 4},
                                             budget={"max_concurrent": 1}))
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "interrupt-once"), action="interrupt",
                       driver_pid=os.getpid())
    outcome = run_study(study, tmp_path / "results", faults=faults)
    assert not outcome.complete and outcome.statuses["unfinished"] >= 1
    assert "interrupted" in summarise(outcome, study)[-1]
    journal = _journal(outcome.store.local_path())
    assert optuna.trial.TrialState.RUNNING in {trial.state for trial in journal.trials}

    resumed = run_study(study, tmp_path / "results")
    assert resumed.resumed and resumed.complete and resumed.statuses["completed"] == 2
    trials, _, _ = assert_one_truth(outcome.store.local_path(), budget=2)
    assert (trials["epochs_run"] == 4).all()


def test_time_budget_stops_and_a_rerun_continues(ray_session, teacher_file, tmp_path):
    # 2 trials of 20 epochs one at a time take far longer than the 4 s budget.
    path = write_study_file(tmp_path, teacher_file, base={"epochs": 20},
                            budget={"trials": 2, "max_concurrent": 1, "time_budget_s": 4})
    study = load_study_file(path)
    stopped = run_study(study, tmp_path / "results")
    assert stopped.budget_stopped and not stopped.complete
    assert "stopped by its time budget (4 s per invocation)" in summarise(stopped, study)[-1]
    journal = _journal(stopped.store.local_path())
    assert all(not trial.state.is_finished() or trial.state.name == "COMPLETE"
               for trial in journal.trials)
    # The budget belongs to each invocation: the same study without one runs to the end.
    unlimited = load_study_file(write_study_file(
        tmp_path, teacher_file, base={"epochs": 20},
        budget={"trials": 2, "max_concurrent": 1, "time_budget_s": None}))
    outcome = run_study(unlimited, tmp_path / "results")
    assert outcome.resumed and outcome.complete and outcome.statuses["completed"] == 2
    assert_one_truth(outcome.store.local_path(), budget=2)
    # Ray keeps one experiment state per invocation that ran (it restores the newest).
    states = list(outcome.store.local_path(RAY_DIR).glob("experiment_state-*.json"))
    assert len(states) == 2, states


# -- one driver, one truth, one trust boundary ----------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from lrwa.tune.lock import hold_study
    from lrwa.tune.storage import open_store
    with hold_study(open_store(sys.argv[1], "tiny")):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_driver_is_refused_naming_the_holder(teacher_file, tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "results")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LrwaError, match=rf"in use by .*pid {holder.pid}, since") as info:
            run_study(study, tmp_path / "results")
        assert time.monotonic() - started < 10 and "\n" not in str(info.value)
    finally:
        holder.kill()
        holder.wait()
    # A holder that died blocks nobody.
    with pytest.raises(LrwaError, match="does not exist"):
        run_study(load_study_file(write_study_file(
            tmp_path, teacher_file, base={"teacher": str(tmp_path / "gone.pt")})),
            tmp_path / "results")


class _Evil:
    """A pickle that runs a command when loaded, as a crafted tuner.pkl would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_ray_state_is_refused_before_ray_reads_it(ray_session, teacher_file,
                                                           tmp_path, monkeypatch):
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": 3},
                                             budget={"max_concurrent": 1}))
    faults = FaultPlan(epoch=1, marker=str(tmp_path / "interrupt-once"), action="interrupt",
                       driver_pid=os.getpid())
    outcome = run_study(study, tmp_path / "results", faults=faults)
    assert not outcome.complete
    ray_dir = outcome.store.local_path(RAY_DIR)
    marker = tmp_path / "pwned"
    original = (ray_dir / "tuner.pkl").read_bytes()

    (ray_dir / "tuner.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(LrwaError, match=r"tuner.pkl changed since this study's driver wrote"):
        run_study(study, tmp_path / "results")
    (ray_dir / "tuner.pkl").write_bytes(original)

    planted = ray_dir / "searcher-state-2099-01-01_00-00-00.pkl"
    planted.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(LrwaError, match="was not written by this study's driver"):
        run_study(study, tmp_path / "results")
    planted.unlink()

    monkeypatch.setenv("LRWA_STATE_KEY_FILE", str(tmp_path / "another.key"))
    with pytest.raises(LrwaError, match="signed with another state key"):
        run_study(study, tmp_path / "results")
    monkeypatch.undo()
    assert not marker.exists()

    resumed = run_study(study, tmp_path / "results")
    assert resumed.complete and not marker.exists()
    assert_one_truth(outcome.store.local_path(), budget=2)


# -- strict study files ------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"budget": {"trails": 3}}, "unknown key 'budget.trails'"),
    ({"base": {"alpha_typo": 0.5}}, "unknown key 'base.alpha_typo'"),
    ({"space": {"alpha": {"type": "loguniform", "low": 0.1, "high": 1, "stepp": 2}}},
     "unknown key 'space.alpha.stepp'"),
    ({"space": {}}, "space is empty"),
    ({"space": {"alpha": {"type": "uniform", "low": 1.0, "high": 0.1}}}, "inverted range"),
    ({"space": {"alpha": {"type": "uniform", "low": -0.5, "high": 1.0}}},
     "space.alpha.low: config key 'alpha' is -0.5"),
    ({"space": {"buffer_size": {"type": "int", "low": 0, "high": 64}}},
     "space.buffer_size.low: config key 'buffer_size' is 0"),
    ({"space": {"replay_ratio": {"type": "uniform", "low": 0.1, "high": 4.5}}},
     "space.replay_ratio.high: config key 'replay_ratio' is 4.5"),
    ({"space": {"not_a_key": {"type": "uniform", "low": 0, "high": 1}}},
     "not a DistillConfig key"),
    ({"space": {"buffer_size": {"type": "int", "low": 12, "high": 64}}}, "the corner"),
    ({"objective": {"metric": "accuracy", "direction": "max"}}, "objective.metric"),
    ({"objective": [{"metric": "mean_acc", "direction": "max"},
                    {"metric": "var_acc", "direction": "min"}],
      "scheduler": {"type": "asha"}}, "needs scheduler: none"),
    ({"points_to_evaluate": [{"alpha": 5.0}]}, "points_to_evaluate[0].alpha"),
    ({"resources": {"cpus": 0}}, "resources.cpus"),
    ({"budget": {"trials": 2, "time_budget_s": float("nan")}}, "budget.time_budget_s"),
])
def test_bad_study_files_fail_in_one_line(teacher_file, tmp_path, changes, message):
    data = yaml.safe_load(write_study_file(tmp_path, teacher_file).read_text())
    for key, value in changes.items():
        if key in ("base", "space") and value:
            data[key].update(value)
        else:
            data[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LrwaError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        load_study_file(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_malformed_and_duplicated_study_files(tmp_path):
    with pytest.raises(LrwaError, match="does not exist"):
        load_study_file(tmp_path / "nowhere.yaml")
    with pytest.raises(LrwaError, match="study 'nosuchstudy' not found.*quickstart"):
        load_study_file("nosuchstudy")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(LrwaError, match="not valid YAML at line"):
        load_study_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(LrwaError, match="must hold a mapping"):
        load_study_file(listing)
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: a\nbudget: {trials: 2}\nbudget: {trials: 3}\n")
    with pytest.raises(LrwaError, match="budget"):
        load_study_file(twice)


def test_shipped_studies_parse_with_their_smoke_variants():
    names = shipped_studies()
    assert {"quickstart", "mnist5k_ablation", "cifar10_resnet34_resnet18",
            "cifar100_resnet34_resnet18"} <= set(names)
    for name in names:
        study = load_study_file(name)
        smoke = study.smoke_variant()
        assert smoke.name == f"{name}-smoke" and smoke.budget.trials == 2
        assert smoke.base["epochs"] == 2 and smoke.resources.gpus == 0
        assert smoke.scheduler.type == "none"
    assert resolve_study_path("quickstart") == studies_dir() / "quickstart.yaml"
    cifar = load_study_file("cifar10_resnet34_resnet18")
    assert (cifar.base["batch_size"], cifar.base["epochs"], cifar.base["alpha"]) == (512, 400,
                                                                                      0.9)
    assert cifar.resources.gpus == 1 and load_study_file("mnist5k_ablation").multi_objective


# -- the study folder and resources ---------------------------------------------------------------

def test_changed_study_is_refused_unless_restart(ray_session, teacher_file, tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    run_study(study, tmp_path / "results")
    changed = load_study_file(write_study_file(tmp_path, teacher_file, budget={"trials": 3}))
    with pytest.raises(LrwaError, match="different study .* pass --restart"):
        run_study(changed, tmp_path / "results")
    lines = []
    outcome = run_study(changed, tmp_path / "results", restart=True, out=lines.append)
    assert outcome.complete and outcome.statuses["completed"] == 3
    moved = [path for path in (tmp_path / "results").iterdir() if ".old-" in path.name]
    assert len(moved) == 1 and (moved[0] / TRIALS_FILE).is_file()
    assert any("moved the previous study folder aside" in line for line in lines)


def test_unwritable_storage_fails_in_one_line(teacher_file, tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LrwaError, match=r"cannot write .*a-file/results/tiny"):
        run_study(study, blocker / "results")
    with pytest.raises(LrwaError, match="'ftp://host/results': unsupported scheme"):
        run_study(study, "ftp://host/results")
    foreign = tmp_path / "foreign"
    (foreign / "tiny").mkdir(parents=True)
    (foreign / "tiny" / "notes.txt").write_text("mine")
    with pytest.raises(LrwaError, match="is not an lrwa study folder"):
        run_study(study, foreign)
    assert (foreign / "tiny" / "notes.txt").read_text() == "mine"


def test_impossible_resources_fail_before_any_trial(ray_session, teacher_file, tmp_path):
    gpu_study = load_study_file(write_study_file(tmp_path, teacher_file, resources={"gpus": 1}))
    with pytest.raises(LrwaError, match=r"needs 1 GPU per trial .* has 0"):
        run_study(gpu_study, tmp_path / "results")
    cpu_study = load_study_file(write_study_file(tmp_path, teacher_file, name="big",
                                                 resources={"cpus": 3}))
    with pytest.raises(LrwaError, match=r"needs 3 CPU per trial .* has 2"):
        check_cluster(cpu_study, ray.cluster_resources())


def test_data_parallel_trials_hold_a_sliver_and_fit_the_machine(teacher_file, tmp_path):
    linear = {"buffer_size": {"type": "int", "low": 32, "high": 128}}
    study = load_study_file(write_study_file(tmp_path, teacher_file, space={**SPACE, **linear},
                                             resources={"cpus": 1, "workers": 2}))
    # Ray Train places its workers in a placement group of its own: the trial holds only
    # the driver's sliver, and trial + workers fit on exactly 2 CPUs.
    assert trial_bundles(study) == [{"CPU": 0.001}]
    assert resources_per_trial(study)["CPU"] <= 2.0
    assert check_cluster(study, {"CPU": 2.0}) == 1
    with pytest.raises(LrwaError, match="needs"):
        check_cluster(study, {"CPU": 1.0})
    assert study.space["buffer_size"].step == 2
    with pytest.raises(LrwaError, match="cannot step a log scale"):
        load_study_file(write_study_file(tmp_path, teacher_file, resources={"workers": 2}))
    with pytest.raises(LrwaError, match="base.batch_size: 32 must split evenly"):
        load_study_file(write_study_file(tmp_path, teacher_file, space={**SPACE, **linear},
                                         resources={"workers": 3}))


def test_data_parallel_trial_runs_ray_train_inside_tune(ray_session, teacher_file, tmp_path):
    linear = {"buffer_size": {"type": "int", "low": 32, "high": 128}}
    study = load_study_file(write_study_file(tmp_path, teacher_file, space={**SPACE, **linear},
                                             budget={"trials": 1, "max_concurrent": 1},
                                             resources={"cpus": 1, "workers": 2}))
    outcome = run_study(study, tmp_path / "results")
    assert outcome.statuses["completed"] == 1
    trials, curves = load_study(outcome.store.local_path())
    assert list(curves["epoch"]) == [1, 2]
    trial_folder = outcome.store.local_path(f"{RAY_DIR}/{trials.loc[0, 'trial_id']}")
    checkpoint = sorted(trial_folder.glob("checkpoint_*"))
    assert {"ray_run.json", "student.pt"} <= {path.name for path in checkpoint[-1].iterdir()}
    # Ray Train's own checkpoints live in the study's storage, not on the trial's node.
    assert list(outcome.store.local_path(f"train/{trials.loc[0, 'trial_id']}").rglob("*.pt"))


# -- the commands ------------------------------------------------------------------------------

def test_dry_run_measures_without_training_a_teacher(teacher_file, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("LRWA_CACHE_DIR", str(tmp_path / "empty-cache"))
    parser = argparse.ArgumentParser(prog="lrwa")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tune", "quickstart", "--dry-run", "--storage", str(tmp_path)])
    assert args.func is tune_command and args.smoke is False
    args.func(args)
    out = capsys.readouterr().out
    assert "measured here on cpu" in out and "not cached yet: training it first" in out
    assert not (tmp_path / "empty-cache").exists()  # no teacher trained, none cached
    assert not (tmp_path / "quickstart").exists()  # a dry run creates nothing
    path = write_study_file(tmp_path, teacher_file)
    estimate = dry_run(load_study_file(path).smoke_variant(), tmp_path, out=lambda line: None,
                       measure=False)
    assert estimate["trials"] == 2
    report = parser.parse_args(["report", str(tmp_path / "missing")])
    assert report.func is report_command
    with pytest.raises(LrwaError, match="does not exist"):
        report.func(report)
    assert not (tmp_path / STUDY_JSON).exists()


def test_report_rebuilds_damaged_views_and_refuses_what_is_not_a_study(ray_session,
                                                                      teacher_file, tmp_path):
    """trials.parquet and curves/ are views: a damaged table is rebuilt from the journal and
    the curves (one notice), and a stray damaged file in curves/ is no trial's curve."""
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    outcome = run_study(study, tmp_path / "results")
    study_dir = outcome.store.local_path()
    trials, curves = load_study(study_dir)
    trials_file = study_dir / TRIALS_FILE
    good = trials_file.read_bytes()
    trials_file.write_bytes(good[: len(good) // 2])
    notes = []
    write_report(study_dir, plots=False, out=notes.append)
    assert f"rebuilt {TRIALS_FILE} of {study_dir}" in notes
    healed, _ = load_study(study_dir)
    assert healed.drop(columns="config").equals(trials.drop(columns="config"))
    (study_dir / CURVES_DIR / "garbage.parquet").write_bytes(b"not parquet at all")
    assert load_study(study_dir)[1].equals(curves)
    with pytest.raises(LrwaError, match="not an lrwa study"):
        load_study(tmp_path)
    assert open_store(tmp_path / "results", "tiny").exists(STUDY_JSON)


def test_pareto_front_and_ranking():
    from lrwa.tune.report import pareto_mask, rank_trials

    values = np.array([[0.9, 0.02], [0.8, 0.01], [0.7, 0.03], [0.9, 0.01]])
    assert list(pareto_mask(values, ["max", "min"])) == [False, False, False, True]
    trials = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d"], "number": [0, 1, 2, 3],
        "status": ["completed", "stopped early", "completed", "errored"],
        "mean_acc": [0.8, 0.95, 0.85, np.nan], "var_acc": [0.01, 0.02, 0.03, np.nan],
        "config": [json.dumps({"alpha": 0.1})] * 4})
    single = rank_trials(trials, [{"metric": "mean_acc", "direction": "max"}])
    # Completed trials first (their numbers cover the whole run), errored ones never.
    assert list(single["trial_id"]) == ["c", "a", "b"]
    double = rank_trials(trials, [{"metric": "mean_acc", "direction": "max"},
                                  {"metric": "var_acc", "direction": "min"}])
    # The front is drawn among whole runs only.
    assert dict(zip(double["trial_id"], double["pareto"])) == {"c": True, "a": True,
                                                               "b": False}


def test_a_replayed_report_replaces_rows_from_its_epoch_on():
    from lrwa.tune.results import replace_from

    rows = [{"epoch": 1, "test_acc": 0.1}, {"epoch": 2, "test_acc": 0.2},
            {"epoch": 3, "test_acc": 0.3}]
    assert replace_from(rows, {"epoch": 2, "test_acc": 0.25}) == [
        {"epoch": 1, "test_acc": 0.1}, {"epoch": 2, "test_acc": 0.25}]
    assert replace_from(rows, {"epoch": 4, "test_acc": 0.4})[-1] == {"epoch": 4, "test_acc": 0.4}
    assert replace_from([], {"epoch": 1, "test_acc": 0.5}) == [{"epoch": 1, "test_acc": 0.5}]


def test_mlflow_logs_every_trial_through_rays_logger(ray_session, teacher_file, tmp_path):
    import mlflow  # the test extra installs mlflow-skinny: missing, this fails, not skips

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    study = load_study_file(write_study_file(
        tmp_path, teacher_file, loggers={"mlflow": {"tracking_uri": tracking,
                                                    "experiment": "lrwa-tiny"}}))
    outcome = run_study(study, tmp_path / "results")
    assert outcome.complete
    _, curves = load_study(outcome.store.local_path())
    client = mlflow.tracking.MlflowClient(tracking)
    experiment = client.get_experiment_by_name("lrwa-tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        trial_id = run.data.tags["trial_name"]
        history = client.get_metric_history(run.info.run_id, "test_acc")
        curve = curves[curves["trial_id"] == trial_id]["test_acc"].tolist()
        assert [metric.value for metric in history] == pytest.approx(curve)
        assert float(run.data.params["alpha"]) in set(curves["alpha"])


def test_checkpoints_every_n_epochs_and_always_the_last(ray_session, teacher_file, tmp_path):
    study = load_study_file(write_study_file(
        tmp_path, teacher_file, base={"epochs": 5}, budget={"trials": 1, "max_concurrent": 1},
        resources={"checkpoint_every": 2}))
    outcome = run_study(study, tmp_path / "results")
    assert outcome.complete and outcome.statuses["completed"] == 1
    trials, curves, _ = assert_one_truth(outcome.store.local_path(), budget=1)
    assert list(curves["epoch"]) == [1, 2, 3, 4, 5]
    folder = outcome.store.local_path(f"{RAY_DIR}/{trials.loc[0, 'trial_id']}")
    # Ray keeps the newest two: epoch 4 (every 2nd) and epoch 5 (the last).
    kept = [pq.read_table(path / "metrics.parquet").column("epoch").to_pylist()[-1]
            for path in sorted(folder.glob("checkpoint_*"))]
    assert kept == [4, 5]
