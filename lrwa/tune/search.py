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
first epoch under Ray's new id.

`SignedSearchGenerator` is the search algorithm Tune drives: after Tune saves its
experiment state to the driver's staging folder, and before that folder is uploaded,
it signs what was written (`integrity.record_state`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from lrwa.tune.integrity import record_state
from lrwa.tune.journal import journal_storage
from lrwa.tune.layout import TRIAL_ID_ATTR
from lrwa.tune.results import curve_path
from lrwa.tune.storage import StudyStore


class StudySearch(OptunaSearch):
    # Set on a restored searcher only (`SignedSearchGenerator.restore_from_dir`): where the
    # curves of lost trials are.
    _adopting_for: StudyStore | None = None

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials and self._adopting_for is not None:
            lost = lost_trials(self._ot_study, known=set(self._ot_trials))
            if lost:
                self._adopt(lost[0], trial_id)
        params = super().suggest(trial_id)
        journal_trial = self._ot_trials[trial_id]
        if journal_trial.user_attrs.get(TRIAL_ID_ATTR) != trial_id:
            journal_trial.set_user_attr(TRIAL_ID_ATTR, trial_id)
        return params

    def _adopt(self, lost: FrozenTrial, trial_id: str) -> None:
        previous = lost.user_attrs.get(TRIAL_ID_ATTR)
        if previous is not None and self._adopting_for is not None:
            self._adopting_for.delete(curve_path(str(previous)))
        self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, lost._trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """The recorder writes the per-epoch objective when the trial ends."""

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        """The recorder tells the journal how the trial ended."""
        self._completed_trials.add(trial_id)


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
        searcher._storage = journal_storage(self.store)
        searcher._ot_study = optuna.load_study(study_name=self.store.name,
                                               storage=searcher._storage,
                                               sampler=searcher._ot_study.sampler)
        searcher._ot_trials = {trial_id: optuna.trial.Trial(searcher._ot_study, trial._trial_id)
                               for trial_id, trial in searcher._ot_trials.items()}
        searcher._adopting_for = self.store


def lost_trials(optuna_study: optuna.Study, known: set[str]) -> list[FrozenTrial]:
    """Journal trials still running that Ray does not know (`known`: the trial ids of Ray's
    restored state), oldest first: the driver died before Ray recorded them."""
    return [trial for trial in optuna_study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))
            if trial.user_attrs.get(TRIAL_ID_ATTR) not in known]
