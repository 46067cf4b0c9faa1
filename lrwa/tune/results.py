"""A study's results as Parquet, written and read here: per-trial curves and the trial table.

    curves/<trial_id>.parquet   a trial's curve once it has ended: one row per epoch
                                (study, trial_id, epoch, the searched values, mode, replay,
                                seed, every engine metric)
    trials.parquet              one row per trial

While a trial runs, its epochs are in Ray's own record of its reports
(`ray/<trial_id>/result.json`) and in the driver's memory; its curve file is written
once, when it ends, so an epoch costs the driver an append and no write. Both files are
views (`views.py` rebuilds them). Column types are fixed per study, so the files always
unify; every file carries its own `trial_id` as a string column.

`load_study(location)` reads both back as pandas frames, from a folder or an object
store, without copying anything locally.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lrwa.errors import LrwaError, first_line
from lrwa.summary import curve_statistics
from lrwa.tune.layout import (
    CURVES_DIR,
    EPOCH_METRICS,
    OBJECTIVE_METRICS,
    STUDY_FORMAT,
    STUDY_JSON,
    TRIALS_FILE,
    VERSION_KEYS,
    probe_columns,
)
from lrwa.tune.storage import StudyStore, open_study_location
from lrwa.tune.study import VARIANT, field_kind

Row = Mapping[str, Any]
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}


def config_column_type(name: str) -> pa.DataType:
    """The Arrow type of a DistillConfig key, from its annotation (a variant is its name)."""
    return pa.string() if name == VARIANT else _ARROW_TYPES[field_kind(name)]


def setting_columns(searched: Sequence[str]) -> list[str]:
    return list(dict.fromkeys([*searched, "mode", "replay", "seed"]))  # each once


def _schema(searched: Sequence[str], first: list[tuple[str, pa.DataType]],
            floats: Sequence[str], last: Sequence[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    return pa.schema([("study", pa.string()), ("trial_id", pa.string()), *first,
                      *[(name, config_column_type(name)) for name in setting_columns(searched)],
                      *[(name, pa.float64()) for name in floats], *last])


def curve_schema(searched: Sequence[str], probes: Sequence[str] = ()) -> pa.Schema:
    return _schema(searched, [("epoch", pa.int64())], (*EPOCH_METRICS, *probes))


def curve_path(trial_id: str) -> str:
    return f"{CURVES_DIR}/{trial_id}.parquet"


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def parquet_table(data: bytes) -> pa.Table:
    """A Parquet file's bytes as a table, decoded on the calling thread: Arrow's thread
    pool reading an in-memory buffer sometimes aborts the process at exit
    (apache/arrow#33975)."""
    # Every page carries a checksum (`_parquet_bytes`), so damaged bytes fail here instead
    # of reading back as misspelt columns or wrong values.
    return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True).read(
        use_threads=False)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, write_page_checksum=True)
    return sink.getvalue()


def curve_table(store: StudyStore, trial_id: str, searched: Sequence[str],
                settings: Mapping[str, Any], rows: Sequence[Row]) -> pa.Table:
    probes = probe_columns(name for row in rows for name in row)
    columns: dict[str, list[Any]] = {
        "study": [store.name] * len(rows), "trial_id": [trial_id] * len(rows),
        "epoch": [int(row["epoch"]) for row in rows],
        **{name: [settings[name]] * len(rows) for name in setting_columns(searched)},
        **{name: [_number(row.get(name)) for row in rows] for name in (*EPOCH_METRICS, *probes)},
    }
    return pa.Table.from_pydict(columns, schema=curve_schema(searched, probes))


def write_curve(store: StudyStore, trial_id: str, searched: Sequence[str],
                settings: Mapping[str, Any], rows: Sequence[Row]) -> None:
    """Write the trial's whole curve (once, when it ends, or when a view is rebuilt)."""
    table = curve_table(store, trial_id, searched, settings, rows)
    store.write_bytes(curve_path(trial_id), _parquet_bytes(table))


def delete_curve(store: StudyStore, trial_id: str) -> None:
    store.delete(curve_path(trial_id))


def read_parquet(store: StudyStore, relative: str,
                 convert: Callable[[pa.Table], Any] = lambda table: table) -> Any:
    """The Parquet file `relative` through `convert`, or None when it is missing or damaged
    (the caller rebuilds or skips it)."""
    data = store.read_bytes(relative)
    try:
        return convert(parquet_table(data)) if data else None
    except (pa.ArrowException, OSError, ValueError):  # damaged bytes fail in many ways
        return None


def read_curve_rows(store: StudyStore, trial_id: str) -> list[dict[str, Any]]:
    """A trial's curve file's rows (none when it has none yet, or an unreadable one)."""
    return read_parquet(store, curve_path(trial_id), pa.Table.to_pylist) or []


def replace_from(rows: Sequence[Row], row: Row) -> list[dict[str, Any]]:
    """`rows` with `row` in place of every row from its epoch on."""
    epoch = int(row["epoch"])
    return [dict(kept) for kept in rows if int(kept["epoch"]) < epoch] + [dict(row)]


def curve_summary(rows: Sequence[Row], warmup_epochs: int) -> dict[str, Any]:
    """The accuracy statistics of a curve (the *_after_warmup pair without its first
    `warmup_epochs` rows), and how many epochs it holds."""
    return {**curve_statistics([_number(row.get("test_acc")) for row in rows], warmup_epochs),
            "epochs_run": max((int(row["epoch"]) for row in rows), default=0),
            "wall_s": sum(_number(row.get("wall_s")) for row in rows) if rows else None}


# -- the trial table -----------------------------------------------------------------------

def trials_schema(searched: Sequence[str]) -> pa.Schema:
    string, integer = pa.string(), pa.int64()
    return _schema(searched, [("number", integer), ("status", string), ("error", string)],
                   (*OBJECTIVE_METRICS, "teacher_acc", "teacher_gap"),
                   [("epochs_run", integer), ("epochs", integer), ("wall_s", pa.float64()),
                    ("run_dir", string), ("config", string),
                    *[(f"version_{name}", string) for name in VERSION_KEYS]])


def _trials_cell(field: pa.Field, value: Any) -> Any:
    if field.name == "config" and isinstance(value, Mapping):
        return json.dumps(dict(value))
    return float(value) if pa.types.is_floating(field.type) and value is not None else value


def write_trials_table(store: StudyStore, searched: Sequence[str],
                       records: Sequence[Row]) -> None:
    """Replace trials.parquet with one row per record (missing values become null)."""
    schema = trials_schema(searched)
    columns = {field.name: [_trials_cell(field, record.get(field.name)) for record in records]
               for field in schema}
    store.write_bytes(TRIALS_FILE, _parquet_bytes(pa.Table.from_pydict(columns, schema=schema)))


# -- reading a study back ------------------------------------------------------------------

def _unreadable(store: StudyStore, relative: str, error: BaseException) -> LrwaError:
    return LrwaError(f"{store.location(relative)} cannot be read ({first_line(error)[:160]}); "
                     "it may be truncated or not written by lrwa")


def load_curves(store: StudyStore, running: Sequence[pa.Table] = ()) -> pd.DataFrame:
    """Every curve file's rows and the `running` trials' ones, one row per (trial, epoch),
    sorted by trial and epoch. Damaged files are left out here; `views.heal_views`
    rebuilds them."""
    tables = [table for path in store.list_files(CURVES_DIR, recursive=False)
              if path.endswith(".parquet") and not path.rpartition("/")[2].startswith(".")
              and (table := read_parquet(store, path)) is not None] + list(running)
    if not tables:
        return pd.DataFrame()
    try:
        curves = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, OSError) as error:
        raise _unreadable(store, CURVES_DIR, error) from None
    return curves.sort_values(["trial_id", "epoch"], kind="stable").reset_index(drop=True)


def load_trials(store: StudyStore) -> pd.DataFrame:
    data = store.read_bytes(TRIALS_FILE)
    if data is None:
        return pd.DataFrame()
    try:
        return parquet_table(data).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as error:
        raise _unreadable(store, TRIALS_FILE, error) from None


def read_study_record(store: StudyStore) -> dict[str, Any] | None:
    """study.json of the study, or None when there is none (or not an lrwa one)."""
    return store.read_record(STUDY_JSON, STUDY_FORMAT)


def open_results(location: str) -> StudyStore:
    """The store of an existing study, refused in one line when it holds no lrwa study."""
    store = open_study_location(location)
    if read_study_record(store) is None:
        where = store.location()
        if not store.exists():
            raise LrwaError(f"study {where} does not exist")
        raise LrwaError(f"{where} is not an lrwa study (no readable {STUDY_JSON})")
    return store


def load_study(location: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of the study at `location` (its folder, or
    `s3://bucket/prefix/<study>`) as pandas frames, after rebuilding any view that is
    missing or damaged (a notice on stderr names what was rebuilt)."""
    import sys

    from lrwa.tune.views import read_views

    store = open_results(str(location))
    return read_views(store, lambda line: print(f"lrwa: note: {line}", file=sys.stderr))
