"""Study files on their own, without Ray: the pydantic schema's one-line errors that name the
key path, the hash that guards resumption, and the resolved study every other module uses.

The studies here run on the embedded mnist5k teacher (no `teacher` key), so nothing loads
or trains a teacher and each parse takes milliseconds.
"""

from __future__ import annotations

import pickle

import pytest
import yaml
from tiny_study import SPACE, TINY_BASE, tiny_study_data

from lrwa.errors import LrwaError
from lrwa.tune.study import Objective, load_study_file, parse_study

BASE = TINY_BASE
LINEAR = {"buffer_size": {"type": "int", "low": 32, "high": 128}}
GRID = {"mode": {"type": "categorical", "choices": ["joint", "meta"]},
        "insertion": {"type": "categorical", "choices": ["fifo", "reservoir"]}}
TWO_OBJECTIVES = [{"metric": "mean_acc", "direction": "max"},
                  {"metric": "var_acc", "direction": "min"}]
PICK_VARIANT = {"variant": {"type": "categorical", "choices": ["a", "b"]}}
VARIANTS = {"a": {"mode": "joint"}, "b": {"mode": "meta", "alpha": 0.5}}


def study_data(**changes):
    return {**tiny_study_data(), **changes}


def refused(data) -> str:
    with pytest.raises(LrwaError) as info:
        parse_study(data, "src.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("study src.yaml: ")
    return message


# -- the hash that guards resumption ---------------------------------------------------------

def test_shipped_study_hashes_are_unchanged():
    # A different hash refuses to resume every existing quickstart and ablation study, so
    # it changes only on purpose. Last changed when the engine took the authors' generator
    # objective and replay (new config keys in every resolved base) and the quickstart its
    # smaller batch: a study begun before would mix two engines, and is refused.
    assert load_study_file("quickstart").fingerprint() == "c518c9fb0d7ad55c"
    assert load_study_file("mnist5k_ablation").fingerprint() == "04caafafac380086"
    assert load_study_file("quickstart").smoke_variant().fingerprint() == "b9eb730e835b7e61"


def test_the_hash_leaves_out_the_time_budget_and_the_description():
    study = parse_study(study_data(), "a.yaml")
    budget = parse_study(study_data(budget={"trials": 2, "max_concurrent": 2,
                                            "time_budget_s": 60}, description="x"), "b.yaml")
    assert budget.fingerprint() == study.fingerprint()
    assert budget.to_dict()["time_budget_s"] == 60.0 and budget.description == "x"
    assert parse_study(study_data(seed=4), "a.yaml").fingerprint() != study.fingerprint()


# -- the resolved study ----------------------------------------------------------------------

def test_a_study_resolves_with_defaults_and_exact_types():
    study = parse_study(study_data(budget={"trials": 2.0}, resources=None, sampler=None),
                        "src.yaml")
    assert (study.budget.trials, study.budget.max_concurrent) == (2, 1)
    assert (study.resources.cpus, study.resources.gpus, study.resources.workers) == (1.0, 0.0, 1)
    assert isinstance(study.budget.trials, int) and isinstance(study.resources.cpus, float)
    assert (study.sampler.type, study.sampler.n_startup_trials, study.scheduler.type) == (
        "tpe", 10, "none")
    assert (study.scheduler.grace_period, study.scheduler.reduction_factor) == (1, 2.0)
    assert study.seed == 3
    assert study.base["seed"] == 3  # the study's seed, unless base names one
    # No teacher: the embedded mnist5k one, so its preset sits under base.
    assert (study.base["alpha"], study.base["vae_latent_dim"]) == (0.1, 64)
    alpha, buffer_size, ratio = study.space.values()
    assert (alpha.log, buffer_size.log, ratio.log) == (True, True, False)
    assert (buffer_size.low, buffer_size.high) == (32, 128)
    assert isinstance(buffer_size.low, int) and isinstance(alpha.low, float)
    assert study.objectives == (Objective(metric="mean_acc", direction="max"),)
    assert study.objectives[0].mode == "max" and not study.multi_objective
    assert study.mlflow is None and study.to_dict()["smoke"] == {} and study.variants == {}


def test_a_pickled_study_is_the_same_study_and_resolves_its_variants():
    study = parse_study(study_data(variants=VARIANTS, space={**PICK_VARIANT, **SPACE},
                                   points_to_evaluate=[{"variant": "a"}]), "src.yaml")
    copied = pickle.loads(pickle.dumps(study))  # what Ray hands each trial's process
    assert copied == study and copied.fingerprint() == study.fingerprint()
    # base, then the variant's keys, then the trial's searched values
    assert (copied.trial_config({"variant": "b"}).mode,
            copied.trial_config({"variant": "b"}).alpha) == ("meta", 0.5)
    assert copied.trial_config({"variant": "b", "alpha": 0.2}).alpha == 0.2
    settings = copied.trial_settings({"variant": "a"})
    assert (settings["mode"], settings["alpha"], settings["variant"]) == (
        "joint", study.base["alpha"], "a")


def test_points_are_filled_from_the_base_and_the_smoke_variant_keeps_them():
    study = parse_study(study_data(points_to_evaluate=[{"alpha": 0.5}],
                                   smoke={"base": {"buffer_size": 96}}), "src.yaml")
    assert study.points_to_evaluate == [{"alpha": 0.5, "buffer_size": 64,
                                         "replay_ratio": 0.25}]
    smoke = study.smoke_variant()
    assert smoke.points_to_evaluate == study.points_to_evaluate
    assert smoke.base["buffer_size"] == 96 and smoke.is_smoke and smoke.budget.trials == 2


def test_data_parallel_split_keys_step_by_the_workers_also_in_the_smoke_variant():
    study = parse_study(study_data(space={**SPACE, **LINEAR}, resources={"workers": 2}),
                        "src.yaml")
    assert study.space["buffer_size"].step == 2
    # study.json keeps the study as a file, which views.py parses back to the same study
    assert parse_study(study.as_file(), "copy.yaml").fingerprint() == study.fingerprint()
    smoke = study.smoke_variant()
    assert smoke.resources.workers == 1
    assert smoke.fingerprint() == study.smoke_variant().fingerprint()
    assert smoke.space["buffer_size"].step == 2


def test_the_mlflow_logger_and_smoke_overrides_keep_what_the_file_gave():
    given = parse_study(study_data(loggers={"mlflow": {"tracking_uri": "http://host:5000",
                                                       "experiment": ""}},
                                   smoke={"budget": {"trials": 3}, "base": None}), "src.yaml")
    assert given.mlflow == {"tracking_uri": "http://host:5000"}
    assert given.to_dict()["smoke"] == {"budget": {"trials": 3}}
    assert given.smoke_variant().budget.trials == 3
    assert parse_study(study_data(loggers={"mlflow": {}}), "src.yaml").mlflow == {}
    assert parse_study(study_data(loggers={"mlflow": None}), "src.yaml").mlflow is None


def test_a_grid_runs_every_combination_of_choices_once():
    study = parse_study(study_data(space=GRID, sampler={"type": "grid"}, budget={"trials": 4},
                                   points_to_evaluate=None), "src.yaml")
    assert study.sampler.type == "grid" and [p.choices for p in study.space.values()] == [
        ["joint", "meta"], ["fifo", "reservoir"]]
    smoke = study.smoke_variant()  # two trials cannot run four points: two random ones
    assert (smoke.sampler.type, smoke.budget.trials, smoke.space) == ("random", 2, study.space)


def test_the_file_is_read_by_the_strict_loader_and_named_in_errors(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("budget: {trials: 2}\nbudget: {trials: 3}\n")
    with pytest.raises(LrwaError, match=r"repeats the key 'budget'"):
        load_study_file(path)
    path = tmp_path / "my-study.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in study_data().items() if k != "name"}))
    assert load_study_file(path).name == "my-study"  # the file's stem
    path.write_text(yaml.safe_dump(study_data(budget={"trails": 3})))
    with pytest.raises(LrwaError, match=rf"^study {path}: unknown key 'budget.trails' "
                                        r"\(known: trials, time_budget_s, max_concurrent\)$"):
        load_study_file(path)


# -- one line that names the key -------------------------------------------------------------

@pytest.mark.parametrize(("changes", "message"), [
    # unknown keys at every depth, with the keys that are known
    ({"smoke": {"budget": {"trails": 1}}}, "unknown key 'smoke.budget.trails' (known: trials,"),
    ({"loggers": {"mlflow": {"token": "x"}}},
     "unknown key 'loggers.mlflow.token' (known: tracking_uri, experiment)"),
    ({"variants": {"a": {"nokey": 1}}, "space": {**PICK_VARIANT, **SPACE}},
     "unknown key 'variants.a.nokey' (known: "),
    ({"points_to_evaluate": [{"alpha": 0.5, "beta": 1}]},
     "unknown key 'points_to_evaluate[0].beta' (known: alpha, buffer_size, replay_ratio)"),
    ({"objective": [{"metric": "mean_acc", "direction": "max", "weight": 1}]},
     "unknown key 'objective[0].weight' (known: metric, direction)"),
    # shapes and types
    ({"budget": [1]}, "budget: must be a mapping, got list"),
    ({"budget": None}, "budget: needs 'trials'"),
    ({"budget": {"trials": "2"}}, "budget.trials: input should be a valid integer, got '2'"),
    ({"budget": {"trials": True}}, "budget.trials: input should be a valid integer, got True"),
    ({"budget": {"trials": 2.5}}, "budget.trials: input should be a valid integer, got 2.5"),
    ({"budget": {"trials": 0}}, "budget.trials: input should be greater than or equal to 1"),
    ({"budget": {"trials": 2, "time_budget_s": float("inf")}},
     "budget.time_budget_s: input should be a finite number, got inf"),
    ({"seed": 2**32}, "seed: input should be less than or equal to 4294967295"),
    ({"sampler": {"type": "cmaes"}},
     "sampler.type: input should be 'tpe', 'random' or 'grid', got 'cmaes'"),
    ({"description": 3}, "description: input should be a valid string, got 3"),
    ({"name": "a b"}, "name: must be a folder name of letters, digits,"),
    ({"name": "tiny\n"}, "or '-', got 'tiny\\n'"),  # a trailing newline is no folder name
    ({"resources": {"gpus": 1.5}}, "resources.gpus: a fraction of a GPU must be below 1"),
    ({"resources": {"workers": 0}}, "resources.workers: input should be greater than or equal"),
    # the space
    ({"space": None}, "space is empty"),
    ({"space": {"teacher": {"type": "categorical", "choices": ["t.pt"]}}},
     "space.teacher: 'teacher' says where things are and cannot be searched"),
    ({"space": {"alpha": {"low": 0.1, "high": 1}}}, "space.alpha: needs 'type'"),
    ({"space": {"alpha": {"type": "uniform", "high": 1.0}}},
     "space.alpha: a uniform entry needs 'low'"),
    ({"space": {"alpha": {"type": "loguniform", "low": 0.1, "high": 1.0, "log": False}}},
     "space.alpha.log: a loguniform entry is always on a log scale"),
    ({"space": {"alpha": {"type": "uniform", "low": 0.0, "high": 1.0, "log": True}}},
     "space.alpha.low: a log-scale range needs low > 0, got 0"),
    ({"space": {"alpha": {"type": "uniform", "low": "0.1", "high": 1.0}}},
     "space.alpha.low: input should be a valid number, got '0.1'"),
    ({"space": {"buffer_size": {"type": "int", "low": 32.5, "high": 64}}},
     "space.buffer_size.low: must be an integer, got 32.5"),
    ({"space": {"buffer_size": {"type": "uniform", "low": 32, "high": 64}}},
     "space.buffer_size.type: 'buffer_size' is an integer: use type int"),
    ({"space": {"mode": {"type": "uniform", "low": 0, "high": 1}}},
     "space.mode.type: 'mode' is a str: search it with type categorical"),
    ({"space": {"buffer_size": {"type": "int", "low": 32, "high": 64, "step": 5}}},
     "space.buffer_size.step: high - low (32) is not a multiple of step 5"),
    ({"space": {"buffer_size": {"type": "int", "low": 32, "high": 64, "step": 2, "log": True}}},
     "space.buffer_size.step: Optuna cannot step a log-scale range"),
    ({"space": {"alpha": {"type": "uniform", "low": 0.1, "high": 1.0, "step": 1}}},
     "space.alpha.step: only int entries take a step"),
    ({"space": {"mode": {"type": "categorical", "choices": ["meta"], "low": 1}}},
     "space.mode.low: a categorical entry takes only 'choices'"),
    ({"space": {"alpha": {"type": "uniform", "low": 0.1, "high": 1.0, "choices": [1]}}},
     "space.alpha.choices: only categorical entries take choices, not uniform"),
    ({"space": {"mode": {"type": "categorical", "choices": []}}},
     "space.mode.choices: must be a non-empty list"),
    ({"space": {"mode": {"type": "categorical", "choices": ["meta", "meta"]}}},
     "space.mode.choices: lists a value twice"),
    ({"space": {"mode": {"type": "categorical", "choices": ["meta", "bogus"]}}},
     "space.mode.choices[1]: config key 'mode' is 'bogus'"),
    # variants
    ({"variants": VARIANTS}, "variants: are picked by space.variant; add it to the space"),
    ({"variants": {"a b": {}}, "space": PICK_VARIANT},
     "variants.a b: must be a folder name of letters, digits,"),
    ({"variants": {"a": {"teacher": "t.pt"}}, "space": PICK_VARIANT},
     "variants.a.teacher: 'teacher' says where things are and belongs in base"),
    ({"variants": {"a": {"alpha": -1}}, "space": PICK_VARIANT},
     "variants.a: config key 'alpha' is -1.0"),
    ({"variants": VARIANTS, "space": {"variant": {"type": "categorical", "choices": ["a", "c"]}},
      "points_to_evaluate": None}, "space.variant.choices[1]: 'c' is not in variants (a, b)"),
    # A point that leaves the variant out has no base value to fall back on (was a traceback).
    ({"variants": VARIANTS, "space": {**PICK_VARIANT, **SPACE}, "points_to_evaluate": [{}]},
     "points_to_evaluate[0]: names no 'variant': a point picks one of variants (a, b)"),
    ({"variants": VARIANTS, "space": {**PICK_VARIANT, **SPACE}, "points_to_evaluate": [None]},
     "points_to_evaluate[0]: names no 'variant'"),
    ({"variants": VARIANTS, "space": {"variant": {"type": "uniform", "low": 0, "high": 1}},
      "points_to_evaluate": None},
     "space.variant: is {type: categorical, choices: [names from variants]}"),
    # objectives and the scheduler
    ({"objective": None}, "objective: give one {metric, direction} or a list of two"),
    ({"objective": TWO_OBJECTIVES * 2}, "objective: give one {metric, direction} or a list"),
    ({"objective": {"metric": "mean_acc"}}, "objective: needs 'direction'"),
    ({"objective": [{"metric": "mean_acc", "direction": "up"}]},
     "objective[0].direction: input should be 'max' or 'min', got 'up'"),
    ({"objective": [TWO_OBJECTIVES[0], TWO_OBJECTIVES[0]]},
     "objective: names the same metric twice"),
    ({"scheduler": {"type": "none", "grace_period": 1}},
     "scheduler: grace_period and reduction_factor apply to asha only"),
    ({"scheduler": {"type": "asha", "grace_period": 3}},
     "scheduler.grace_period: must be between 1 and 2, got 3"),
    ({"scheduler": {"type": "asha", "reduction_factor": 1}},
     "scheduler.reduction_factor: input should be greater than 1"),
    ({"scheduler": "asha"}, "scheduler: must be a mapping, got str"),
    # points to evaluate, the grid, the MLflow logger, data-parallel splits
    ({"points_to_evaluate": [{"alpha": 0.9}] * 3},
     "points_to_evaluate: lists 3 points but budget.trials is 2"),
    ({"points_to_evaluate": [3]}, "points_to_evaluate[0]: must be a mapping, got int"),
    ({"points_to_evaluate": [{"alpha": True}]},
     "points_to_evaluate[0].alpha: True is outside the space (log float in [0.1, 1])"),
    ({"points_to_evaluate": [{"buffer_size": 64.5}]},
     "points_to_evaluate[0].buffer_size: 64.5 is outside the space"),
    ({"base": {**BASE, "alpha": 5.0}, "points_to_evaluate": [{"buffer_size": 64}]},
     "points_to_evaluate[0]: 'alpha' is not given and the base value 5.0 is outside the space"),
    ({"sampler": {"type": "grid"}}, "sampler: a grid runs categorical choices only"),
    ({"space": GRID, "sampler": {"type": "grid"}, "budget": {"trials": 3},
      "points_to_evaluate": None}, "budget.trials: is 3 but the grid has 4 points"),
    ({"space": GRID, "sampler": {"type": "grid"}, "budget": {"trials": 4},
      "points_to_evaluate": [{"mode": "meta"}]},
     "points_to_evaluate: a grid runs every point already"),
    ({"loggers": {"mlflow": {"tracking_uri": "https://user:secret@host"}}},
     "loggers.mlflow.tracking_uri: must not carry credentials"),
    ({"space": {"batch_size": {"type": "categorical", "choices": [32, 33]}},
      "resources": {"workers": 2}, "points_to_evaluate": None},
     "space.batch_size: every value must split evenly over resources.workers 2"),
    ({"space": {**SPACE, "buffer_size": {"type": "int", "low": 32, "high": 128, "step": 3}},
      "resources": {"workers": 2}},
     "space.buffer_size.step: must be a multiple of resources.workers 2"),
    # the base
    ({"base": [1]}, "base: must be a mapping, got list"),
    ({"base": {**BASE, "student": "vgg99"}}, "base: config key 'student' is 'vgg99'"),
])
def test_bad_study_files_fail_in_one_line_naming_the_key(changes, message):
    assert message in refused(study_data(**changes))


@pytest.mark.parametrize(("changes", "message"), [
    # Keys and values that must not break the one line, nor crash the checker.
    ({"bo\ngus": 1}, "unknown key 'bo\\ngus'"),
    ({"budget": {"trials": 2, "tr\nails": 1}}, "unknown key 'budget.tr\\nails'"),
    ({"space": {"al\npha": {"type": "uniform", "low": 0, "high": 1}}},
     "space.al\\npha: 'al\\npha' is not a DistillConfig key"),
    ({"space": {"x" * 5000: {"type": "uniform", "low": 0, "high": 1}}}, "xxx...: 'xxx"),
    ({"space": {"alpha": {"type": "uniform", "low": 10**400, "high": 1}}},
     "space.alpha.low: input should be a valid number"),
    ({"budget": {"trials": 10**5000}}, "got <int of 16610 bits>"),
    ({"points_to_evaluate": [{"buffer_size": 10**5000}]},
     "points_to_evaluate[0].buffer_size: <int of 16610 bits> is outside the space"),
    ({"variants": {"a": {}}, "space": {"variant": {"type": "categorical", "choices": [[1]]}},
      "points_to_evaluate": None}, "space.variant.choices[0]: [1] is not in variants (a)"),
    ({"base": {**BASE, "teacher": "a\0b"}}, "base: config key 'teacher' is 'a\\x00b'"),
    ({"base": {**BASE, "teacher": "~no-such-user-here/t.pt"}},
     "base: config key 'teacher' is '~no-such-user-here/t.pt', not a usable path"),
    ({"loggers": {"mlflow": {"tracking_uri": "http://[::1"}}},
     "loggers.mlflow.tracking_uri: Invalid IPv6 URL"),
])
def test_hostile_study_files_fail_in_one_short_line(changes, message):
    text = refused(study_data(**changes))
    assert message in text and len(text) < 400


def test_a_trial_of_the_embedded_teacher_names_its_data_set_and_architecture():
    """best_config.yaml is a trial's config: it says what was distilled, as config.yaml does."""
    trial = load_study_file("quickstart").trial_config({"alpha": 0.5, "buffer_size": 512,
                                                        "replay_ratio": 0.25})
    assert (trial.teacher, trial.dataset, trial.teacher_arch) == (None, "mnist5k", "lenet5")
    assert trial.torch_threads >= 1 and trial.device == "cpu"
