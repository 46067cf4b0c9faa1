"""Where a study's results go: per-trial learning curves and the trial table, as Parquet.

    STUDY_DIR/curves/trial_id=<id>/curve.parquet   one row per (trial, epoch)
    STUDY_DIR/trials.parquet                       one row per trial

A trial's curve file is rewritten whole, atomically, after every epoch from the
run's own history (`metrics.parquet` of its run folder, which the engine writes
from the checkpointed state). Its rows are therefore exactly the epochs the run
has completed: a trial resumed after a crash rewrites the same file with the
same epochs plus the new ones, so no (trial, epoch) row can exist twice and none
of a finished trial can go missing, whatever Ray replays. One file per trial
keeps a 1,000-trial study at 1,000 files, which `pyarrow.dataset` reads in well
under a second. Columns have fixed types per study so the files always unify.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lrwa.atomic import atomic_path
from lrwa.config import DistillConfig
from lrwa.tune.study import field_kind

# The study folder's layout (lrwa.tune.runner's docstring draws it).
CURVES_DIR = "curves"
CURVE_FILE = "curve.parquet"
TRIALS_FILE = "trials.parquet"
STUDY_JSON = "study.json"
STUDY_YAML = "study.yaml"
OPTUNA_FILE = "optuna.journal"
RAY_DIR = "ray"
PARTITION = "trial_id"
STATUSES = ("completed", "stopped early", "errored", "unfinished")
SUMMARY_COLUMNS = ("best_acc", "mean_acc", "final_acc", "var_acc", "max_drop", "teacher_acc",
                   "teacher_gap")
VERSION_COLUMNS = ("lrwa", "python", "torch", "ray", "optuna", "pyarrow", "numpy", "git")

_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}


def config_column_type(name: str) -> pa.DataType:
    """The Arrow type of a DistillConfig key, from its annotation."""
    return _ARROW_TYPES[field_kind(name)]


def hyperparameter_fields(searched: Sequence[str]) -> list[pa.Field]:
    """Searched keys first, then mode, replay and seed (each once)."""
    names = list(dict.fromkeys([*searched, "mode", "replay", "seed"]))
    return [pa.field(name, config_column_type(name)) for name in names]


def curve_schema(searched: Sequence[str], metric_names: Sequence[str]) -> pa.Schema:
    fields = [pa.field("study", pa.string()), pa.field("epoch", pa.int64()),
              *hyperparameter_fields(searched)]
    taken = {field.name for field in fields}
    fields += [pa.field(name, pa.float64()) for name in metric_names if name not in taken]
    return pa.schema(fields)


def curve_path(study_dir: Path, trial_id: str) -> Path:
    return Path(study_dir) / CURVES_DIR / f"{PARTITION}={trial_id}" / CURVE_FILE


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def write_trial_curve(study_dir: Path, study: str, trial_id: str, searched: Sequence[str],
                      config: DistillConfig, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Replace the trial's curve file with `rows` (the run's history), decorated with the
    study, the hyperparameters and the seed."""
    metric_names = [name for name in rows[0] if name != "epoch"] if rows else []
    schema = curve_schema(searched, metric_names)
    settings = {field.name: getattr(config, field.name) for field in
                hyperparameter_fields(searched)}
    columns: dict[str, list[Any]] = {
        "study": [study] * len(rows),
        "epoch": [int(row["epoch"]) for row in rows],
        **{name: [value] * len(rows) for name, value in settings.items()},
    }
    for name in metric_names:
        if name not in columns:
            columns[name] = [_number(row.get(name)) for row in rows]
    table = pa.Table.from_pydict(columns, schema=schema)
    target = curve_path(study_dir, trial_id)
    with atomic_path(target) as temporary:
        pq.write_table(table, temporary)
    return target


def trials_schema(searched: Sequence[str]) -> pa.Schema:
    return pa.schema([
        pa.field("study", pa.string()), pa.field("trial_id", pa.string()),
        pa.field("status", pa.string()), pa.field("error", pa.string()),
        *hyperparameter_fields(searched),
        *[pa.field(name, pa.float64()) for name in SUMMARY_COLUMNS],
        pa.field("epochs_run", pa.int64()), pa.field("epochs", pa.int64()),
        pa.field("wall_s", pa.float64()), pa.field("run_dir", pa.string()),
        pa.field("config", pa.string()),
        *[pa.field(f"version_{name}", pa.string()) for name in VERSION_COLUMNS],
    ])


def write_trials_table(study_dir: Path, searched: Sequence[str],
                       records: Sequence[Mapping[str, Any]]) -> Path:
    """Replace `trials.parquet` with one row per record (missing values become null)."""
    schema = trials_schema(searched)
    columns: dict[str, list[Any]] = {field.name: [] for field in schema}
    for record in records:
        for field in schema:
            value = record.get(field.name)
            if field.name == "config" and isinstance(value, Mapping):
                value = json.dumps(dict(value), sort_keys=False)
            if pa.types.is_floating(field.type) and value is not None:
                value = float(value)
            columns[field.name].append(value)
    table = pa.Table.from_pydict(columns, schema=schema)
    target = Path(study_dir) / TRIALS_FILE
    with atomic_path(target) as temporary:
        pq.write_table(table, temporary)
    return target
