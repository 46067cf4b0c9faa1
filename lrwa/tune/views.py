"""The study's views, rebuilt from its records: curves/ and trials.parquet.

The Optuna journal holds each trial's state, parameters and objective; Ray persists
each trial's reports (`ray/<trial_id>/result.json`) and checkpoints (each holds the
run's metrics.parquet). The curve files and the trial table are derived from these
(a running trial's curve is read from Ray's record until its curve file is written),
so a rerun, `lrwa report` and `load_study` all call `heal_views` first: a missing,
damaged or stale view is rebuilt, with one notice naming what was rebuilt, and a
trial whose curve cannot be rebuilt (its data is gone too) is named, never counted as
zero rows in silence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from lrwa.sinks import METRICS_FILE
from lrwa.tune.internals import RESULT_FILE
from lrwa.tune.layout import (
    ERROR_ATTR,
    ERROR_KEY,
    OBJECTIVE_METRICS,
    RAY_DIR,
    RUN_DIR_ATTR,
    TRIALS_FILE,
    UNFINISHED,
    VERSION_KEYS,
    VERSIONS_ATTR,
    epoch_values,
)
from lrwa.tune.results import (
    curve_path,
    curve_summary,
    curve_table,
    load_curves,
    load_trials,
    read_parquet,
    read_study_record,
    replace_from,
    setting_columns,
    trials_schema,
    write_curve,
    write_trials_table,
)
from lrwa.tune.storage import StudyStore
from lrwa.tune.study import CONFIG_KEYS, VARIANT, Study, parse_study

Printer = Callable[[str], None]


def trial_record(study: Study, store: StudyStore, trial_id: str, journal_trial: Any,
                 rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A trial's row of trials.parquet, from its journal trial and its curve."""
    from lrwa.tune.journal import status_of

    config = study.trial_settings(journal_trial.params)
    summary = curve_summary(rows, config["warmup_epochs"])
    attrs = journal_trial.user_attrs
    teacher_acc = attrs.get("teacher_acc")
    versions = attrs.get(VERSIONS_ATTR) or {}
    return {
        "study": store.name, "trial_id": trial_id, "number": journal_trial.number,
        "status": status_of(journal_trial), "error": attrs.get(ERROR_ATTR),
        **{key: config[key] for key in setting_columns(study.searched)},
        **{key: summary[key] for key in (*OBJECTIVE_METRICS, "epochs_run", "wall_s")},
        "teacher_acc": teacher_acc,
        "teacher_gap": None if teacher_acc is None else teacher_acc - summary["best_acc"],
        "epochs": config["epochs"], "run_dir": attrs.get(RUN_DIR_ATTR), "config": config,
        **{f"version_{key}": versions.get(key) for key in VERSION_KEYS},
    }


def _last_epoch(rows: list[dict[str, Any]]) -> int:
    return int(rows[-1]["epoch"]) if rows else 0


def ray_rows(store: StudyStore, trial_id: str) -> list[dict[str, Any]]:
    """The epochs Ray persisted for a trial: the newest checkpoint's metrics.parquet (every
    epoch up to that checkpoint), then the epochs after it from its result.json (every
    report, replays included, so a later report of epoch e replaces the rows from e on; a
    killed driver may not have flushed its last lines). Empty when neither is there."""
    from_results: list[dict[str, Any]] = []
    data = store.read_bytes(f"{RAY_DIR}/{trial_id}/{RESULT_FILE}")
    for line in (data or b"").splitlines():
        try:
            result = json.loads(line)
        except ValueError:
            continue  # a torn last line of a killed driver
        if isinstance(result, dict) and "epoch" in result and ERROR_KEY not in result:
            from_results = replace_from(from_results, {
                "epoch": int(result["epoch"]), **epoch_values(result)})
    metrics = [path for path in store.list_files(f"{RAY_DIR}/{trial_id}")
               if path.endswith(f"/{METRICS_FILE}")]
    # checkpoint_NNNNNN: the newest readable one that holds rows
    newest = next((rows for path in sorted(metrics, reverse=True)
                   if (rows := read_parquet(store, path, pa.Table.to_pylist))), [])
    from_checkpoint = [{"epoch": row["epoch"], **epoch_values(row)} for row in newest]
    # The checkpoint's rows are whole from epoch 1; result.json can lack early lines (Ray's
    # logger copies the storage's older copy over it when it retries a trial).
    last = _last_epoch(from_checkpoint)
    return from_checkpoint + [row for row in from_results if int(row["epoch"]) > last]


def read_table_rows(store: StudyStore, searched: Sequence[str] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """trials.parquet by trial id; empty when it is missing, damaged (its pages carry
    checksums, so damage fails to read instead of reading as wrong values) or not of this
    study's schema: it is a view, rebuilt by `heal_views`."""
    read = read_parquet(store, TRIALS_FILE, lambda table: (table, table.to_pylist()))
    if read is None:
        return {}
    table, rows = read
    # The footer's column names carry no checksum: a damaged name must not read as a column.
    names = set(table.column_names)
    if not {"trial_id", "status"} <= names or len(names) < table.num_columns or (
            searched is not None and not table.schema.equals(trials_schema(searched))) or (
            names - set(trials_schema([]).names) - set(CONFIG_KEYS) - {VARIANT}):
        return {}
    return {str(row["trial_id"]): row for row in rows}


def heal_views(store: StudyStore, study: Study, journal: Mapping[str, Any],
               out: Printer, write: bool = True) -> dict[str, dict[str, Any]]:
    """Rebuild what is missing, damaged or stale in curves/ and trials.parquet from the
    journal (`journal`: its trials by lrwa id) and Ray's files; returns the table's rows.
    One notice names what was rebuilt, one the trials whose curve is gone for good."""
    from lrwa.tune.journal import status_of

    table = read_table_rows(store, study.searched) or None
    rebuilt_curves, lost_curves = [], []
    rows_of: dict[str, list[dict[str, Any]]] = {}
    for trial_id, journal_trial in journal.items():
        found = read_parquet(store, curve_path(trial_id), pa.Table.to_pylist)
        rows = found or []
        if found is None and status_of(journal_trial) != UNFINISHED:
            # An ended trial's curve file is missing or damaged: Ray's files hold its epochs.
            rows = max(ray_rows(store, trial_id), rows, key=_last_epoch)
            if rows:
                if write:
                    write_curve(store, trial_id, study.searched,
                                study.trial_settings(journal_trial.params), rows)
                rebuilt_curves.append(trial_id)
            elif journal_trial.user_attrs.get(ERROR_ATTR) is None:
                lost_curves.append(trial_id)  # an errored trial may have no epoch at all
        rows_of[trial_id] = rows
    stale = table is None or set(table) != set(journal) or any(
        table[trial_id].get("status") != status_of(trial)
        or trial_id in rebuilt_curves for trial_id, trial in journal.items())
    records = table
    if stale:
        records = {trial_id: trial_record(study, store, trial_id, trial, rows_of[trial_id])
                   for trial_id, trial in journal.items()}
        if write:
            write_trials_table(store, study.searched, list(records.values()))
    rebuilt = [TRIALS_FILE] if stale and journal else []
    if rebuilt_curves:
        shown = ", ".join(rebuilt_curves[:5]) + (" ..." if len(rebuilt_curves) > 5 else "")
        rebuilt.insert(0, f"the curves of {len(rebuilt_curves)} trials ({shown}) from "
                          "Ray's results")
    if rebuilt:
        out(f"rebuilt {' and '.join(rebuilt)} of {store.location()}")
    if lost_curves:
        out(f"no curve for trials {', '.join(lost_curves)}: their curve files and Ray's "
            "results are gone")
    return records


def read_views(store: StudyStore, out: Printer) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of a study after healing its views (the readers' entry). A trial
    still running has no curve file yet: its rows come from Ray's record of its reports."""
    from lrwa.tune.journal import journal_copy, lrwa_trials, status_of

    record = read_study_record(store) or {}
    with journal_copy(store) as optuna_study:  # the journal's trials by lrwa trial id
        journal = lrwa_trials(optuna_study) if optuna_study is not None else {}
    if not journal or not isinstance(record.get("file"), Mapping):
        return load_trials(store), load_curves(store)
    study = parse_study(record["file"], str(record.get("source")))
    heal_views(store, study, journal, out)
    trials = load_trials(store)
    running = [curve_table(store, trial_id, study.searched,
                           study.trial_settings(trial.params), rows)
               for trial_id, trial in journal.items() if status_of(trial) == UNFINISHED
               and (rows := ray_rows(store, trial_id))]
    return trials, load_curves(store, running)
