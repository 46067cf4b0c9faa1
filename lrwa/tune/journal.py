"""The Optuna journal: the one record of each trial's state, and how a trial's end is told.

The journal is an append-only log that the driver alone writes (Ray Tune's
`OptunaSearch` asks it for new trials; `record_outcome` tells it how each ended).
In a folder storage it is the study's `optuna.journal` itself. With an object store
the driver works on a local copy (Optuna's file backend needs a local file), a cache
of the stored journal and never its source: `pull_journal` makes the cache hold what
the store holds (a study whose stored journal is gone has none), `push_journal` sends
what was appended since the last push as a part of its own, and `compact_journal`
writes the whole file again at the end of a session.

Before a driver uses the journal, `heal_journal` checks it: a torn last record (a
crash mid-append leaves one) is dropped with one notice; any other damage is refused
in one line naming the file, never left for Optuna or Ray to trip over.

A trial's end is told once: its objective values (the curve statistics), the user
attributes that link it to lrwa, then its state; a trial already finished is left
alone. Stopped-early trials are PRUNED and errored ones FAIL, so TPE and
optuna-dashboard rank only whole runs, as `lrwa report` does. Per-epoch values are not
copied into the journal: the curve is in curves/.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from lrwa.atomic import write_with
from lrwa.errors import LrwaError
from lrwa.tune.internals import is_journal_record, study_storage
from lrwa.tune.layout import (
    COMPLETED,
    ERROR_ATTR,
    ERRORED,
    JOURNAL_PARTS,
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


# Object stores: how many bytes of the local copy the store holds, by study location.
_SENT: dict[str, int] = {}


def stored_journal(store: StudyStore) -> bytes | None:
    """The journal as the store holds it: `optuna.journal`, then the parts appended since
    it was last written whole (`journal_parts`), each named by the offset it starts at;
    None when there is neither. A folder storage's journal is its one file."""
    base = store.read_bytes(OPTUNA_FILE)
    parts = store.list_files(JOURNAL_PARTS) if store.remote else []
    if not parts:
        return base
    data = base or b""
    for part in parts:
        chunk = store.read_bytes(part) or b""
        offset = int(part.rpartition("/")[2].partition(".")[0])
        if offset > len(data) or data[offset:offset + len(chunk)] != chunk[:len(data) - offset]:
            raise damaged_journal(store, f"{part} does not continue it")
        data += chunk[len(data) - offset:]  # a part already in the whole file adds nothing
    return data


def pull_journal(store: StudyStore) -> None:
    """Object stores: make the local cache hold what the store holds. A study whose stored
    journal is gone has none, whatever the cache says; lines the cache holds beyond the
    stored ones (a driver on this machine died before sending them) are kept and sent."""
    if not store.remote:
        return
    stored = stored_journal(store)
    path = store.journal_file()
    _SENT[store.location()] = len(stored or b"")
    if stored is None:
        path.unlink(missing_ok=True)
        return
    local = path.read_bytes() if path.is_file() else b""
    if local.startswith(stored) and local.endswith(b"\n"):
        push_journal(store)
    else:
        write_with(path, lambda sink: sink.write(stored))


def push_journal(store: StudyStore) -> None:
    """Object stores: send what the local copy gained since the last push, as one part (the
    traffic of a change is the change, not the whole journal)."""
    path = store.journal_file()
    if not store.remote or not path.is_file():
        return
    sent = _SENT.get(store.location(), 0)
    with open(path, "rb") as journal:
        journal.seek(sent)
        new = journal.read()
    if new:
        store.write_bytes(f"{JOURNAL_PARTS}/{sent:016d}.jsonl", new)
        _SENT[store.location()] = sent + len(new)


def compact_journal(store: StudyStore) -> None:
    """Object stores, at the end of a session: the whole journal in `optuna.journal` again,
    its parts gone (written first, so a reader meets every record at every instant)."""
    path = store.journal_file()
    if not store.remote or not path.is_file():
        return
    push_journal(store)
    if store.list_files(JOURNAL_PARTS):
        store.write_bytes(OPTUNA_FILE, path.read_bytes())
        store.delete(JOURNAL_PARTS)


def damaged_journal(store: StudyStore, problem: str) -> LrwaError:
    return LrwaError(f"{store.location(OPTUNA_FILE)} is damaged ({problem}); restore it from a "
                     "copy, or pass --restart to move the study aside and start over")


def heal_journal(store: StudyStore, out: Callable[[str], None]) -> None:
    """Drop a torn last record (one notice); refuse, in one line, any other damage."""
    path = store.journal_file()
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        kept = data.rfind(b"\n") + 1
        with open(path, "r+b") as journal:
            journal.truncate(kept)
            os.fsync(journal.fileno())
        if store.remote:  # the store's copy is rewritten whole, without the torn record
            store.write_bytes(OPTUNA_FILE, data[:kept])
            store.delete(JOURNAL_PARTS)
            _SENT[store.location()] = kept
        out(f"{store.location(OPTUNA_FILE)}: dropped a torn last record ({len(data) - kept} "
            "bytes, left by a crash while it was written)")
        data = data[:kept]
    _refuse_damage(store, data)


def _refuse_damage(store: StudyStore, data: bytes) -> None:
    for number, line in enumerate(data.splitlines(), start=1):
        if not is_journal_record(line):
            raise damaged_journal(store, f"line {number} is not an Optuna journal record")


def open_optuna_study(store: StudyStore, path: Path | None = None) -> optuna.Study | None:
    """The study's Optuna study, from its journal (or `path`, a copy of it), or None when
    the journal holds none yet."""
    path = path or store.journal_file()
    if not path.is_file():
        return None
    try:
        storage = JournalStorage(JournalFileBackend(str(path)))
        if not any(summary.study_name == store.name
                   for summary in storage.get_all_studies()):
            return None
        return optuna.load_study(study_name=store.name, storage=storage)
    except (AssertionError, KeyError, ValueError, TypeError) as error:
        # Records that each parse but do not replay (edited by hand, from another study).
        raise damaged_journal(store, f"Optuna cannot replay it: {type(error).__name__}") \
            from None


@contextlib.contextmanager
def journal_copy(store: StudyStore) -> Iterator[optuna.Study | None]:
    """The Optuna study of the journal as the store holds it, read from a private copy (a
    reader never takes the driver's locks) without a torn last record; None when there is
    none yet. Any other damage is refused in one line."""
    data = stored_journal(store) or b""
    data = data[:data.rfind(b"\n") + 1]  # a torn last record is not yet a record
    _refuse_damage(store, data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="lrwa-journal-") as folder:
        copy = Path(folder, OPTUNA_FILE)
        copy.write_bytes(data)
        yield open_optuna_study(store, copy)


class TrialIndex:
    """The journal's trials by lrwa's trial id, kept up to date as trials are added, so
    finding one costs O(1) amortized instead of a pass over every trial."""

    def __init__(self, optuna_study: optuna.Study) -> None:
        self.study = optuna_study
        self.storage = study_storage(optuna_study)
        self.study_id = self.storage.get_study_id_from_name(optuna_study.study_name)
        self._internal: dict[str, int] = {}  # lrwa trial id -> Optuna's trial id
        self._scanned = 0                     # trial numbers below this were looked at
        self._untagged: set[int] = set()      # looked at before lrwa's id was set

    def _look(self, internal: int) -> None:
        trial_id = self.storage.get_trial(internal).user_attrs.get(TRIAL_ID_ATTR)
        if trial_id is None:
            self._untagged.add(internal)
        else:
            self._untagged.discard(internal)
            self._internal[str(trial_id)] = internal

    def _scan_new(self) -> None:
        for internal in list(self._untagged):
            self._look(internal)
        while True:
            try:
                internal = self.storage.get_trial_id_from_study_id_trial_number(
                    self.study_id, self._scanned)
            except KeyError:
                return
            self._look(internal)
            self._scanned += 1

    def _scan_all(self) -> None:
        self._internal, self._scanned, self._untagged = {}, 0, set()
        self._scan_new()

    def internal_id(self, trial_id: str) -> int | None:
        """As last seen, else among the trials added since, else among all again: a trial
        re-tagged since it was seen (a lost trial handed on, `search.py`)."""
        for look_again in (self._scan_new, self._scan_all):
            internal = self._internal.get(trial_id)
            if internal is not None and self.storage.get_trial(internal).user_attrs.get(
                    TRIAL_ID_ATTR) == trial_id:
                return internal
            look_again()
        return self._internal.get(trial_id)

    def get(self, trial_id: str) -> FrozenTrial | None:
        internal = self.internal_id(trial_id)
        return None if internal is None else self.storage.get_trial(internal)


def lrwa_trials(optuna_study: optuna.Study) -> dict[str, FrozenTrial]:
    """The journal's trials by lrwa's trial id (trials never linked to one are left out)."""
    return {str(trial.user_attrs[TRIAL_ID_ATTR]): trial
            for trial in optuna_study.get_trials(deepcopy=False)
            if trial.user_attrs.get(TRIAL_ID_ATTR) is not None}


def status_of(trial: FrozenTrial) -> str:
    return OPTUNA_STATES.get(trial.state.name, UNFINISHED)


def set_attrs(index: TrialIndex, trial_id: str, attrs: Mapping[str, Any]) -> None:
    internal = index.internal_id(trial_id)
    if internal is None:
        return
    current = index.storage.get_trial(internal).user_attrs
    for key, value in attrs.items():
        if current.get(key) != value:
            index.storage.set_trial_user_attr(internal, key, value)


def record_outcome(index: TrialIndex, trial_id: str, status: str,
                   summary: Mapping[str, Any], objectives: Sequence[Any],
                   attrs: Mapping[str, Any]) -> str:
    """Tell the journal how trial `trial_id` ended (once); returns the status it now holds.
    `summary`: the curve statistics of the trial (`results.curve_summary`)."""
    trial = index.get(trial_id)
    if trial is None:
        return UNFINISHED
    if trial.state.is_finished():
        return status_of(trial)
    values = [float(summary.get(objective.metric, math.nan)) for objective in objectives]
    if status == COMPLETED and not all(math.isfinite(value) for value in values):
        status = ERRORED
        attrs = {**attrs, ERROR_ATTR: "the objective is not a number (no evaluated epoch?)"}
    set_attrs(index, trial_id, attrs)
    index.study.tell(trial.number, values=values if status == COMPLETED else None,
                     state=STATE_OF_STATUS[status], skip_if_finished=True)
    return status
