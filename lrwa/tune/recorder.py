"""The driver's record of a running study: a Ray Tune callback, the only writer of the
study's curves, its trial table and the trial states in the Optuna journal.

Each epoch a trial reports reaches `on_trial_result`, which replaces the trial's curve
from that epoch on (`results.replace_from`) and prints one line. When Tune ends a
trial, `_record_end` decides its status once (errored when it reported an error or Tune
saw it fail, completed when it reached the last epoch, stopped early otherwise), tells
the journal (`journal.record_outcome`) and rebuilds trials.parquet. A trial the journal
already holds as finished is never changed again, so a result Ray replays after a
restore from an older experiment state is ignored.

Tune pickles this callback with the Tuner and brings the pickled copy back on restore,
so it holds only plain values; what belongs to one invocation (where lines go) is
looked up in `SESSIONS` by the study's location.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray.tune import Callback

from lrwa.tune.journal import (
    lrwa_trials,
    open_optuna_study,
    push_journal,
    record_outcome,
    set_attrs,
    status_of,
)
from lrwa.tune.layout import (
    COMPLETED,
    EPOCH_METRICS,
    ERROR_ATTR,
    ERROR_KEY,
    ERRORED,
    RAY_DIR,
    RUN_DIR_ATTR,
    STATUSES,
    STOPPED_EARLY,
    TRIAL_ID_ATTR,
    TRIALS_FILE,
    UNFINISHED,
    VERSION_KEYS,
    VERSIONS_ATTR,
)
from lrwa.tune.results import (
    curve_summary,
    parquet_table,
    read_curve_rows,
    replace_from,
    trials_schema,
    write_curve,
    write_trials_table,
)
from lrwa.tune.search import lost_trials
from lrwa.tune.storage import StudyStore
from lrwa.tune.study import Study

Printer = Callable[[str], None]


def print_line(line: str) -> None:
    print(line, flush=True)


@dataclasses.dataclass
class Session:
    """One invocation's side of a running study: where lines go, and its time budget.

    The budget counts per invocation. When it runs out the driver interrupts Tune the
    way Ctrl+C does (SIGUSR1, which Tune catches once `fit` has started, i.e. after
    `setup`): running trials are saved as unfinished and a rerun continues them."""

    out: Printer = print_line
    budget_s: float | None = None
    budget_hit: bool = False
    timer: threading.Timer | None = None
    on_started: Callable[[], None] | None = None  # called once Tune's experiment exists

    def start_budget(self) -> None:
        if self.budget_s is None or self.timer is not None:
            return
        self.timer = threading.Timer(self.budget_s, self._stop)
        self.timer.daemon = True
        self.timer.start()

    def _stop(self) -> None:
        self.budget_hit = True
        os.kill(os.getpid(), signal.SIGUSR1)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


# The session of each study this process is running, by location (set by the runner).
SESSIONS: dict[str, Session] = {}


def _percent(value: Any) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "  -  " if missing else f"{100 * value:5.2f}%"


def params_text(params: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key}={show(value)}" for key, value in params.items())


def error_of_failed_trial(trial: Any) -> str:
    """One line from the error Tune recorded for a trial that failed outside the engine."""
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).is_file():
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:500]
    return "the trial failed outside the engine (see Ray's logs)"


class StudyRecorder(Callback):
    def __init__(self, study: Study, store: StudyStore) -> None:
        self.study = study
        self.store = store
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._optuna: Any = None
        self._reconciled = False

    def __getstate__(self) -> dict[str, Any]:
        return {"study": self.study, "store": self.store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["study"], state["store"])

    # -- helpers ------------------------------------------------------------------------

    def out(self, line: str) -> None:
        SESSIONS.get(self.store.location(), Session()).out(line)

    @property
    def optuna_study(self) -> Any:
        if self._optuna is None:
            self._optuna = open_optuna_study(self.store)
        return self._optuna

    def _journal_trial(self, trial_id: str) -> Any:
        return lrwa_trials(self.optuna_study).get(trial_id) if self.optuna_study else None

    def _rows_of(self, trial_id: str) -> list[dict[str, Any]]:
        if trial_id not in self._rows:
            self._rows[trial_id] = read_curve_rows(self.store, trial_id)
        return self._rows[trial_id]

    def _label(self, trial: Any, trials: list[Any]) -> str:
        number = next((index for index, other in enumerate(trials, start=1)
                       if other.trial_id == trial.trial_id), "?")
        return f"trial {number}/{self.study.trials} {trial.trial_id}"

    # -- Tune's events ------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        session = SESSIONS.get(self.store.location())
        if session is not None:
            session.start_budget()
            if session.on_started is not None:
                session.on_started()

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        from lrwa.provenance import versions

        journal_trial = self._journal_trial(trial.trial_id)
        if journal_trial is not None and not journal_trial.state.is_finished():
            set_attrs(self.optuna_study, journal_trial, {
                RUN_DIR_ATTR: f"{RAY_DIR}/{trial.trial_id}",
                VERSIONS_ATTR: {key: versions().get(key) for key in VERSION_KEYS}})
            push_journal(self.store)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if ERROR_KEY in result or "epoch" not in result:
            return
        journal_trial = self._journal_trial(trial.trial_id)
        if journal_trial is None or journal_trial.state.is_finished():
            return  # a replayed report of a trial whose end is already recorded
        row = {"epoch": int(result["epoch"]), **{name: result.get(name)
                                                for name in EPOCH_METRICS}}
        rows = replace_from(self._rows_of(trial.trial_id), row)
        self._rows[trial.trial_id] = rows
        settings = self.study.trial_settings(trial.config)
        write_curve(self.store, trial.trial_id, self.study.searched, settings, rows)
        summary = curve_summary(rows)
        self.out(f"{self._label(trial, trials)}  epoch {row['epoch']}/{self.study.epochs}  "
                 f"test_acc {_percent(row['test_acc'])}  best {_percent(summary['best_acc'])}"
                 f"  mean {_percent(summary['mean_acc'])}  {params_text(trial.config)}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._record_end(trial, trials, failure=None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self._record_end(trial, trials, failure=error_of_failed_trial(trial))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._fail_lost(trials)
        self.write_table()
        push_journal(self.store)

    # -- a trial's end, once ----------------------------------------------------------

    def _decide(self, trial: Any, failure: str | None) -> tuple[str, str | None]:
        result = trial.last_result or {}
        if failure is not None:
            return ERRORED, failure
        if result.get(ERROR_KEY):
            return ERRORED, str(result[ERROR_KEY])
        rows = self._rows_of(trial.trial_id)
        done = bool(rows) and int(rows[-1]["epoch"]) >= self.study.epochs
        return (COMPLETED if done else STOPPED_EARLY), None

    def _record_end(self, trial: Any, trials: list[Any], failure: str | None) -> None:
        journal_trial = self._journal_trial(trial.trial_id)
        if journal_trial is None or journal_trial.state.is_finished():
            return
        status, error = self._decide(trial, failure)
        attrs: dict[str, Any] = {}
        if error:
            attrs[ERROR_ATTR] = error
        teacher_acc = (trial.last_result or {}).get("teacher_acc")
        if teacher_acc is not None:
            attrs["teacher_acc"] = float(teacher_acc)
        status = record_outcome(self.optuna_study, journal_trial, status,
                                self._rows_of(trial.trial_id), self.study.objectives, attrs)
        summary = curve_summary(self._rows_of(trial.trial_id))
        numbers = (f": best {_percent(summary['best_acc'])}  mean "
                   f"{_percent(summary['mean_acc'])}" if status != ERRORED else f": {error}")
        self.out(f"{self._label(trial, trials)}  {status}{numbers}")
        self.write_table()
        push_journal(self.store)

    def _reconcile(self, trials: list[Any]) -> None:
        """At the first step of a session: trials Tune restored as finished whose end the
        journal lacks (a stale journal copy) are recorded now. Journal trials that Tune
        never recorded (the driver died in between) are left running: the restored
        searcher hands them to the trials Ray asks for in their place (`search.py`)."""
        if self.optuna_study is None:
            return
        known = {trial.trial_id: trial for trial in trials}
        for trial_id, journal_trial in lrwa_trials(self.optuna_study).items():
            trial = known.get(trial_id)
            if (trial is not None and not journal_trial.state.is_finished()
                    and trial.status in ("TERMINATED", "ERROR")):
                self._record_end(trial, trials, failure=None if trial.status == "TERMINATED"
                                 else error_of_failed_trial(trial))

    def _fail_lost(self, trials: list[Any]) -> None:
        """Once Ray has ended every trial of the budget, a journal trial it never heard of
        can no longer be handed on: it fails, so no trial stays RUNNING."""
        if self.optuna_study is None or len(trials) < self.study.trials or any(
                trial.status not in ("TERMINATED", "ERROR") for trial in trials):
            return
        for journal_trial in lost_trials(self.optuna_study,
                                         known={trial.trial_id for trial in trials}):
            if TRIAL_ID_ATTR in journal_trial.user_attrs:
                record_outcome(self.optuna_study, journal_trial, ERRORED, [], [],
                               {ERROR_ATTR: "lost: the driver stopped before Ray Tune "
                                            "recorded this trial"})
            else:  # asked of Optuna, never given to a trial: nothing to show for it
                self.optuna_study.tell(journal_trial.number, state=TrialState.FAIL,
                                       skip_if_finished=True)

    # -- the trial table ----------------------------------------------------------------

    def write_table(self) -> None:
        if self.optuna_study is None:
            return
        previous = load_trials_safely(self.store, self.study.searched)
        records = [self.record(trial_id, journal_trial, previous.get(trial_id))
                   for trial_id, journal_trial in lrwa_trials(self.optuna_study).items()]
        write_trials_table(self.store, self.study.searched, records)

    def record(self, trial_id: str, journal_trial: Any,
               previous: dict[str, Any] | None) -> dict[str, Any]:
        status = status_of(journal_trial)
        if (trial_id not in self._rows and previous is not None
                and previous.get("status") == status and status != UNFINISHED):
            return previous  # a finished trial's row never changes
        config = self.study.trial_settings(journal_trial.params)
        summary = curve_summary(self._rows_of(trial_id))
        attrs = journal_trial.user_attrs
        teacher_acc = attrs.get("teacher_acc")
        return {
            "study": self.store.name, "trial_id": trial_id, "number": journal_trial.number,
            "status": status, "error": attrs.get(ERROR_ATTR),
            **{key: config[key] for key in dict.fromkeys(
                [*self.study.searched, "mode", "replay", "seed"])},
            **{key: summary[key] for key in ("best_acc", "mean_acc", "final_acc", "var_acc",
                                             "max_drop", "epochs_run", "wall_s")},
            "teacher_acc": teacher_acc,
            "teacher_gap": (teacher_acc - summary["best_acc"]
                            if teacher_acc is not None else None),
            "epochs": config["epochs"], "run_dir": attrs.get(RUN_DIR_ATTR), "config": config,
            **{f"version_{key}": (attrs.get(VERSIONS_ATTR) or {}).get(key)
               for key in VERSION_KEYS},
        }


def load_trials_safely(store: StudyStore, searched: Sequence[str] | None = None
                       ) -> dict[str, dict[str, Any]]:
    """The previous trial table by trial id (empty when missing, unreadable or not of this
    study's schema: it is a view that is rebuilt)."""
    import pyarrow as pa

    data = store.read_bytes(TRIALS_FILE)
    if data is None:
        return {}
    try:
        table = parquet_table(data)
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError):  # damaged bytes fail in many ways
        return {}
    if not {"trial_id", "status"} <= set(table.column_names) or (
            searched is not None and not table.schema.equals(trials_schema(searched))):
        return {}
    return {str(row["trial_id"]): row for row in rows}


def count_statuses(store: StudyStore) -> dict[str, int]:
    counts = dict.fromkeys(STATUSES, 0)
    for row in load_trials_safely(store).values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return counts

