"""Run a study: its folder, Ray, the Tuner (new or restored), and the dry-run estimate.

    STORAGE/<study>/study.json        the resolved study and its hash (guards resumption)
    STORAGE/<study>/study.yaml        the same, for people
    STORAGE/<study>/optuna.journal    the Optuna study (optuna.load_study, optuna-dashboard)
    STORAGE/<study>/runs/<trial_id>/  each trial's lrwa run folder (checkpoint, student.pt)
    STORAGE/<study>/curves/, trials.parquet   see `curves.py`
    STORAGE/<study>/ray/              Tune's experiment state, for Tuner.restore

Rerunning the same study resumes it; a folder made from a different resolved
study is refused unless `restart`, which moves it aside, never deletes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

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
    write_trials_table,
)
from lrwa.tune.space import build_sampler, describe_space, optuna_space, to_python
from lrwa.tune.study import Study
from lrwa.tune.trainable import (
    DRIVER_CPU,
    ERROR_FILE,
    RUNS_DIR,
    FaultPlan,
    TrialContext,
    run_dir_of,
    train_trial,
)

STUDY_FORMAT = "lrwa-study/1"
DEFAULT_STORAGE = "tune_results"
Printer = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


# -- the study folder ----------------------------------------------------------------------

def storage_root(storage: str | os.PathLike[str]) -> Path:
    """A local (or shared, e.g. NFS) folder; `file://` URIs are accepted."""
    text = os.fspath(storage)
    if text.startswith("file://"):
        text = text[len("file://"):]
    elif "://" in text:
        raise LrwaError(f"storage {text!r}: only local or shared folders are supported (the "
                        "Optuna journal and the Parquet curves need a file system)")
    return Path(text).expanduser().resolve()


def study_dir_of(study: Study, storage: str | os.PathLike[str]) -> Path:
    return storage_root(storage) / study.name


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
                      out: Printer = _print) -> Path:
    """Create, reuse or (with `restart`) move aside the study's folder; never overwrite."""
    study_dir = study_dir_of(study, storage)
    _check_writable(study_dir.parent)
    fingerprint = study.fingerprint()
    if study_dir.exists() and any(study_dir.iterdir()):
        recorded = _recorded_study(study_dir)
        problem = None
        if recorded is None:
            problem = "is not an lrwa study folder"
        elif recorded.get("hash") != fingerprint:
            problem = (f"was made from a different study (hash {recorded.get('hash')}, "
                       f"this file gives {fingerprint})")
        elif recorded.get("location") != str(study_dir):
            problem = f"was created at {recorded.get('location')} and has moved since"
        if problem and not restart:
            raise LrwaError(f"{study_dir} {problem}; pass --restart to move it aside and "
                            "start over, or choose another --storage")
        if restart:
            moved = _move_aside(study_dir)
            out(f"moved the previous study folder aside to {moved}")
    study_dir.mkdir(parents=True, exist_ok=True)
    _check_writable(study_dir)
    if not (study_dir / STUDY_JSON).is_file():
        record = {"format": STUDY_FORMAT, "hash": fingerprint, "location": str(study_dir),
                  "source": study.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "versions": versions(), "study": study.to_dict()}
        write_text(study_dir / STUDY_YAML, yaml.safe_dump(study.to_dict(), sort_keys=False))
        write_text(study_dir / STUDY_JSON, json.dumps(record, indent=2) + "\n")
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


# -- resources -----------------------------------------------------------------------------

def trial_bundles(study: Study) -> list[dict[str, float]]:
    """The placement group of one Tune trial.

    One worker: the trial runs the engine itself and holds all of its resources.
    Several workers: the trial only drives a Ray Train run, whose workers Ray Train
    places in a placement group of its own; reserving them in the trial's group too
    would double-book them and deadlock a small machine, so the trial holds a sliver.
    """
    if study.workers == 1:
        bundle = {"CPU": study.cpus}
        if study.gpus:
            bundle["GPU"] = study.gpus
        return [bundle]
    return [{"CPU": DRIVER_CPU}]


def resources_per_trial(study: Study) -> dict[str, float]:
    """Everything one trial occupies in the cluster, Ray Train workers included."""
    if study.workers == 1:
        return {"CPU": study.cpus, "GPU": study.gpus}
    worker_cpus = max(DRIVER_CPU, study.cpus - DRIVER_CPU)
    return {"CPU": DRIVER_CPU + study.workers * worker_cpus,
            "GPU": study.workers * study.gpus}


def check_cluster(study: Study, available: dict[str, float]) -> int:
    """Refuse a trial the cluster can never place; return the concurrency it can hold."""
    need = resources_per_trial(study)
    concurrency = min(study.max_concurrent, study.trials)
    for key, amount in need.items():
        if amount <= 0:
            continue
        have = float(available.get(key, 0.0))
        if amount > have + 1e-9:
            per = f"{study.workers} workers x " if study.workers > 1 else ""
            raise LrwaError(f"study '{study.name}' needs {amount:g} {key} per trial "
                            f"({per}resources) but the Ray cluster has {have:g}; lower "
                            "resources in the study file or use a larger cluster "
                            "(RAY_ADDRESS)")
        concurrency = min(concurrency, max(1, math.floor(have / amount + 1e-9)))
    return concurrency


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


# -- progress lines and the trial table ------------------------------------------------------

def _percent(value: Any) -> str:
    return "  -  " if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{100 * value:5.2f}%"


def _params_text(params: dict[str, Any]) -> str:
    def show(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key}={show(value)}" for key, value in params.items())


def _trial_name(trial: Any) -> str:
    """Trial folders and names are the trial id, which is also the run folder's name."""
    return str(trial.trial_id)


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

    def __init__(self, study: Study, study_dir: Path, out: Printer = _print) -> None:
        self.name = study.name
        self.base = dict(study.base)
        self.study_dir = str(study_dir)
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

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any,
                          **info: Any) -> None:
        self.finished[trial.trial_id] = "TERMINATED"
        summary = _read_json(run_dir_of(self.study_dir, trial.trial_id) / "summary.json")
        status = _status_of("TERMINATED", summary)
        numbers = (f": best {_percent(summary.get('best_acc'))}  mean "
                   f"{_percent(summary.get('mean_acc'))}" if summary else "")
        self.out(f"{self._index(trial, trials)}  {status}{numbers}")
        self.write_table(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any,
                       **info: Any) -> None:
        self.finished[trial.trial_id] = "ERROR"
        error = _error_of(trial, run_dir_of(self.study_dir, trial.trial_id))
        self.out(f"{self._index(trial, trials)}  errored: {error}")
        self.write_table(trials)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.write_table(trials)

    def write_table(self, trials: list[Any]) -> None:
        previous = _previous_statuses(Path(self.study_dir))
        records = [self.record(trial, previous) for trial in trials]
        write_trials_table(Path(self.study_dir), self.searched, records)

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


# -- the Tuner -------------------------------------------------------------------------------

def _journal(study_dir: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(study_dir / OPTUNA_FILE)))


def _trainable(study: Study, study_dir: Path, teacher: Any,
               faults: FaultPlan | None) -> Any:
    from ray import tune

    context = TrialContext(study=study.name, study_dir=str(study_dir), base=dict(study.base),
                           searched=study.searched, cpus=study.cpus, gpus=study.gpus,
                           workers=study.workers, faults=faults)
    resources = tune.PlacementGroupFactory(trial_bundles(study))
    return tune.with_resources(tune.with_parameters(train_trial, context=context,
                                                    teacher=teacher), resources)


def build_tuner(study: Study, study_dir: Path, teacher: Any, concurrency: int,
                out: Printer = _print, faults: FaultPlan | None = None) -> tuple[Any, bool]:
    """A new Tuner, or the restored one when the folder holds a restorable experiment."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    trainable = _trainable(study, study_dir, teacher, faults)
    experiment = study_dir / RAY_DIR
    if tune.Tuner.can_restore(str(experiment)):
        return tune.Tuner.restore(str(experiment), trainable=trainable,
                                  resume_errored=True), True
    if (study_dir / RUNS_DIR).exists() or (study_dir / CURVES_DIR).exists():
        raise LrwaError(f"{study_dir} holds trial results but no restorable Tune state; "
                        "pass --restart to move it aside and start over")
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
        name=RAY_DIR, storage_path=str(study_dir), verbose=0,
        callbacks=[StudyProgress(study, study_dir, out)],
        failure_config=tune.FailureConfig(max_failures=0),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config), False


@dataclasses.dataclass
class StudyOutcome:
    study_dir: Path
    resumed: bool
    statuses: dict[str, int]
    interrupted: bool


def run_study(study: Study, storage: str | os.PathLike[str] = DEFAULT_STORAGE,
              restart: bool = False, out: Printer = _print,
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
    started_ray = ensure_ray()
    try:
        concurrency = check_cluster(study, ray.cluster_resources())
        teacher = resolve_teacher(base, progress=True)
        with quiet_ray():
            tuner, resumed = build_tuner(study, study_dir, teacher, concurrency, out, faults)
            out(f"{'resuming' if resumed else 'starting'} study '{study.name}': "
                f"{study.trials} trials, up to {concurrency} at a time -> {study_dir}")
            tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    statuses = dict.fromkeys(STATUSES, 0)
    if (study_dir / TRIALS_FILE).is_file():
        for status in pq.read_table(study_dir / TRIALS_FILE, columns=["status"]).column(
                "status").to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    interrupted = statuses.get("unfinished", 0) > 0
    return StudyOutcome(study_dir, resumed, statuses, interrupted)


# -- the dry run -----------------------------------------------------------------------------

EVAL_SIZES = {"mnist5k": 1000, "digits": 360, "cifar10": 10000, "cifar100": 10000,
              "svhn": 26032}
MEASURE_BATCH = 64


def _measurement_teacher(study: Study) -> tuple[Any, str]:
    """The study's teacher, or a random one of the same architecture when its file is not
    there yet (the cost per step does not depend on the weights)."""
    from lrwa.config import from_mapping
    from lrwa.data import dataset_spec
    from lrwa.models import build_model
    from lrwa.teacher import Teacher

    base = from_mapping(study.base)
    if base.teacher is None or Path(base.teacher).is_file():
        teacher = resolve_teacher(base, progress=False)
        return teacher, teacher.metadata["dataset"]
    if base.teacher_arch and base.dataset:
        spec = dataset_spec(base.dataset)
        model = build_model(base.teacher_arch, spec.channels, spec.image_size, spec.num_classes)
        return Teacher(model, {"arch": base.teacher_arch, "dataset": base.dataset}), base.dataset
    raise LrwaError(f"teacher file {base.teacher} does not exist yet and base names no "
                    "teacher_arch and dataset to build a stand-in of the same cost")


def _timed(step: Callable[[], Any], repeats: int, cuda: bool) -> float:
    import torch

    step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def measure_epoch_seconds(study: Study) -> tuple[float, str]:
    """Seconds per epoch of one trial at the base config, from steps timed here.

    Times a generator step and a student step (after a warm-up) at a batch of at most
    64 on the device the trial would use, scales them linearly to the study's batch,
    and adds one evaluation pass over the test split; returns (seconds, how)."""
    import torch

    from lrwa.config import from_mapping
    from lrwa.data import dataset_spec
    from lrwa.distiller import Distiller

    teacher, dataset = _measurement_teacher(study)
    spec = dataset_spec(dataset)
    base = from_mapping(study.base)
    cuda = study.gpus > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = min(base.batch_size, MEASURE_BATCH)
    config = base.replace(batch_size=batch, device=device.type)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(study.cpus)))
    try:
        images = torch.randn(256, spec.channels, spec.image_size, spec.image_size)
        labels = torch.zeros(256, dtype=torch.int64)
        distiller = Distiller(config, teacher.model, spec, images.to(device), labels,
                              device=device)
        if config.replay != "none":
            distiller.replay.add(distiller._fresh_images()[:config.samples_per_insertion])
        generator_s = _timed(distiller.generator_step, 2, cuda)
        student_s = _timed(lambda: distiller.student_step(False), 3, cuda)
        eval_s = _timed(distiller.evaluate, 1, cuda) * EVAL_SIZES.get(dataset, 10000) / 256
    finally:
        torch.set_num_threads(threads)
    scale = base.batch_size / batch
    iteration_s = scale * (base.generator_steps * generator_s + base.student_steps * student_s)
    epoch_s = base.iters_per_epoch * iteration_s + eval_s / base.eval_every
    where = (f"measured here on {device.type}"
             + (f" ({torch.cuda.get_device_name()})" if cuda else
                f" with {max(1, int(study.cpus))} thread(s)")
             + f": generator step {1e3 * generator_s:.1f} ms, student step "
             f"{1e3 * student_s:.1f} ms at batch {batch}, scaled to batch {base.batch_size}")
    return epoch_s, where


# The GPU cost model, used when a GPU study is estimated on a machine without one:
# forward FLOPs per sample are counted with torch's FlopCounterMode, a training pass
# costs 3 forwards (forward + backward), the second-order meta step 1.4x a joint step
# and the first-order one 1.05x (the targets of benchmarks/step_cost.py), and a GPU
# sustains ASSUMED_GPU_FLOPS on these convolutions (TF32/bf16 ResNets at batch 512
# typically reach 15-40 TFLOP/s on an A100/H100; 25 is the middle).
ASSUMED_GPU_FLOPS = 25e12
META_FACTOR = {"acquire": 1.0, "joint": 1.0, "meta": 1.4}


def _forward_flops(model: Any, inputs: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return counter.get_total_flops() / inputs.shape[0]


def model_epoch_seconds(study: Study) -> tuple[float, str]:
    """Seconds per epoch of one trial on one GPU, from counted FLOPs (see above)."""
    import torch

    from lrwa.config import from_mapping
    from lrwa.data import dataset_spec
    from lrwa.generator import Generator
    from lrwa.models import build_model

    teacher, dataset = _measurement_teacher(study)
    spec = dataset_spec(dataset)
    base = from_mapping(study.base)
    shape = (2, spec.channels, spec.image_size, spec.image_size)
    student = build_model(base.student, spec.channels, spec.image_size, spec.num_classes)
    generator = Generator(base.latent_dim, spec.channels, spec.image_size,
                          width=base.generator_width)
    teacher_f = _forward_flops(teacher.model, torch.randn(shape))
    student_f = _forward_flops(student, torch.randn(shape))
    generator_f = _forward_flops(generator, torch.randn(2, base.latent_dim))
    ratio = 0.0 if base.replay == "none" or base.mode == "acquire" else base.replay_ratio
    factor = 1.05 if base.mode == "meta" and base.first_order else META_FACTOR[base.mode]
    generator_step = 3 * (generator_f + teacher_f + student_f)
    student_step = generator_f + (1 + ratio) * teacher_f + factor * 3 * (1 + ratio) * student_f
    iteration = base.batch_size * (base.generator_steps * generator_step
                                   + base.student_steps * student_step)
    evaluation = EVAL_SIZES.get(dataset, 10000) * student_f / base.eval_every
    epoch_flops = base.iters_per_epoch * iteration + evaluation
    where = (f"cost model, no GPU here: {epoch_flops / 1e15:.2f} PFLOP per epoch counted "
             f"with FlopCounterMode at an assumed {ASSUMED_GPU_FLOPS / 1e12:.0f} TFLOP/s "
             "per GPU")
    return epoch_flops / ASSUMED_GPU_FLOPS, where


def dry_run(study: Study, storage: str | os.PathLike[str] = DEFAULT_STORAGE,
            out: Printer = _print, measure: bool = True) -> dict[str, Any]:
    """Print what the study would run and an estimate of its cost; run nothing."""
    base = study.base
    out(f"study '{study.name}' ({study.source}), hash {study.fingerprint()}")
    out(f"  folder: {study_dir_of(study, storage)}")
    out(f"  base: {base['mode']} / {base['replay']}, student {base['student']}, teacher "
        f"{base['teacher'] or 'embedded mnist5k lenet5'}, {base['epochs']} epochs x "
        f"{base['iters_per_epoch']} iterations x {base['student_steps']} student steps, "
        f"batch {base['batch_size']}, seed {base['seed']}")
    out("  space:")
    for name, text in describe_space(study):
        out(f"    {name}: {text}")
    objective = ", ".join(f"{o.direction} {o.metric}" for o in study.objectives)
    out(f"  objective: {objective}" + ("  (Pareto front)" if study.multi_objective else ""))
    scheduler = (f"asha (grace {study.grace_period}, reduction {study.reduction_factor:g})"
                 if study.scheduler == "asha" else "none")
    out(f"  trials: {study.trials}, up to {study.max_concurrent} at a time, time budget "
        f"{study.time_budget_s or 'none'}; sampler {study.sampler} (seed {study.seed}); "
        f"scheduler {scheduler}; {len(study.points_to_evaluate)} points evaluated first")
    need = resources_per_trial(study)
    out(f"  resources per trial: {study.workers} worker(s) x {study.cpus:g} CPU, "
        f"{study.gpus:g} GPU; Tune placement group {trial_bundles(study)}; "
        f"{need['CPU']:g} CPU and {need['GPU']:g} GPU in all")
    estimate: dict[str, Any] = {"trials": study.trials, "resources": need}
    if not measure:
        return estimate
    try:
        import torch

        if study.gpus > 0 and not torch.cuda.is_available():
            epoch_s, how = model_epoch_seconds(study)
        else:
            epoch_s, how = measure_epoch_seconds(study)
    except LrwaError as error:
        out(f"  estimate: not available ({error})")
        return estimate
    trial_s = int(base["epochs"]) * epoch_s / study.workers
    waves = math.ceil(study.trials / max(1, min(study.max_concurrent, study.trials)))
    estimate.update({
        "epoch_s": epoch_s, "trial_s": trial_s, "wall_s": waves * trial_s,
        "cpu_hours": study.trials * trial_s * need["CPU"] / 3600,
        "gpu_hours": study.trials * trial_s * need["GPU"] / 3600, "how": how})
    out(f"  estimate ({how}):")
    out(f"    {epoch_s:.1f} s per epoch, {trial_s / 60:.1f} min per trial, about "
        f"{estimate['wall_s'] / 3600:.2f} h of wall time; {estimate['cpu_hours']:.2f} CPU "
        f"hours, {estimate['gpu_hours']:.2f} GPU hours (upper bound: no early stopping"
        + (", ideal data-parallel speed-up" if study.workers > 1 else "") + ")")
    return estimate
