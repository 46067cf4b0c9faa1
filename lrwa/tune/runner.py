"""Run a study: hold it, check its folder, then a new or restored Tuner to the budget.

A rerun of the same command continues the study: Ray Tune restores its experiment
state (after `integrity.verify_state` has checked it is what this study's driver
wrote), unfinished trials resume from their last checkpoint, and the journal keeps
every trial's state. A study whose trials have all ended is reported complete
without touching Ray. A storage holding another study's files is refused unless
`restart`, which moves them aside, never deletes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import ray
import yaml
from optuna.trial import FrozenTrial
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from lrwa.errors import LrwaError
from lrwa.provenance import versions
from lrwa.ray_capacity import cluster_capacity
from lrwa.ray_connect import connect_ray
from lrwa.run import Evaluation, resolve_teacher
from lrwa.tune.commands import Printer, print_line
from lrwa.tune.integrity import record_state, restored_trials, signing_key, verify_state
from lrwa.tune.internals import ENDED_STATUS, STRICT_METRIC_SWITCH
from lrwa.tune.journal import (
    damaged_journal,
    heal_journal,
    journal_storage,
    lrwa_trials,
    open_optuna_study,
    pull_journal,
    status_of,
)
from lrwa.tune.layout import (
    CURVES_DIR,
    DEFAULT_STORAGE,
    ERRORED,
    JOURNAL_PARTS,
    OPTUNA_FILE,
    RAY_DIR,
    RAY_STATE_FILE,
    STATUSES,
    STUDY_FORMAT,
    STUDY_JSON,
    STUDY_YAML,
    TRIALS_FILE,
    UNFINISHED,
)
from lrwa.tune.lock import hold_study
from lrwa.tune.recorder import SESSIONS, Session, StudyRecorder
from lrwa.tune.resources import check_cluster, trial_bundles
from lrwa.tune.results import read_study_record
from lrwa.tune.search import SignedSearchGenerator, StudySearch
from lrwa.tune.space import build_sampler, optuna_space
from lrwa.tune.storage import StudyStore, open_store
from lrwa.tune.study import Study
from lrwa.tune.trainable import FaultPlan, TrialContext, train_trial
from lrwa.tune.views import heal_views

# A trial whose process or node dies is retried from its last checkpoint this often.
MAX_TRIAL_RESTARTS = 3
CHECKPOINTS_KEPT = 2


@dataclasses.dataclass
class StudyOutcome:
    store: StudyStore
    resumed: bool
    statuses: dict[str, int]
    complete: bool           # every trial of the budget has ended
    budget_stopped: bool     # this invocation's time budget ran out
    ran: bool                # False when the study was already complete


# -- the study folder ----------------------------------------------------------------------

def prepare_study(study: Study, store: StudyStore, restart: bool, out: Printer) -> None:
    """Record the study in its folder, or check that the folder holds this very study."""
    for relative in [*store.list_files("", recursive=False), *store.list_files(CURVES_DIR)]:
        name = relative.rpartition("/")[2]
        if name.startswith(".") and name.endswith(".tmp"):
            store.delete(relative)  # a write a killed driver left half done
    record = read_study_record(store)
    fingerprint = study.fingerprint()
    if record is None and store.holds_anything():
        problem = "is not an lrwa study folder (or one of an older lrwa)"
    elif record is not None and record.get("hash") != fingerprint:
        problem = (f"was made from a different study (hash {record.get('hash')}, this file "
                   f"gives {fingerprint})")
    elif record is not None and record.get("location") != store.location():
        problem = f"was created at {record.get('location')} and has moved since"
    else:
        problem = None
    if problem and not restart:
        raise LrwaError(f"{store.location()} {problem}; pass --restart to move it aside and "
                        "start over, or choose another --storage")
    if restart and store.holds_anything():
        out(f"moved the previous study folder aside to {store.move_aside()}")
        record = None
    if record is None:
        store.write_bytes(STUDY_YAML, yaml.safe_dump(study.to_dict(), sort_keys=False).encode())
        store.write_bytes(STUDY_JSON, json.dumps(
            {"format": STUDY_FORMAT, "hash": fingerprint, "location": store.location(),
             "source": study.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "versions": versions(), "study": study.to_dict(),
             # The file's own terms, which `views.py` parses back to rebuild rows.
             "file": study.as_file()}, indent=2).encode())


def _set_aside_unrestorable(store: StudyStore, out: Printer) -> None:
    """A driver that died before Ray saved its first experiment state leaves a journal
    (and maybe a partial `ray/`) that nothing can resume; they go to `attempts/<time>/`."""
    leftovers = [name for name in (OPTUNA_FILE, JOURNAL_PARTS, CURVES_DIR, TRIALS_FILE,
                                   RAY_DIR, RAY_STATE_FILE) if store.exists(name)]
    if store.remote and store.journal_file().is_file():
        store.journal_file().unlink()
    if not leftovers:
        return
    aside = f"attempts/{time.strftime('%Y%m%d-%H%M%S')}"
    for name in leftovers:
        store.move(name, store.path(f"{aside}/{name}"))
    out(f"an earlier start stopped before Ray recorded anything; its files are in "
        f"{store.location(aside)}")


# -- Ray ---------------------------------------------------------------------------------------

def ensure_ray(num_cpus: int | None = None) -> bool:
    """Start a quiet local Ray (or join RAY_ADDRESS's) unless one is up; True if started.

    With a CPU count, a Ray of its own; without, Ray's default: RAY_ADDRESS or a running
    local cluster if there is one, else a new one with every core."""
    if ray.is_initialized():
        return False
    # An unreachable RAY_ADDRESS is refused in one line (and SIGTERM acts as Ctrl+C).
    connect_ray(address="local" if num_cpus else None, num_cpus=num_cpus,
                include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return True


@contextlib.contextmanager
def quiet_ray() -> Iterator[None]:
    """Tune's tables and log lines and Optuna's per-trial lines give way to lrwa's own."""
    with contextlib.ExitStack() as restore, warnings.catch_warnings():
        for logger in map(logging.getLogger, ("ray.tune", "ray.train", "ray.air", "ray.util")):
            restore.callback(logger.setLevel, logger.level)
            logger.setLevel(logging.CRITICAL)
        restore.callback(optuna.logging.set_verbosity, optuna.logging.get_verbosity())
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # RAY_AIR_NEW_OUTPUT=0: the legacy reporter honours verbose=0 fully. STRICT_METRIC_SWITCH
        # turns off Tune's check that every result names the searcher's metric, which would end
        # the whole study on a trial that returns without an epoch (one restored after its end
        # was recorded); lrwa's searcher reads no result, and ASHA skips results without one.
        for name, value in (("RAY_AIR_NEW_OUTPUT", "0"), (STRICT_METRIC_SWITCH, "1")):
            if name in os.environ:
                restore.callback(os.environ.update, {name: os.environ[name]})
            else:
                restore.callback(os.environ.pop, name, None)
            os.environ[name] = value
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", module="ray")
        yield


@contextlib.contextmanager
def _one_new_experiment_per_second() -> Iterator[Callable[[], None]]:
    """Ray stages a driver's experiment state in a folder named by the second the
    experiment began and its name ("ray" for every study), shared by all drivers of one
    node (ray-project/ray#35006): two studies begun in the same second would write each
    other's state. Drivers on a node therefore begin experiments one at a time, a second
    apart; the hold ends once Tune has made the experiment (the recorder's `setup` calls
    the yielded function) or when the block ends."""
    path = os.path.join(tempfile.gettempdir(), f"lrwa-tune-start-{os.getuid()}.lock")
    handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(handle, fcntl.LOCK_EX)
    # Let go a second after the experiment began, without holding up this driver.
    timer = threading.Timer(1.05, fcntl.flock, args=(handle, fcntl.LOCK_UN))
    timer.daemon = True

    def release() -> None:
        if not timer.is_alive() and not timer.finished.is_set():
            timer.start()

    try:
        yield release
    finally:
        if timer.is_alive():
            timer.join()
        os.close(handle)  # lets go of the lock if the timer has not


def _trial_name(trial: Any) -> str:
    """Trial folders and names are the trial id (also the curve file's name)."""
    return str(trial.trial_id)


def _loggers(study: Study) -> list[Any]:
    """Ray Tune's own logger callbacks the study asks for. TensorBoard needs none: Ray
    writes event files into each trial's folder under ray/ by default."""
    if not study.mlflow:
        return []
    try:
        import mlflow  # noqa: F401 - Ray's callback imports it only when the trial starts
    except ImportError:
        raise LrwaError(f"study '{study.name}' logs to MLflow (loggers.mlflow), which is not "
                        "installed: pip install 'lrwa[mlflow]'") from None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=study.mlflow.get("tracking_uri"),
                                 experiment_name=study.mlflow.get("experiment", study.name),
                                 tags={"lrwa_study": study.name}, save_artifact=False)]


def build_tuner(study: Study, store: StudyStore, teacher: Any, concurrency: int,
                context: TrialContext, out: Printer) -> tuple[Any, bool]:
    """The restored Tuner when Ray holds this study's state, else a new one."""
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, context=context, teacher=teacher,
                             evaluation=Evaluation.load(teacher.spec.name, study.base_config())),
        tune.PlacementGroupFactory(trial_bundles(study)))
    storage_path, filesystem = store.path(), store.filesystem
    experiment = f"{storage_path}/{RAY_DIR}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=filesystem):
        verify_state(store)
        # Errored trials failed outside the engine (engine errors end a trial normally):
        # a rerun resumes them from their last checkpoint (`recorder.py`).
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True, storage_filesystem=filesystem)
        record_state(store)  # the restored Tuner rewrote tuner.pkl
        return tuner, True
    _set_aside_unrestorable(store, out)
    metrics = [objective.metric for objective in study.objectives]
    modes = [objective.direction for objective in study.objectives]
    single = len(metrics) == 1
    searcher = StudySearch(
        space=optuna_space(study), metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        points_to_evaluate=[dict(point) for point in study.points_to_evaluate] or None,
        sampler=build_sampler(study), study_name=store.name, storage=journal_storage(store))
    searcher.budget = study.budget.trials
    # ASHA counts our own epochs, not Tune's training_iteration: they survive any restore.
    # A trial that reaches the last epoch ends on its own (stop_last_trials=False), so its
    # checkpoint gets student.pt and the learning curve.
    scheduler = ASHAScheduler(
        time_attr="epoch", metric=metrics[0], mode=modes[0], max_t=study.epochs,
        grace_period=study.scheduler.grace_period,
        reduction_factor=study.scheduler.reduction_factor,
        stop_last_trials=False) if study.scheduler.type == "asha" else None
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=SignedSearchGenerator(ConcurrencyLimiter(searcher, concurrency), store),
            scheduler=scheduler, num_samples=study.budget.trials, reuse_actors=True,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=RAY_DIR, storage_path=storage_path, storage_filesystem=filesystem, verbose=0,
            callbacks=[StudyRecorder(study, store), *_loggers(study)],
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_RESTARTS),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=CHECKPOINTS_KEPT)))
    record_state(store)  # the new Tuner's tuner.pkl
    return tuner, False


# -- the whole study ---------------------------------------------------------------------------

def _journal_trials(store: StudyStore) -> dict[str, FrozenTrial]:
    optuna_study = open_optuna_study(store)
    return lrwa_trials(optuna_study) if optuna_study else {}


def _ended(study: Study, trials: dict[str, FrozenTrial]
           ) -> tuple[bool, frozenset[str], dict[str, int]]:
    """From the journal's trials: (every trial of the budget has ended, the ids of the
    trials that have ended, how many trials hold each status)."""
    ended = frozenset(trial_id for trial_id, trial in trials.items()
                      if trial.state.is_finished())
    counts = {**dict.fromkeys(STATUSES, 0), **Counter(map(status_of, trials.values()))}
    return len(ended) >= max(study.budget.trials, 1) and len(ended) == len(trials), ended, counts


def _check_records(study: Study, store: StudyStore, out: Printer) -> dict[str, FrozenTrial]:
    """Heal the journal, refuse one that lacks trials Ray ran (cut short, emptied or
    replaced: nothing can resume from it), and heal the views; returns the journal's
    trials."""
    heal_journal(store, out)
    journal = _journal_trials(store)
    ray_trials = restored_trials(store)
    missing = sorted(set(ray_trials) - set(journal))
    if missing:
        shown = ", ".join(missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise damaged_journal(store, f"it lacks {len(missing)} trials that Ray ran: {shown}")
    unrecorded = [trial_id for trial_id, (status, _) in ray_trials.items()
                  if status == ENDED_STATUS and not journal[trial_id].state.is_finished()]
    if unrecorded:
        recorder = StudyRecorder(study, store)
        for trial_id in unrecorded:
            recorder.record_restored_end(trial_id, journal[trial_id].params,
                                         ray_trials[trial_id][1])
        journal = _journal_trials(store)
    if journal:
        heal_views(store, study, journal, out)
    return journal


def run_study(study: Study, storage: str | os.PathLike[str] = DEFAULT_STORAGE,
              restart: bool = False, out: Printer = print_line,
              faults: FaultPlan | None = None) -> StudyOutcome:
    """Run (or continue) `study` to its budget; the results land in STORAGE/<name>/."""
    base = study.base_config()
    if base.teacher is not None and not os.path.isfile(base.teacher):
        raise LrwaError(f"teacher file {base.teacher} does not exist (base.teacher of study "
                        f"'{study.name}')")
    _loggers(study)  # a missing MLflow fails now, in one line, before anything is written
    signing_key(create=True)  # a bad state key fails now, before the study folder exists
    store = open_store(storage, study.name)
    store.check_writable()
    with hold_study(store):
        prepare_study(study, store, restart, out)
        pull_journal(store)
        complete, ended, counts = _ended(study, _check_records(study, store, out))
        if complete:
            return StudyOutcome(store, True, counts, True, False, ran=False)
        session = Session(out=out, budget_s=study.budget.time_budget_s)
        SESSIONS[store.location()] = session
        started_ray = ensure_ray()
        try:
            capacity = cluster_capacity()  # at the autoscaler's maximum where known
            if capacity.warning:
                out(f"warning: {capacity.warning}")
            concurrency = check_cluster(study, capacity)
            teacher = resolve_teacher(base, progress=True)
            accuracy = teacher.metadata.get("test_acc")
            if accuracy is not None:
                out(f"teacher: {teacher.metadata['arch']} on {teacher.metadata['dataset']}, "
                    f"test accuracy {100 * accuracy:.2f}%")
            context = TrialContext(study=study, store=store, decided=ended, faults=faults)
            with quiet_ray(), _one_new_experiment_per_second() as started:
                tuner, resumed = build_tuner(study, store, teacher, concurrency, context, out)
                out(f"{'resuming' if resumed else 'starting'} study '{study.name}': "
                    f"{study.budget.trials} trials, up to {concurrency} at a time -> "
                    f"{store.location()}")
                session.on_started = started
                tuner.fit()
        finally:
            session.cancel()
            SESSIONS.pop(store.location(), None)
            if started_ray:
                ray.shutdown()
        complete, _, counts = _ended(study, _journal_trials(store))
        return StudyOutcome(store, resumed, counts, complete, session.budget_hit, ran=True)


def summarise(outcome: StudyOutcome, study: Study) -> list[str]:
    """The closing lines of `lrwa tune`; raises when every trial of a study errored."""
    statuses = outcome.statuses
    counts = ", ".join(f"{count} {status}" for status, count in statuses.items() if count)
    lines = [f"study {outcome.store.location()}: {counts or 'no trials'}"]
    if not outcome.ran:
        lines[0] += " (already complete; nothing to run)"
    if outcome.complete and statuses.get(ERRORED, 0) == sum(statuses.values()) > 0:
        raise LrwaError(f"study '{study.name}': all {statuses[ERRORED]} trials errored; see "
                        f"the error column of {outcome.store.location(TRIALS_FILE)}")
    ended = sum(count for status, count in statuses.items() if status != UNFINISHED)
    if outcome.budget_stopped:
        lines.append(f"stopped by its time budget ({study.budget.time_budget_s:g} s per "
                     f"invocation) with {ended} of {study.budget.trials} trials ended: rerun the "
                     "same command to continue")
    elif not outcome.complete:
        lines.append(f"interrupted with {ended} of {study.budget.trials} trials ended: rerun "
                     "the same command to continue")
    return lines

