"""The console lines of a running study and its trial table, as a Tune callback.

One line per finished epoch of any trial and one per finished trial; Ray's own
tables stay off (`runner.quiet_ray`). `trials.parquet` is rewritten whenever a
trial ends and when the study stops, from the trials' run folders; with an object
store their small files are pulled first and the table and journal pushed after.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from lrwa.errors import LrwaError
from lrwa.provenance import versions
from lrwa.tune.curves import OPTUNA_FILE, TRIALS_FILE, write_trials_table
from lrwa.tune.space import to_python
from lrwa.tune.storage import StudyStorage
from lrwa.tune.study import Study
from lrwa.tune.trainable import ERROR_FILE, RUNS_DIR, run_dir_of

Printer = Callable[[str], None]
# What the trial table reads of a run folder (pulled from an object store when needed).
RECORD_FILES = ("summary.json", "config.yaml", ERROR_FILE)


def print_line(line: str) -> None:
    print(line, flush=True)


def _percent(value: Any) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:5.2f}%"


def _params_text(params: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key}={show(value)}" for key, value in params.items())


def _status_of(tune_status: str, summary: dict[str, Any] | None) -> str:
    if tune_status == "ERROR":
        return "errored"
    if tune_status == "TERMINATED":
        summary = summary or {}
        epochs = (summary.get("config") or {}).get("epochs")
        done = summary.get("complete") or (epochs and summary.get("epochs_run", 0) >= epochs)
        return "completed" if done else "stopped early"
    return "unfinished"


def _previous_statuses(study_dir: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(study_dir / TRIALS_FILE, columns=["trial_id", "status"])
    except (OSError, ValueError):
        return {}
    return dict(zip(table.column("trial_id").to_pylist(), table.column("status").to_pylist()))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _error_of(trial: Any, run_dir: Path) -> str | None:
    recorded = run_dir / ERROR_FILE
    if recorded.is_file():
        return recorded.read_text().strip()
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).is_file():
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
        return lines[-1].strip()[:500] if lines else "error (no message)"
    return "error outside the trial function (see Ray's logs)"


class StudyProgress(Callback):
    """A Tune callback: one console line per finished epoch and per finished trial, and
    `trials.parquet` rewritten whenever a trial ends. Tune pickles it with the Tuner and
    brings it back on restore, so it holds only plain values."""

    def __init__(self, study: Study, store: StudyStorage, out: Printer = print_line) -> None:
        self.name = study.name
        self.base = dict(study.base)
        self.store = store
        self.study_dir = str(store.study_dir(study.name))
        self.searched = study.searched
        self.trials = study.trials
        self.epochs = int(study.base["epochs"])
        self.out = out
        # How each trial ended in this session. Tune marks the trials it stops at an
        # interrupt TERMINATED too, so a trial that started here but never completed or
        # failed here is unfinished, and one not started here keeps its earlier status.
        self.finished: dict[str, str] = {}
        self.started: set[str] = set()

    def _index(self, trial: Any, trials: list[Any]) -> str:
        number = next((index for index, other in enumerate(trials, start=1)
                       if other.trial_id == trial.trial_id), "?")
        return f"trial {number}/{self.trials} {trial.trial_id}"

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self.started.add(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        self.started.add(trial.trial_id)
        self.out(f"{self._index(trial, trials)}  epoch {result.get('epoch')}/{self.epochs}  "
                 f"test_acc {_percent(result.get('test_acc'))}  best "
                 f"{_percent(result.get('best_acc'))}  mean {_percent(result.get('mean_acc'))}"
                 f"  {_params_text(trial.config)}")

    def _pull_record(self, trial_id: str, always: bool) -> None:
        run = f"{RUNS_DIR}/{trial_id}"
        if always or not (Path(self.study_dir) / run / "summary.json").is_file():
            for name in RECORD_FILES:
                self.store.pull(self.name, f"{run}/{name}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self.finished[trial.trial_id] = "TERMINATED"
        self._pull_record(trial.trial_id, always=True)
        summary = _read_json(run_dir_of(self.study_dir, trial.trial_id) / "summary.json")
        status = _status_of("TERMINATED", summary)
        numbers = (f": best {_percent(summary.get('best_acc'))}  mean "
                   f"{_percent(summary.get('mean_acc'))}" if summary else "")
        self.out(f"{self._index(trial, trials)}  {status}{numbers}")
        self.write_table(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self.finished[trial.trial_id] = "ERROR"
        self._pull_record(trial.trial_id, always=True)
        error = _error_of(trial, run_dir_of(self.study_dir, trial.trial_id))
        self.out(f"{self._index(trial, trials)}  errored: {error}")
        self.write_table(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.write_table(trials)

    def write_table(self, trials: list[Any]) -> None:
        previous = _previous_statuses(Path(self.study_dir))
        if self.store.remote:  # finished trials' files, once; running ones report later
            for trial in trials:
                if trial.status in ("TERMINATED", "ERROR"):
                    self._pull_record(trial.trial_id, always=False)
        records = [self.record(trial, previous) for trial in trials]
        write_trials_table(Path(self.study_dir), self.searched, records)
        self.store.push(self.name, [TRIALS_FILE, OPTUNA_FILE])

    def _status(self, trial: Any, summary: dict[str, Any],
                previous: dict[str, str]) -> str:
        if trial.trial_id in self.finished:
            return _status_of(self.finished[trial.trial_id], summary)
        if trial.trial_id in self.started or trial.status not in ("TERMINATED", "ERROR"):
            return "unfinished"
        return previous.get(trial.trial_id) or _status_of(trial.status, summary)

    def record(self, trial: Any, previous: dict[str, str]) -> dict[str, Any]:
        from lrwa.config import from_mapping

        run_dir = run_dir_of(self.study_dir, trial.trial_id)
        summary = _read_json(run_dir / "summary.json") or {}
        status = self._status(trial, summary, previous)
        config = summary.get("config")
        if config is None and (run_dir / "config.yaml").is_file():
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        if config is None:
            try:  # a trial that never started its run: its would-be config
                config = from_mapping(trial.config, base=from_mapping(self.base)).to_dict()
            except (LrwaError, AttributeError):
                config = dict(trial.config)
        record: dict[str, Any] = {
            "study": self.name, "trial_id": trial.trial_id, "status": status,
            "error": _error_of(trial, run_dir) if status == "errored" else None,
            **{key: to_python(config.get(key)) for key in (*self.searched, "mode", "replay",
                                                           "seed")},
            **{key: summary.get(key) for key in ("best_acc", "mean_acc", "final_acc",
                                                 "var_acc", "max_drop", "teacher_acc",
                                                 "teacher_gap")},
            "epochs_run": summary.get("epochs_run", 0), "epochs": config.get("epochs"),
            "wall_s": summary.get("wall_s"),
            "run_dir": str(Path(RUNS_DIR) / trial.trial_id), "config": config,
        }
        found = summary.get("versions") or versions()
        record.update({f"version_{key}": found.get(key) for key in found})
        return record
