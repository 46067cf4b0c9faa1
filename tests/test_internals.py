"""The private names of Ray Tune and Optuna that lrwa relies on (`lrwa.tune.internals`):
each test fails when a release removes or renames one, and no other module of the study
layer names any of them."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import optuna
import pytest

import lrwa
from lrwa.tune import internals

PRIVATE_ATTRIBUTES = {"_ot_trials", "_ot_study", "_storage", "_completed_trials", "_trial_id",
                      "_study_id"}
PRIVATE_STRINGS = ("experiment_state", "tuner.pkl", "result.json", ".validate_storage_marker",
                   "op_code", "TUNE_DISABLE_STRICT_METRIC_CHECKING", "search_gen_state",
                   "searcher-state", "tmp-")
# The whole package: the study layer, the Ray Train adapter and the cluster modules.
CHECKED = ("tune", "ray_train", ".")


def test_ray_names_the_experiment_state_and_its_files_as_lrwa_expects():
    from ray.train._internal.storage import _VALIDATE_STORAGE_MARKER_FILENAME
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.impl.tuner_internal import _TUNER_PKL
    from ray.tune.result import EXPR_RESULT_FILE

    assert TuneController.CKPT_FILE_TMPL.format("*") == internals.EXPERIMENT_STATE_GLOB
    assert _TUNER_PKL == internals.TUNER_FILE
    assert _VALIDATE_STORAGE_MARKER_FILENAME == internals.STORAGE_MARKER_FILE
    assert EXPR_RESULT_FILE == internals.RESULT_FILE


def test_ray_writes_the_experiment_state_with_the_keys_lrwa_reads():
    """Tune stores each trial as `Trial.get_json_state()` under "trial_data"; lrwa reads
    that back as JSON (never unpickling) to learn each trial's id, status and last result."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.experiment import Trial

    assert f'"{internals.TRIAL_DATA_KEY}"' in inspect.getsource(TuneController.save_to_dir)
    trial = Trial("trainable", stub=True, trial_id="abc123")
    trial.status = Trial.TERMINATED
    trial.run_metadata.last_result = {"epoch": 3}
    state = json.dumps({internals.TRIAL_DATA_KEY: [list(trial.get_json_state())]})
    assert internals.experiment_trials(state.encode()) == {
        "abc123": (internals.ENDED_STATUS, {"epoch": 3})}


def test_tune_reads_the_strict_metric_switch_and_ray_writes_temporary_names():
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.search.search_generator import SearchGenerator

    assert internals.STRICT_METRIC_SWITCH in inspect.getsource(
        TuneController._validate_result_metrics)
    assert 'tmp_file_name=f"tmp-' in inspect.getsource(SearchGenerator.save_to_dir)


def test_the_newest_experiment_state_is_the_greatest_name():
    names = ["ray/experiment_state-2026-01-02_00-00-00.json", "ray/tuner.pkl",
             "ray/experiment_state-2026-01-01_23-59-59.json"]
    assert internals.newest_experiment_state(names) == "experiment_state-2026-01-02_00-00-00.json"
    assert internals.newest_experiment_state(["ray/tuner.pkl"]) is None
    assert internals.experiment_trials(b"not json") == {}


def test_every_line_of_an_optuna_journal_carries_its_operation(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = tmp_path / "optuna.journal"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    lines = path.read_bytes().splitlines()
    assert lines and all(internals.is_journal_record(line) for line in lines)
    assert not internals.is_journal_record(b'{"no_op": 1}')
    assert {json.loads(line)[internals.JOURNAL_OP_KEY] for line in lines} >= {0, 4, 6}


def test_optuna_search_keeps_the_attributes_lrwa_links_trials_through(tmp_path):
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j")))
    searcher = OptunaSearch(space={"x": optuna.distributions.FloatDistribution(0, 1)},
                            metric="m", mode="max", study_name="s", storage=storage)
    searcher.suggest("a")
    assert set(internals.searcher_trials(searcher)) == {"a"}
    study = internals.searcher_study(searcher)
    assert isinstance(study, optuna.Study)
    assert internals.study_storage(study) is storage
    internals.mark_ended(searcher, "a")
    assert "a" in searcher._completed_trials
    internals.adopt_trial(searcher, "b", 0)
    assert internals.searcher_trials(searcher)["b"].number == 0
    internals.repoint_searcher(searcher, storage, study)
    assert searcher._storage is storage


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef,
                                       ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in docstrings):
            found += [f"{path.name}:{node.lineno} {name!r}" for name in PRIVATE_STRINGS
                      if name in node.value]
        elif isinstance(node, ast.Attribute) and node.attr in ("_private", "_raylet"):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
            if any(name.startswith(("ray", "optuna")) and "._" in name for name in names):
                found.append(f"{path.name}:{node.lineno} import {names}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [alias.name for alias in node.names]
            if module.startswith(("ray", "optuna")) and (
                    "._" in module or any(name.startswith("_") for name in names)):
                found.append(f"{path.name}:{node.lineno} import {module} {names}")
    return found


@pytest.mark.parametrize("package", CHECKED)
def test_no_private_name_of_ray_or_optuna_outside_the_adapter(package):
    root = Path(lrwa.__file__).parent / package
    uses = [use for path in sorted(root.rglob("*.py")) if path.name != "internals.py"
            for use in _private_uses(path)]
    assert uses == []


def test_the_checker_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('"""doc naming tuner.pkl is fine."""\nfrom ray.tune.impl import _x\n'
                      'import ray._private.worker\n'
                      'def f(s):\n    return s._ot_trials, "result.json"\n')
    assert [use.split(" ", 1)[1] for use in _private_uses(sample)] == [
        "import ray.tune.impl ['_x']", "import ['ray._private.worker']", "._ot_trials",
        "'result.json'"]


def test_rays_cluster_plumbing_is_where_lrwa_reaches_for_it():
    """Each private name the cluster modules use through the adapter still exists."""
    import importlib.util

    import ray._private.worker
    import ray._raylet
    from ray._private.state import state
    from ray.experimental import internal_kv

    assert callable(state.get_cluster_config)
    assert callable(ray._private.worker.print_to_stdstream)
    assert hasattr(ray._private.worker, "global_worker")
    assert callable(ray._raylet.InnerGcsClient.standalone)
    assert ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY and ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE
    assert callable(internal_kv._internal_kv_get)
    assert importlib.util.find_spec(internals.AUTH_NOTICE_LOGGER) is not None
