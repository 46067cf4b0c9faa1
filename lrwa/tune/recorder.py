"""The driver's record of a running study: a Ray Tune callback, the only writer of the
study's curves, its trial table and the trial states in the Optuna journal.

Each epoch a trial reports reaches `on_trial_result`, which appends it to the trial's
rows in memory (a replayed epoch e replaces the rows from e on) and prints one line; a
restarted driver recovers them from what Ray persisted (`views.ray_rows`). When Tune
ends a trial, `_record_end` decides its status once, tells the journal
(`journal.record_outcome`), writes the trial's curve file and updates its row of
trials.parquet. A trial the journal holds as finished is never changed again, so a
result Ray replays after a restore from an older experiment state is ignored.

A trial that fails outside the engine (its process, node or disk: Ray retried it from
its last checkpoint and gave up) is not told to the journal as failed: it stays
unfinished, with its error noted, and the next rerun resumes it from its last
checkpoint (Tune's `resume_errored`), so a full disk or a lost node never becomes a
permanent verdict on a configuration.

Every event costs the same however large the study: trials are found through
`journal.TrialIndex`, and trials.parquet is rewritten only as `TABLE_REWRITE_SHARE`
says and at the end of the experiment (readers heal it in between, `views.heal_views`).

Tune pickles this callback with the Tuner and brings the pickled copy back on restore,
so it holds only plain values; what belongs to one invocation (where lines go) is
looked up in `SESSIONS` by the study's location.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray.tune import Callback

from lrwa.provenance import versions
from lrwa.tune.commands import Printer, print_line
from lrwa.tune.journal import (
    TrialIndex,
    compact_journal,
    open_optuna_study,
    push_journal,
    record_outcome,
    set_attrs,
)
from lrwa.tune.layout import (
    COMPLETED,
    ERROR_ATTR,
    ERROR_KEY,
    ERRORED,
    RAY_DIR,
    RUN_DIR_ATTR,
    STOPPED_EARLY,
    TRIAL_ID_ATTR,
    VERSION_KEYS,
    VERSIONS_ATTR,
    epoch_values,
)
from lrwa.tune.results import (
    curve_summary,
    read_curve_rows,
    replace_from,
    write_curve,
    write_trials_table,
)
from lrwa.tune.search import lost_trials
from lrwa.tune.storage import StudyStore
from lrwa.tune.study import Study
from lrwa.tune.views import ray_rows, read_table_rows, trial_record


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
        if self.budget_s is not None and self.timer is None:
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
    return " ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in params.items())


def error_of_failed_trial(trial: Any) -> str:
    """One line from the error Tune recorded for a trial that failed outside the engine."""
    error_file = getattr(trial, "error_file", None)
    if error_file and Path(error_file).is_file():
        lines = [line for line in Path(error_file).read_text().splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:500]
    return "the trial failed outside the engine (see Ray's logs)"


# trials.parquet is rewritten once the rows changed since its last write reach this share
# of the table: each trial end then costs O(1) rows of encoding, amortized.
TABLE_REWRITE_SHARE = 8


class StudyRecorder(Callback):
    def __init__(self, study: Study, store: StudyStore) -> None:
        self.study = study
        self.store = store
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._numbers: dict[str, int] = {}
        self._index: TrialIndex | None = None
        self._unwritten = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"study": self.study, "store": self.store}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["study"], state["store"])

    # -- helpers ------------------------------------------------------------------------

    def out(self, line: str) -> None:
        SESSIONS.get(self.store.location(), Session()).out(line)

    @property
    def index(self) -> TrialIndex | None:
        if self._index is None:
            optuna_study = open_optuna_study(self.store)
            self._index = TrialIndex(optuna_study) if optuna_study is not None else None
        return self._index

    def _journal_trial(self, trial_id: str) -> Any:
        return self.index.get(trial_id) if self.index is not None else None

    def _rows_of(self, trial_id: str) -> list[dict[str, Any]]:
        if trial_id not in self._rows:  # once per trial and session: what Ray persisted
            self._rows[trial_id] = read_curve_rows(self.store, trial_id) or ray_rows(
                self.store, trial_id)
        return self._rows[trial_id]

    def _label(self, trial: Any, trials: list[Any]) -> str:
        if trial.trial_id not in self._numbers:
            # Tune appends trials in the order it makes them: number the new ones only.
            for number, other in enumerate(trials[len(self._numbers):],
                                           start=len(self._numbers) + 1):
                self._numbers.setdefault(other.trial_id, number)
        number = self._numbers.get(trial.trial_id)
        if number is None:  # not among Tune's trials (an end recorded before Tune starts)
            journal_trial = self._journal_trial(trial.trial_id)
            number = journal_trial.number + 1 if journal_trial is not None else "?"
        return f"trial {number}/{self.study.budget.trials} {trial.trial_id}"

    # -- Tune's events ------------------------------------------------------------------

    def setup(self, **info: Any) -> None:
        session = SESSIONS.get(self.store.location())
        if session is not None:
            session.start_budget()
            if session.on_started is not None:
                session.on_started()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        journal_trial = self._journal_trial(trial.trial_id)
        if journal_trial is not None and not journal_trial.state.is_finished():
            set_attrs(self.index, trial.trial_id, {
                RUN_DIR_ATTR: f"{RAY_DIR}/{trial.trial_id}",
                # `versions` asks git and every package once per process, then is cached.
                VERSIONS_ATTR: {key: versions().get(key) for key in VERSION_KEYS}})
            push_journal(self.store)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any,
                        result: dict[str, Any], **info: Any) -> None:
        if ERROR_KEY in result or "epoch" not in result:
            return
        journal_trial = self._journal_trial(trial.trial_id)
        if journal_trial is None or journal_trial.state.is_finished():
            return  # a replayed report of a trial whose end is already recorded
        row = {"epoch": int(result["epoch"]), **epoch_values(result)}
        rows = self._rows_of(trial.trial_id)
        if rows and int(rows[-1]["epoch"]) >= row["epoch"]:
            rows[:] = replace_from(rows, row)  # replayed after a restore
        else:
            rows.append(row)
        self.out(f"{self._label(trial, trials)}  epoch {row['epoch']}/{self.study.epochs}  "
                 f"test_acc {_percent(row['test_acc'])}  best "
                 f"{_percent(result.get('best_acc'))}  mean {_percent(result.get('mean_acc'))}"
                 f"  {params_text(trial.config)}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self._record_end(trial, trials, failure=None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self._record_end(trial, trials, failure=error_of_failed_trial(trial))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self._fail_lost(trials)
        self.write_table(force=True)
        compact_journal(self.store)

    # -- a trial's end, once ----------------------------------------------------------

    def _record_end(self, trial: Any, trials: list[Any], failure: str | None) -> None:
        journal_trial = self._journal_trial(trial.trial_id)
        if journal_trial is None or journal_trial.state.is_finished():
            return
        if failure is not None:
            # Outside the engine: no verdict on its configuration (module docstring).
            set_attrs(self.index, trial.trial_id, {ERROR_ATTR: failure})
            self.out(f"{self._label(trial, trials)}  failed: {failure} (a rerun resumes it "
                     "from its last checkpoint)")
            self._update_row(trial.trial_id)
            push_journal(self.store)
            return
        result = trial.last_result or {}
        error = str(result[ERROR_KEY]) if result.get(ERROR_KEY) else None
        rows = self._rows_of(trial.trial_id)
        done = bool(rows) and int(rows[-1]["epoch"]) >= self.study.epochs
        status = ERRORED if error else COMPLETED if done else STOPPED_EARLY
        attrs: dict[str, Any] = {ERROR_ATTR: error} if error else {}
        if result.get("teacher_acc") is not None:
            attrs["teacher_acc"] = float(result["teacher_acc"])
        if trial.checkpoint is not None:  # the run folder of its last epoch: student.pt
            attrs[RUN_DIR_ATTR] = f"{RAY_DIR}/{trial.trial_id}/{Path(trial.checkpoint.path).name}"
        settings = self.study.trial_settings(trial.config)
        summary = curve_summary(rows, settings["warmup_epochs"])
        status = record_outcome(self.index, trial.trial_id, status, summary,
                                self.study.objectives, attrs)
        if rows:
            write_curve(self.store, trial.trial_id, self.study.searched, settings, rows)
        numbers = (f": best {_percent(summary['best_acc'])}  mean "
                   f"{_percent(summary['mean_acc'])}" if status != ERRORED else f": {error}")
        self.out(f"{self._label(trial, trials)}  {status}{numbers}")
        self._update_row(trial.trial_id)
        self._rows.pop(trial.trial_id, None)
        push_journal(self.store)

    def record_restored_end(self, trial_id: str, params: dict[str, Any],
                            last_result: dict[str, Any]) -> None:
        """Before Tune starts: a trial that Tune's experiment state holds as ended and
        the journal as running (a journal that lost its last record, or a driver killed
        between the two) gets its end recorded now, from its curve and last result."""
        trial = types.SimpleNamespace(trial_id=trial_id, config=params,
                                      last_result=last_result, checkpoint=None)
        self._rows[trial_id] = max(self._rows_of(trial_id), ray_rows(self.store, trial_id),
                                   key=len)
        self._record_end(trial, [], failure=None)

    def _fail_lost(self, trials: list[Any]) -> None:
        """Once Ray has ended every trial of the budget, a journal trial it never heard of
        can no longer be handed on: it fails, so no trial stays RUNNING."""
        index = self.index
        if index is None or len(trials) < self.study.budget.trials or any(
                trial.status not in ("TERMINATED", "ERROR") for trial in trials):
            return
        for journal_trial in lost_trials(index.study, known={trial.trial_id for trial in trials}):
            trial_id = journal_trial.user_attrs.get(TRIAL_ID_ATTR)
            if trial_id is not None:
                record_outcome(index, str(trial_id), ERRORED, {}, [],
                               {ERROR_ATTR: "lost: the driver stopped before Ray Tune "
                                            "recorded this trial"})
                self._update_row(str(trial_id))
            else:  # asked of Optuna, never given to a trial: nothing to show for it
                index.study.tell(journal_trial.number, state=TrialState.FAIL,
                                 skip_if_finished=True)

    # -- the trial table ----------------------------------------------------------------

    @functools.cached_property
    def _table(self) -> dict[str, dict[str, Any]]:
        return read_table_rows(self.store, self.study.searched)

    def _update_row(self, trial_id: str) -> None:
        journal_trial = self._journal_trial(trial_id)
        if journal_trial is None:
            return
        self._table[trial_id] = trial_record(
            self.study, self.store, trial_id, journal_trial, self._rows_of(trial_id))
        self._unwritten += 1
        self.write_table(force=False)

    def write_table(self, force: bool = True) -> None:
        """Write trials.parquet from the rows held (at the end, or when enough changed)."""
        table = self._table
        if not table or not force and self._unwritten * TABLE_REWRITE_SHARE < len(table):
            return
        write_trials_table(self.store, self.study.searched,
                           sorted(table.values(), key=lambda row: row["number"]))
        self._unwritten = 0
