"""Every private attribute and file name of Ray Tune and Optuna that lrwa touches, here once.

lrwa keeps to the libraries' public APIs except where a study cannot be resumed or
checked without knowing more: how Ray names and lays out its experiment state, and
the attributes of `OptunaSearch` that link Tune's trial ids to Optuna's trials. Each
name below has a test (tests/test_internals.py) that fails when a release of Ray or
Optuna removes or renames it, and pyproject caps both at the minor versions tested;
a test also checks that no other module of lrwa names any of them.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from typing import Any

# -- Ray Tune's experiment folder (STUDY/ray/) ---------------------------------------------
# The experiment state Tune restores from (TuneController.CKPT_FILE_TMPL): JSON whose
# "trial_data" holds, per trial, two JSON strings: its state ("trial_id", "status") and
# its run-time metadata ("last_result").
EXPERIMENT_STATE_GLOB = "experiment_state-*.json"
TRIAL_DATA_KEY, TRIAL_ID_KEY, TRIAL_STATUS_KEY = "trial_data", "trial_id", "status"
LAST_RESULT_KEY = "last_result"
ENDED_STATUS = "TERMINATED"  # Trial.TERMINATED
# The pickled Tuner that Tuner.restore reads (ray.tune.impl.tuner_internal._TUNER_PKL).
TUNER_FILE = "tuner.pkl"
# Written by Ray to test that the storage is reachable; never read back
# (ray.train._internal.storage._VALIDATE_STORAGE_MARKER_FILENAME).
STORAGE_MARKER_FILE = ".validate_storage_marker"
# Temporary names of Ray's atomic writes of searcher state (search_generator, searcher).
TEMPORARY_PREFIXES = (".", "tmp-")
# Each trial's results, one JSON object per report (ray.tune.result.EXPR_RESULT_FILE).
RESULT_FILE = "result.json"
# The environment switch of TuneController._validate_result_metrics.
STRICT_METRIC_SWITCH = "TUNE_DISABLE_STRICT_METRIC_CHECKING"

# -- Optuna's journal file -------------------------------------------------------------------
# Every line of a journal is one JSON record carrying its operation under this key
# (optuna.storages.journal._storage.JournalStorage._write_log).
JOURNAL_OP_KEY = "op_code"


def newest_experiment_state(names: Iterable[str]) -> str | None:
    """The file Tune restores from among `names` (its `_find_newest_experiment_checkpoint`:
    the greatest name matching the pattern)."""
    matching = fnmatch.filter([name.rpartition("/")[2] for name in names],
                              EXPERIMENT_STATE_GLOB)
    return max(matching) if matching else None


def experiment_trials(data: bytes) -> dict[str, tuple[str, dict[str, Any]]]:
    """{trial id: (status, last result)} of the trials in an experiment-state file, read
    as JSON only (its pickled parts are never decoded); empty when the file is not one."""
    try:
        found = {}
        for entry in json.loads(data).get(TRIAL_DATA_KEY, []):
            state, runtime = json.loads(entry[0]), json.loads(entry[1])
            last = runtime.get(LAST_RESULT_KEY) if isinstance(runtime, dict) else None
            found[str(state[TRIAL_ID_KEY])] = (str(state.get(TRIAL_STATUS_KEY)),
                                               last if isinstance(last, dict) else {})
        return found
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}


def is_journal_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and isinstance(record.get(JOURNAL_OP_KEY), int)


# -- Ray's OptunaSearch ----------------------------------------------------------------------
# OptunaSearch keeps, per Tune trial id, the Optuna trial it asked for (`_ot_trials`),
# the study (`_ot_study`), the storage handle (`_storage`) and the ids it has been told
# ended (`_completed_trials`). lrwa links Tune's ids to the journal through the first,
# re-points the storage after a restore, and marks ends it handles itself.

def study_storage(study: Any) -> Any:
    return study._storage


def searcher_trials(searcher: Any) -> dict[str, Any]:
    return searcher._ot_trials


def searcher_study(searcher: Any) -> Any:
    return searcher._ot_study


def _handle(study: Any, number: int) -> Any:
    """An `optuna.trial.Trial` for the study's trial `number` (Optuna's constructor takes
    the storage's own trial id)."""
    import optuna

    storage = study_storage(study)
    internal = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    return optuna.trial.Trial(study, internal)


def repoint_searcher(searcher: Any, storage: Any, study: Any) -> None:
    """Point a restored searcher at `storage`/`study` and rebuild its trial handles."""
    searcher._storage = storage
    searcher._ot_study = study
    searcher._ot_trials = {trial_id: _handle(study, trial.number)
                           for trial_id, trial in searcher._ot_trials.items()}


def adopt_trial(searcher: Any, trial_id: str, number: int) -> None:
    """Hand the journal's trial `number` to Tune's `trial_id`."""
    searcher._ot_trials[trial_id] = _handle(searcher._ot_study, number)


def mark_ended(searcher: Any, trial_id: str) -> None:
    searcher._completed_trials.add(trial_id)


# -- Ray's cluster plumbing (lrwa.ray_capacity, lrwa.ray_connect) ------------------------------
# The logger of Ray's every-start token notice.
AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def published_cluster_config() -> Any:
    """The `ClusterConfig` record the cluster's head published (the autoscaler's node types,
    what Ray Train's own capacity check reads), or None."""
    from ray._private.state import state

    return state.get_cluster_config()


def report_cluster_config(serialized: bytes) -> None:
    """Publish a serialised `ClusterConfig` through the connected driver's GCS client."""
    import ray._private.worker

    ray._private.worker.global_worker.gcs_client.report_cluster_config(serialized)


def autoscaler_v2_enabled() -> bool:
    """Whether the GCS says an autoscaler v2 runs (what `ray up` starts)."""
    import ray._raylet
    from ray.experimental.internal_kv import _internal_kv_get

    flag = _internal_kv_get(ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY.encode(),
                            namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())
    return flag == b"1"


def standalone_gcs_client(address: str, timeout_ms: int) -> Any:
    """A GCS client of `address` without ray.init, authenticating as ray.init would."""
    from ray._raylet import InnerGcsClient

    return InnerGcsClient.standalone(address, None, timeout_ms)


def wrap_console_printer(wrap: Any) -> None:
    """Replace the driver's printer of worker and raylet output with `wrap(original)`."""
    import ray._private.worker as ray_worker

    ray_worker.print_to_stdstream = wrap(ray_worker.print_to_stdstream)
