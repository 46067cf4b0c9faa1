"""The study's searcher: Ray Tune's `OptunaSearch`, linked to lrwa's trials and signed.

`StudySearch` asks Optuna for each new trial and tags the journal trial with lrwa's
trial id at once, so the journal and the study's files name the same trials. It
leaves every trial's end to `recorder.StudyRecorder`, which tells the journal once,
from the trial's whole curve (OptunaSearch would report the Tune iteration instead
of the epoch, mark ASHA-stopped trials COMPLETE, and fail on a report that Ray
replays for a trial that has already finished).

A driver killed after Optuna gave it a trial and before Ray next saved its experiment
state (Ray saves at most every 10 s) leaves a journal trial that the restored Ray never
heard of: Ray asks for a new trial in its place. The restored searcher hands it the lost
trial instead of asking Optuna again, so the journal keeps one trial per trial of the
budget; the lost trial's partial curve goes, since the trial runs again from its
first epoch under Ray's new id. A trial is lost only if the experiment state Tune
restored does not hold it: the searcher's own saved state can be older (Tune uploads
the two files one after the other), and judging by it alone handed a trial Tune was
resuming to a second trial, which then ran the same configuration. A lost trial can also
have ended (the driver died after the journal heard its end): it keeps its place in the
budget, so the restored searcher tells Tune the search is finished once the journal holds
the budget's trials, where Tune would have asked for one trial too many.

`SignedSearchGenerator` is the search algorithm Tune drives: after Tune saves its
experiment state to the driver's staging folder, and before that folder is uploaded,
it signs what was written (`integrity.record_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from lrwa.tune.integrity import record_state, restored_trials
from lrwa.tune.internals import (
    adopt_trial,
    mark_ended,
    repoint_searcher,
    searcher_study,
    searcher_trials,
)
from lrwa.tune.journal import journal_storage
from lrwa.tune.layout import TRIAL_ID_ATTR
from lrwa.tune.results import delete_curve
from lrwa.tune.storage import StudyStore


class StudySearch(OptunaSearch):
    # Set on a restored searcher only (`SignedSearchGenerator.restore_from_dir`): the
    # study, and the trials of the experiment state Tune restored.
    _adopting_for: StudyStore | None = None
    _restored_trials: frozenset[str] = frozenset()
    _lost: list[FrozenTrial] | None = None
    budget: int | None = None  # the study's trials (set by the runner; pickled with it)
    _in_journal = 0  # a restored searcher: the journal's trials, those it adds included

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        trials = searcher_trials(self)
        if trial_id not in trials and self._adopting_for is not None:
            if self._lost is None:  # known: Tune's restored trials too (module docstring)
                self._lost = lost_trials(searcher_study(self),
                                         known=set(trials) | self._restored_trials)
                self._in_journal = len(searcher_study(self).get_trials(deepcopy=False))
            if self._lost:
                lost = self._lost.pop(0)
                previous = lost.user_attrs.get(TRIAL_ID_ATTR)
                if previous is not None:
                    delete_curve(self._adopting_for, str(previous))
                adopt_trial(self, trial_id, lost.number)
            elif self.budget is not None and self._in_journal >= self.budget:
                # A trial that ended before Ray recorded it still fills its place in the
                # budget: Ray, not knowing it, asks for one trial too many.
                return Searcher.FINISHED
            else:
                self._in_journal += 1  # Optuna is asked for a new trial below
        params = super().suggest(trial_id)
        journal_trial = searcher_trials(self)[trial_id]
        if journal_trial.user_attrs.get(TRIAL_ID_ATTR) != trial_id:
            journal_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """The recorder tells the journal how the trial ended, from its whole curve."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """The recorder tells the journal how the trial ended."""
        mark_ended(self, trial_id)


class SignedSearchGenerator(SearchGenerator):
    def __init__(self, searcher: Any, store: StudyStore) -> None:
        super().__init__(searcher)
        self.store = store

    def save_to_dir(self, dirpath: str, session_str: str) -> None:
        super().save_to_dir(dirpath, session_str)
        # Tune has written the experiment state before the searcher's; both now lie in
        # the staging folder, and the upload starts after this returns.
        record_state(self.store, Path(dirpath))

    def restore_from_dir(self, dirpath: str) -> None:
        """The restored searcher's journal handle names the file of the machine that saved
        it; point it at this machine's journal (the same study, brought up to date)."""
        super().restore_from_dir(dirpath)
        searcher = self.searcher
        while hasattr(searcher, "searcher"):
            searcher = searcher.searcher
        storage = journal_storage(self.store)
        sampler = searcher_study(searcher).sampler
        # The sampler's random state is as old as the saved searcher; trials asked for
        # since then drew from it already. Left as it is, the next trial would draw the
        # same numbers as a trial the kill lost (F1: two trials, one configuration).
        sampler.reseed_rng()
        study = optuna.load_study(study_name=self.store.name, storage=storage,
                                  sampler=sampler)
        repoint_searcher(searcher, storage, study)
        searcher._adopting_for = self.store
        searcher._restored_trials = frozenset(restored_trials(self.store))
        searcher._lost = None


def lost_trials(optuna_study: optuna.Study, known: set[str]) -> list[FrozenTrial]:
    """Journal trials still running that Ray does not know (`known`: the trial ids of Ray's
    restored state), oldest first: the driver died before Ray recorded them."""
    return [trial for trial in optuna_study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))
            if trial.user_attrs.get(TRIAL_ID_ATTR) not in known]
