"""Studies end to end on a 2-CPU Ray: Parquet curves, the trial table, Optuna's journal,
resumption without duplicate or missing rows, isolated errors, strict study files.

One Ray session serves the module; trials distil from a one-epoch digits teacher with
tiny sizes, so each study costs Ray's start-up and little else.
"""

from __future__ import annotations

import argparse
import os

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import yaml
from tiny_study import ENGINE_METRICS, SPACE, write_tiny_teacher
from tiny_study import write_study_file as _study_file

from lrwa.analysis import load_study, write_report
from lrwa.config import from_mapping, load_yaml
from lrwa.errors import LrwaError
from lrwa.tune.commands import add_commands, report_command, tune_command
from lrwa.tune.curves import CURVES_DIR, OPTUNA_FILE, TRIALS_FILE, curve_path
from lrwa.tune.estimate import dry_run
from lrwa.tune.resources import check_cluster, resources_per_trial, trial_bundles
from lrwa.tune.runner import prepare_study_dir, run_study
from lrwa.tune.study import STUDIES_DIR, load_study_file, resolve_study_path
from lrwa.tune.trainable import FaultPlan


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def _curve_epochs(study_dir):
    curves = load_study(study_dir)[1]
    return curves, curves.groupby("trial_id")["epoch"].apply(list).to_dict()


# -- whole studies ---------------------------------------------------------------------------

def test_smoke_study_end_to_end(ray_session, teacher_file, tmp_path, capsys):
    study = load_study_file(_study_file(tmp_path, teacher_file))
    outcome = run_study(study, tmp_path / "results")
    study_dir = tmp_path / "results" / "tiny"
    assert outcome.study_dir == study_dir and not outcome.resumed
    assert outcome.statuses["completed"] == 2 and not outcome.interrupted

    trials, curves = load_study(study_dir)
    assert sorted(trials["status"]) == ["completed", "completed"]
    assert trials["error"].isna().all() and (trials["epochs_run"] == 2).all()
    assert trials["version_torch"].notna().all()
    # The paper's point is evaluated first; the searched values are columns of both tables.
    first = trials.iloc[0]
    assert (first["alpha"], first["buffer_size"], first["replay_ratio"]) == (0.9, 64, 0.25)
    assert len(curves) == 4 and not curves.duplicated(["trial_id", "epoch"]).any()
    merged = curves.merge(trials[["trial_id", "alpha", "buffer_size"]], on="trial_id",
                          suffixes=("", "_trial"))
    assert (merged["alpha"] == merged["alpha_trial"]).all()
    assert (merged["buffer_size"] == merged["buffer_size_trial"]).all()

    # The curve schema: fixed columns and types, hive partition by trial id.
    trial_id = first["trial_id"]
    schema = pq.read_schema(curve_path(study_dir, trial_id))
    assert schema.names[:9] == ["study", "epoch", "alpha", "buffer_size", "replay_ratio",
                                "mode", "replay", "seed", "loss_gen"]
    assert set(ENGINE_METRICS) <= set(schema.names)
    assert schema.field("epoch").type == pa.int64()
    assert schema.field("buffer_size").type == pa.int64()
    assert schema.field("alpha").type == pa.float64()
    assert schema.field("mode").type == pa.string()
    assert all(schema.field(name).type == pa.float64() for name in ENGINE_METRICS)
    assert curve_path(study_dir, trial_id).parent.name == f"trial_id={trial_id}"

    # The Optuna study opens from its journal file, one trial per Tune trial.
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(study_dir / OPTUNA_FILE)))
    optuna_study = optuna.load_study(study_name="tiny", storage=journal)
    assert [t.state for t in optuna_study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert optuna_study.trials[0].params == {"alpha": 0.9, "buffer_size": 64,
                                             "replay_ratio": 0.25}

    # The report: best_config.yaml is a DistillConfig that `lrwa distill` accepts as is.
    report = write_report(study_dir, plots=True)
    config = from_mapping(load_yaml(study_dir / "best_config.yaml"))
    assert config.teacher == str(teacher_file) and config.epochs == 2
    assert {path.name for path in report["plots"]} >= {"top_learning_curves.png",
                                                       "alpha_replay_ratio.png"}
    assert "best trials" in capsys.readouterr().out

    # Rerunning a finished study resumes it and changes nothing.
    again = run_study(study, tmp_path / "results")
    assert again.resumed and again.statuses["completed"] == 2
    assert load_study(study_dir)[1].equals(curves)


def test_errored_trial_is_isolated_and_resumed(ray_session, teacher_file, tmp_path):
    study = load_study_file(_study_file(tmp_path, teacher_file, base={"epochs": 3}))
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "fault-once"))
    outcome = run_study(study, tmp_path / "results", faults=faults)
    assert outcome.statuses["errored"] == 1 and outcome.statuses["completed"] == 1

    study_dir = outcome.study_dir
    trials = pd.read_parquet(study_dir / TRIALS_FILE)
    errored = trials[trials["status"] == "errored"].iloc[0]
    assert errored["error"].startswith("NonFiniteLoss: non-finite loss_acq at epoch 2")
    assert trials[trials["status"] == "completed"]["error"].isna().all()
    _, epochs = _curve_epochs(study_dir)
    assert epochs[errored["trial_id"]] == [1, 2]  # written before the failure, kept

    resumed = run_study(study, tmp_path / "results")
    assert resumed.resumed and resumed.statuses["completed"] == 2
    _, epochs = _curve_epochs(study_dir)
    assert epochs == {trial_id: [1, 2, 3] for trial_id in trials["trial_id"]}
    trials = pd.read_parquet(study_dir / TRIALS_FILE)
    assert trials["error"].isna().all() and (trials["epochs_run"] == 3).all()


def test_interrupted_study_resumes_without_duplicates(ray_session, teacher_file, tmp_path):
    study = load_study_file(_study_file(tmp_path, teacher_file, base={"epochs": 4},
                                        budget={"max_concurrent": 1}))
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "interrupt-once"), action="interrupt",
                       driver_pid=os.getpid())
    outcome = run_study(study, tmp_path / "results", faults=faults)
    assert outcome.interrupted and outcome.statuses["completed"] < 2

    resumed = run_study(study, tmp_path / "results")
    assert resumed.resumed and resumed.statuses["completed"] == 2
    curves, epochs = _curve_epochs(outcome.study_dir)
    assert len(epochs) == 2 and all(found == [1, 2, 3, 4] for found in epochs.values())
    assert not curves.duplicated(["trial_id", "epoch"]).any()


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
    ({"space": {"replay_ratio": {"type": "uniform", "low": 0.0, "high": 0.5}}},
     "space.replay_ratio.low: config key 'replay_ratio' is 0"),
    ({"space": {"not_a_key": {"type": "uniform", "low": 0, "high": 1}}},
     "not a DistillConfig key"),
    ({"space": {"buffer_size": {"type": "int", "low": 12, "high": 64}}}, "the corner"),
    ({"objective": {"metric": "accuracy", "direction": "max"}}, "objective.metric"),
    ({"objective": [{"metric": "mean_acc", "direction": "max"},
                    {"metric": "var_acc", "direction": "min"}],
      "scheduler": {"type": "asha"}}, "needs scheduler: none"),
    ({"points_to_evaluate": [{"alpha": 5.0}]}, "points_to_evaluate[0].alpha"),
    ({"resources": {"cpus": 0}}, "resources.cpus"),
])
def test_bad_study_files_fail_in_one_line(teacher_file, tmp_path, changes, message):
    data = yaml.safe_load(_study_file(tmp_path, teacher_file).read_text())
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


def test_missing_and_malformed_study_files(tmp_path):
    with pytest.raises(LrwaError, match="does not exist"):
        load_study_file(tmp_path / "nowhere.yaml")
    with pytest.raises(LrwaError, match="study 'nosuchstudy' not found"):
        load_study_file("nosuchstudy")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(LrwaError, match="not valid YAML at line"):
        load_study_file(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(LrwaError, match="must hold a mapping"):
        load_study_file(listing)


def test_shipped_studies_parse_with_their_smoke_variants():
    names = sorted(path.stem for path in STUDIES_DIR.glob("*.yaml"))
    assert {"quickstart", "mnist5k_ablation", "cifar10_resnet34_resnet18",
            "cifar100_resnet34_resnet18"} <= set(names)
    for name in names:
        study = load_study_file(name)
        smoke = study.smoke_variant()
        assert smoke.name == f"{name}-smoke" and smoke.trials == 2
        assert smoke.base["epochs"] == 2 and smoke.gpus == 0 and smoke.scheduler == "none"
    assert resolve_study_path("quickstart") == STUDIES_DIR / "quickstart.yaml"
    cifar = load_study_file("cifar10_resnet34_resnet18")
    assert (cifar.base["batch_size"], cifar.base["epochs"], cifar.base["alpha"]) == (512, 400,
                                                                                      0.9)
    assert cifar.gpus == 1 and load_study_file("mnist5k_ablation").multi_objective


# -- the study folder, storage and resources -----------------------------------------------------

def test_changed_study_is_refused_unless_restart(teacher_file, tmp_path):
    study = load_study_file(_study_file(tmp_path, teacher_file))
    study_dir = prepare_study_dir(study, tmp_path / "results", out=lambda line: None)
    (study_dir / "runs").mkdir()
    assert prepare_study_dir(study, tmp_path / "results") == study_dir  # same study: reuse
    changed = load_study_file(_study_file(tmp_path, teacher_file, budget={"trials": 3}))
    with pytest.raises(LrwaError, match="different study .* pass --restart"):
        prepare_study_dir(changed, tmp_path / "results")
    prepare_study_dir(changed, tmp_path / "results", restart=True, out=lambda line: None)
    moved = [path.name for path in (tmp_path / "results").iterdir() if ".old-" in path.name]
    assert len(moved) == 1 and (tmp_path / "results" / moved[0] / "runs").is_dir()


def test_unwritable_storage_fails_in_one_line(teacher_file, tmp_path):
    study = load_study_file(_study_file(tmp_path, teacher_file))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(LrwaError, match=r"storage .* cannot be written"):
        prepare_study_dir(study, blocker / "results")
    with pytest.raises(LrwaError, match="'ftp://host/results': unsupported scheme"):
        prepare_study_dir(study, "ftp://host/results")


def test_impossible_resources_fail_before_any_trial(ray_session, teacher_file, tmp_path):
    gpu_study = load_study_file(_study_file(tmp_path, teacher_file, resources={"gpus": 1}))
    with pytest.raises(LrwaError, match=r"needs 1 GPU per trial .* has 0"):
        run_study(gpu_study, tmp_path / "results")
    cpu_study = load_study_file(_study_file(tmp_path, teacher_file, name="big",
                                            resources={"cpus": 3}))
    with pytest.raises(LrwaError, match=r"needs 3 CPU per trial .* has 2"):
        check_cluster(cpu_study, ray.cluster_resources())


def test_data_parallel_trials_hold_a_sliver_and_fit_the_machine(teacher_file, tmp_path):
    linear = {"buffer_size": {"type": "int", "low": 32, "high": 128}}
    study = load_study_file(_study_file(tmp_path, teacher_file, space={**SPACE, **linear},
                                        resources={"cpus": 1, "workers": 2}))
    # Ray Train places its workers in a placement group of its own: the trial holds only
    # the driver's sliver, and trial + workers fit on exactly 2 CPUs.
    assert trial_bundles(study) == [{"CPU": 0.001}]
    assert resources_per_trial(study)["CPU"] <= 2.0
    assert check_cluster(study, {"CPU": 2.0}) == 1
    with pytest.raises(LrwaError, match="needs"):
        check_cluster(study, {"CPU": 1.0})
    # Each worker takes 1/N of the bank, so the searched sizes step by the worker count.
    assert next(p for p in study.space if p.name == "buffer_size").step == 2
    with pytest.raises(LrwaError, match="cannot step a log scale"):
        load_study_file(_study_file(tmp_path, teacher_file, resources={"workers": 2}))
    with pytest.raises(LrwaError, match="base.batch_size: 32 must split evenly"):
        load_study_file(_study_file(tmp_path, teacher_file, space={**SPACE, **linear},
                                    resources={"workers": 3}))


def test_data_parallel_trial_runs_ray_train_inside_tune(ray_session, teacher_file, tmp_path):
    linear = {"buffer_size": {"type": "int", "low": 32, "high": 128}}
    study = load_study_file(_study_file(tmp_path, teacher_file, space={**SPACE, **linear},
                                        budget={"trials": 1, "max_concurrent": 1},
                                        resources={"cpus": 1, "workers": 2}))
    outcome = run_study(study, tmp_path / "results")
    assert outcome.statuses["completed"] == 1
    trials, curves = load_study(outcome.study_dir)
    assert list(curves["epoch"]) == [1, 2]
    run_dir = outcome.study_dir / trials.loc[0, "run_dir"]
    assert (run_dir / "ray_run.json").is_file() and (run_dir / "student.pt").is_file()


# -- the commands ------------------------------------------------------------------------------

def test_commands_register_and_dry_run(teacher_file, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lrwa")
    add_commands(parser.add_subparsers(dest="command"))
    path = _study_file(tmp_path, teacher_file)
    args = parser.parse_args(["tune", str(path), "--dry-run", "--storage", str(tmp_path)])
    assert args.func is tune_command and args.smoke is False
    args.func(args)
    out = capsys.readouterr().out
    assert "alpha: log float in [0.1, 1]" in out and "measured here on cpu" in out
    assert not (tmp_path / "tiny").exists()  # a dry run creates nothing
    estimate = dry_run(load_study_file(path).smoke_variant(), tmp_path, out=lambda line: None,
                       measure=False)
    assert estimate["trials"] == 2
    report = parser.parse_args(["report", str(tmp_path / "missing")])
    assert report.func is report_command
    with pytest.raises(LrwaError, match="does not exist"):
        report.func(report)
    assert not (tmp_path / CURVES_DIR).exists()
