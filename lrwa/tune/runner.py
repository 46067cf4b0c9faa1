"""Run a study: its folder, Ray, and the Tuner, new or restored.

    STORAGE/<study>/study.json        the resolved study and its hash (guards resumption)
    STORAGE/<study>/study.yaml        the same, for people
    STORAGE/<study>/optuna.journal    the Optuna study (optuna.load_study, optuna-dashboard)
    STORAGE/<study>/runs/<trial_id>/  each trial's lrwa run folder (checkpoint, student.pt)
    STORAGE/<study>/curves/, trials.parquet   see `curves.py`
    STORAGE/<study>/ray/              Tune's experiment state, for Tuner.restore

STORAGE is a folder or an object store URI (`storage.py` says how the latter is
mirrored). Rerunning the same study resumes it; a folder made from a different
resolved study is refused unless `restart`, which moves it aside, never deletes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from lrwa.atomic import write_text
from lrwa.errors import LrwaError
from lrwa.provenance import versions
from lrwa.run import resolve_teacher
from lrwa.tune.curves import (
    CURVES_DIR,
    OPTUNA_FILE,
    RAY_DIR,
    STATUSES,
    STUDY_JSON,
    STUDY_YAML,
    TRIALS_FILE,
)
from lrwa.tune.progress import Printer, StudyProgress, print_line
from lrwa.tune.resources import check_cluster, trial_bundles
from lrwa.tune.space import build_sampler, optuna_space
from lrwa.tune.storage import StudyStorage, open_storage
from lrwa.tune.study import Study
from lrwa.tune.trainable import RUNS_DIR, FaultPlan, TrialContext, train_trial

STUDY_FORMAT = "lrwa-study/1"
DEFAULT_STORAGE = "tune_results"


# -- the study folder ----------------------------------------------------------------------

def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise LrwaError(f"storage {folder} cannot be written ({reason})") from None


def _move_aside(study_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = study_dir.with_name(f"{study_dir.name}.old-{stamp}")
    counter = 1
    while target.exists():
        target = study_dir.with_name(f"{study_dir.name}.old-{stamp}-{counter}")
        counter += 1
    study_dir.rename(target)
    return target


def prepare_study_dir(study: Study, storage: str | os.PathLike[str], restart: bool = False,
                      out: Printer = print_line) -> Path:
    """Create, reuse or (with `restart`) move aside the study's folder; never overwrite.

    Returns the local study folder (for an object store, a fresh mirror of its study
    files, pulled before the checks so a new head node resumes what another began)."""
    store = open_storage(storage)
    study_dir = store.study_dir(study.name)
    _check_writable(study_dir.parent)
    if store.remote:
        store.check_writable(study.name)
        if study_dir.exists():
            shutil.rmtree(study_dir)  # a mirror: the store is the truth
        store.pull(study.name, skip=(RUNS_DIR, CURVES_DIR, RAY_DIR))
    fingerprint = study.fingerprint()
    location = store.location(study.name)
    if study_dir.exists() and any(study_dir.iterdir()):
        recorded = _recorded_study(study_dir)
        problem = None
        if recorded is None:
            problem = "is not an lrwa study folder"
        elif recorded.get("hash") != fingerprint:
            problem = (f"was made from a different study (hash {recorded.get('hash')}, "
                       f"this file gives {fingerprint})")
        elif recorded.get("location") != location:
            problem = f"was created at {recorded.get('location')} and has moved since"
        if problem and not restart:
            raise LrwaError(f"{location} {problem}; pass --restart to move it aside and "
                            "start over, or choose another --storage")
        if restart:
            moved = store.move_aside(study.name) if store.remote else _move_aside(study_dir)
            if store.remote:
                shutil.rmtree(study_dir)
            out(f"moved the previous study folder aside to {moved}")
    study_dir.mkdir(parents=True, exist_ok=True)
    _check_writable(study_dir)
    if not (study_dir / STUDY_JSON).is_file():
        record = {"format": STUDY_FORMAT, "hash": fingerprint, "location": location,
                  "source": study.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "versions": versions(), "study": study.to_dict()}
        write_text(study_dir / STUDY_YAML, yaml.safe_dump(study.to_dict(), sort_keys=False))
        write_text(study_dir / STUDY_JSON, json.dumps(record, indent=2) + "\n")
        store.push(study.name, [STUDY_YAML, STUDY_JSON])
    return study_dir


def _recorded_study(study_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((study_dir / STUDY_JSON).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == STUDY_FORMAT else None


def read_study_record(study_dir: str | Path) -> dict[str, Any]:
    record = _recorded_study(Path(study_dir))
    if record is None:
        raise LrwaError(f"{study_dir} is not an lrwa study folder (no readable {STUDY_JSON})")
    return record


def ensure_ray() -> bool:
    """Start a quiet local Ray (or join RAY_ADDRESS's) unless one is up; True if started."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return True


@contextlib.contextmanager
def quiet_ray() -> Iterator[None]:
    """Tune's tables, tracebacks of failed trials and Optuna's per-trial log lines are
    replaced by lrwa's own lines; errors still reach the trial table and the console."""
    import optuna

    names = ("ray.tune", "ray.train", "ray.air", "ray.util")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    previous_output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    previous_optuna = optuna.logging.get_verbosity()
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the legacy reporter honours verbose=0 fully
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", module="ray")
            # A trial resumed from its run folder can be an epoch ahead of Tune's own
            # checkpoint, so OptunaSearch may report a training_iteration twice; Optuna
            # keeps the first value. Only intermediate values are affected (no pruner
            # uses them); the final value Optuna is told comes from the last result.
            warnings.filterwarnings("ignore", message=".*is already reported")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        optuna.logging.set_verbosity(previous_optuna)
        if previous_output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous_output


# -- the Tuner -------------------------------------------------------------------------------

def _trial_name(trial: Any) -> str:
    """Trial folders and names are the trial id, which is also the run folder's name."""
    return str(trial.trial_id)


def _journal(study_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(study_dir / OPTUNA_FILE)))


def _trainable(study: Study, store: StudyStorage, teacher: Any,
               faults: FaultPlan | None) -> Any:
    from ray import tune

    context = TrialContext(study=study.name, storage=store.uri, base=dict(study.base),
                           searched=study.searched, cpus=study.cpus, gpus=study.gpus,
                           workers=study.workers, faults=faults)
    resources = tune.PlacementGroupFactory(trial_bundles(study))
    return tune.with_resources(tune.with_parameters(train_trial, context=context,
                                                    teacher=teacher), resources)


def build_tuner(study: Study, store: StudyStorage, teacher: Any, concurrency: int,
                out: Printer = print_line, faults: FaultPlan | None = None) -> tuple[Any, bool]:
    """A new Tuner, or the restored one when the storage holds a restorable experiment."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    study_dir = store.study_dir(study.name)
    trainable = _trainable(study, store, teacher, faults)
    storage_path, storage_filesystem = store.ray_storage(study.name)
    experiment = f"{storage_path}/{RAY_DIR}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=storage_filesystem):
        return tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True,
                                  storage_filesystem=storage_filesystem), True
    if any((study_dir / folder).exists() or store.holds(study.name, folder)
           for folder in (RUNS_DIR, CURVES_DIR)):
        raise LrwaError(f"{store.location(study.name)} holds trial results but no "
                        "restorable Tune state; pass --restart to move it aside and start over")
    metrics = [objective.metric for objective in study.objectives]
    modes = [objective.mode for objective in study.objectives]
    single = len(metrics) == 1
    searcher = OptunaSearch(
        space=optuna_space(study), metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        points_to_evaluate=[dict(point) for point in study.points_to_evaluate] or None,
        sampler=build_sampler(study), study_name=study.name, storage=_journal(study_dir))
    scheduler = None
    if study.scheduler == "asha":
        # Our own epoch count, not Tune's training_iteration: it survives any restore.
        scheduler = ASHAScheduler(time_attr="epoch", metric=metrics[0], mode=modes[0],
                                  max_t=int(study.base["epochs"]),
                                  grace_period=study.grace_period,
                                  reduction_factor=study.reduction_factor,
                                  # A trial that reaches the last epoch finishes on its own,
                                  # so its run folder gets its student.pt and summary.
                                  stop_last_trials=False)
    tune_config = tune.TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=study.trials,
        max_concurrent_trials=concurrency, time_budget_s=study.time_budget_s,
        reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name)
    run_config = tune.RunConfig(
        name=RAY_DIR, storage_path=storage_path, storage_filesystem=storage_filesystem,
        verbose=0, callbacks=[StudyProgress(study, store, out)],
        failure_config=tune.FailureConfig(max_failures=0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), False


@dataclasses.dataclass
class StudyOutcome:
    study_dir: Path
    resumed: bool
    statuses: dict[str, int]
    interrupted: bool
    storage: StudyStorage


def run_study(study: Study, storage: str | os.PathLike[str] = DEFAULT_STORAGE,
              restart: bool = False, out: Printer = print_line,
              faults: FaultPlan | None = None) -> StudyOutcome:
    """Run (or resume) `study` to its budget; the results land in STORAGE/<name>/."""
    import pyarrow.parquet as pq
    import ray

    from lrwa.config import from_mapping

    base = from_mapping(study.base)
    if base.teacher is not None and not Path(base.teacher).is_file():
        raise LrwaError(f"teacher file {base.teacher} does not exist (base.teacher of study "
                        f"'{study.name}')")
    study_dir = prepare_study_dir(study, storage, restart=restart, out=out)
    store = open_storage(storage)
    started_ray = ensure_ray()
    try:
        concurrency = check_cluster(study, ray.cluster_resources())
        teacher = resolve_teacher(base, progress=True)
        with quiet_ray():
            tuner, resumed = build_tuner(study, store, teacher, concurrency, out, faults)
            out(f"{'resuming' if resumed else 'starting'} study '{study.name}': "
                f"{study.trials} trials, up to {concurrency} at a time -> "
                f"{store.location(study.name)}")
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
        store.push(study.name, [TRIALS_FILE, OPTUNA_FILE])
    statuses = dict.fromkeys(STATUSES, 0)
    if (study_dir / TRIALS_FILE).is_file():
        for status in pq.read_table(study_dir / TRIALS_FILE, columns=["status"]).column(
                "status").to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    interrupted = statuses.get("unfinished", 0) > 0
    return StudyOutcome(study_dir, resumed, statuses, interrupted, store)


