"""The names of a study's files and of its metrics: defined here once, imported by every
writer and reader of a study.

    STORAGE/<study>/study.json        the resolved study (`Study.to_dict`), its hash
                                      (guards resumption) and the study as a file that
                                      parses back to it (`Study.as_file`, for the views)
    STORAGE/<study>/study.yaml        the resolved study again, for people
    STORAGE/<study>/optuna.journal    the Optuna study: every trial's state, parameters,
                                      objective and lrwa's trial id (the one record of
                                      trials; on an object store the driver works on a
                                      local cache of it)
    STORAGE/<study>/optuna.journal.d/ object stores: records appended since the journal
                                      was last written whole, one part per push
    STORAGE/<study>/curves/<id>.parquet  one row per epoch of an ended trial (a running
                                      trial's epochs are in Ray's ray/<id>/result.json)
    STORAGE/<study>/trials.parquet    one row per trial (a view of the journal and curves)
    STORAGE/<study>/ray/              Ray Tune's experiment state and each trial's results
                                      and checkpoints (ray/<trial_id>/checkpoint_NNNNNN/)
    STORAGE/<study>/ray_state.json    signed digests of Ray's state (`integrity.py`)
    STORAGE/<study>/lock.json         the driver holding the study (`lock.py`)
    STORAGE/<study>/best_config.yaml, report/   written by `lrwa report`
    STORAGE/<study>/attempts/<time>/  what a start that Ray never recorded left
    STORAGE/<study>.old-<time>/       a study that `--restart` moved aside
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lrwa.probes import columns_in as probe_columns

DEFAULT_STORAGE = "tune_results"  # where `lrwa tune` puts studies unless --storage
# study.json's format; 2: curves/<trial_id>.parquet, Ray owns checkpoints.
STUDY_FORMAT = "lrwa-study/2"
STUDY_JSON = "study.json"
STUDY_YAML = "study.yaml"
OPTUNA_FILE = "optuna.journal"
JOURNAL_PARTS = "optuna.journal.d"  # object stores: records appended since the last whole write
CURVES_DIR = "curves"
TRIALS_FILE = "trials.parquet"
RAY_DIR = "ray"
RAY_STATE_FILE = "ray_state.json"
LOCK_FILE = "lock.json"
BEST_CONFIG = "best_config.yaml"
REPORT_DIR = "report"

# A trial's status in trials.parquet, and the Optuna state that holds it.
COMPLETED, STOPPED_EARLY, ERRORED, UNFINISHED = (
    "completed", "stopped early", "errored", "unfinished")
STATUSES = (COMPLETED, STOPPED_EARLY, ERRORED, UNFINISHED)
OPTUNA_STATES = {"COMPLETE": COMPLETED, "PRUNED": STOPPED_EARLY, "FAIL": ERRORED,
                 "RUNNING": UNFINISHED, "WAITING": UNFINISHED}

# Curve statistics (lrwa.summary.curve_statistics): what an objective may name, and the
# numbers every trial row carries.
# The *_after_warmup pair leaves out the config's first `warmup_epochs` epochs.
OBJECTIVE_METRICS = ("best_acc", "mean_acc", "final_acc", "var_acc", "max_drop",
                     "var_acc_after_warmup", "max_drop_after_warmup")
# What the engine reports per epoch (lrwa.distiller), the columns of every curve file;
# besides these, a run with probe sets reports one `probe_agree_e<k>` per set (lrwa.probes).
EPOCH_METRICS = ("test_acc", "loss_acq", "loss_ret", "loss_gen", "grad_cos", "buffer_fill",
                 "samples_per_s", "train_s", "wall_s", "lr")


def epoch_values(source: Mapping[str, Any]) -> dict[str, Any]:
    """The per-epoch metrics in `source` (an engine row or a Tune result): the fixed ones,
    then the probe columns it holds."""
    return {**{name: source.get(name) for name in EPOCH_METRICS},
            **{name: source[name] for name in probe_columns(source)}}
# Packages whose versions each trial row records (lrwa.provenance.versions).
VERSION_KEYS = ("lrwa", "python", "torch", "ray", "optuna", "pyarrow", "numpy", "git")
# Optuna user attributes that link a journal trial to lrwa.
TRIAL_ID_ATTR, RUN_DIR_ATTR, ERROR_ATTR = "trial_id", "run_dir", "error"
VERSIONS_ATTR = "versions"
# What a trial reports, instead of an epoch, when the engine stopped it with an error.
ERROR_KEY = "error"
