"""The Optuna journal: the one record of each trial's state, and how a trial's end is told.

The journal is an append-only log that the driver alone writes (Ray Tune's
`OptunaSearch` asks it for new trials; `record_outcome` tells it how each ended).
In a folder storage it is the study's `optuna.journal` itself. With an object store
the driver works on a local copy (Optuna's file backend needs a local file): it is
uploaded after every change of a trial's state, and on start the longer of the
stored and the local copy is kept, after checking that the shorter is a prefix of
it, so a head node that died with unsent lines loses nothing another head needs.

A trial's end is told once: `record_outcome` writes the objective at every epoch
(from the trial's curve, so the two agree exactly), the user attributes that link it
to lrwa, then its state, and does nothing for a trial that is already finished.
Stopped-early trials are PRUNED and errored ones FAIL, so TPE and optuna-dashboard
rank only whole runs, as `lrwa report` does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lrwa.errors import LrwaError
from lrwa.tune.layout import (
    COMPLETED,
    ERROR_ATTR,
    ERRORED,
    OPTUNA_FILE,
    OPTUNA_STATES,
    STOPPED_EARLY,
    TRIAL_ID_ATTR,
    UNFINISHED,
)
from lrwa.tune.storage import StudyStore

STATE_OF_STATUS = {COMPLETED: TrialState.COMPLETE, STOPPED_EARLY: TrialState.PRUNED,
                   ERRORED: TrialState.FAIL}


def journal_storage(store: StudyStore) -> JournalStorage:
    path = store.journal_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def pull_journal(store: StudyStore) -> None:
    """Object stores: bring the local working copy up to date with the stored one."""
    if not store.remote:
        return
    stored = store.read_bytes(OPTUNA_FILE) or b""
    path = store.journal_file()
    local = path.read_bytes() if path.is_file() else b""
    if local.startswith(stored):
        return  # the local copy holds everything stored, and maybe lines not yet sent
    if not stored.startswith(local):
        raise LrwaError(f"{store.location(OPTUNA_FILE)} and the local copy {path} have "
                        "diverged (two drivers wrote this study); move one aside")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stored)


def push_journal(store: StudyStore) -> None:
    """Object stores: upload the local working copy of the journal."""
    if store.remote and store.journal_file().is_file():
        store.write_bytes(OPTUNA_FILE, store.journal_file().read_bytes())


def open_optuna_study(store: StudyStore) -> optuna.Study | None:
    """The study's Optuna study, or None when the journal holds none yet."""
    if not store.journal_file().is_file():
        return None
    storage = journal_storage(store)
    if not any(summary.study_name == store.name for summary in storage.get_all_studies()):
        return None
    return optuna.load_study(study_name=store.name, storage=storage)


def lrwa_trials(optuna_study: optuna.Study) -> dict[str, FrozenTrial]:
    """The journal's trials by lrwa's trial id (trials never linked to one are left out)."""
    found = {}
    for trial in optuna_study.get_trials(deepcopy=False):
        trial_id = trial.user_attrs.get(TRIAL_ID_ATTR)
        if trial_id is not None:
            found[str(trial_id)] = trial
    return found


def status_of(trial: FrozenTrial) -> str:
    return OPTUNA_STATES.get(trial.state.name, UNFINISHED)


def set_attrs(optuna_study: optuna.Study, trial: FrozenTrial, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        if trial.user_attrs.get(key) != value:
            optuna_study._storage.set_trial_user_attr(trial._trial_id, key, value)


def record_outcome(optuna_study: optuna.Study, trial: FrozenTrial, status: str,
                   rows: Sequence[Mapping[str, Any]], objectives: Sequence[Any],
                   attrs: Mapping[str, Any]) -> str:
    """Tell the journal how `trial` ended (once); returns the status it now holds."""
    if trial.state.is_finished():
        return status_of(trial)
    values = [rows_statistic(rows, objective.metric) for objective in objectives]
    if status == COMPLETED and not all(math.isfinite(value) for value in values):
        status = ERRORED
        attrs = {**attrs, ERROR_ATTR: "the objective is not a number (no evaluated epoch?)"}
    storage = optuna_study._storage
    if len(objectives) == 1:
        # Optuna keeps one objective value per step; the epoch is the step, and the
        # value the same curve statistic the trial reported at that epoch.
        for index in range(len(rows)):
            value = rows_statistic(rows[:index + 1], objectives[0].metric)
            if math.isfinite(value):
                storage.set_trial_intermediate_value(trial._trial_id, int(rows[index]["epoch"]),
                                                     value)
    set_attrs(optuna_study, trial, attrs)
    optuna_study.tell(trial.number, values=values if status == COMPLETED else None,
                      state=STATE_OF_STATUS[status], skip_if_finished=True)
    return status


def rows_statistic(rows: Sequence[Mapping[str, Any]], metric: str) -> float:
    from lrwa.tune.results import curve_summary

    return float(curve_summary(rows)[metric]) if rows else math.nan
