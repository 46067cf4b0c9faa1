"""`run_distributed`: checks, then one `TorchTrainer`, then the run folder.

Everything that can be refused is refused before any worker starts: a batch or bank
that does not split evenly over the workers, a per-worker batch too small for BatchNorm,
contradictory device flags, SyncBatchNorm where it cannot work, and more workers or GPUs
than the Ray cluster has. The driver holds the run folder (`folder_lock`) throughout,
as a single-process run does. Then one trainer runs `worker.train_worker` on every
worker while the driver writes the rows rank 0 streams to it (`run_folder.Progress`),
and the final files come from the last checkpoint (`run_folder.finish`), written before
`on_epoch` sees the last epoch.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray.train
import yaml
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue

from lrwa.atomic import write_text
from lrwa.config import DistillConfig, absolute_paths
from lrwa.data import load_split
from lrwa.errors import LrwaError
from lrwa.folder_lock import LOCK_FILE, hold_folder
from lrwa.output_paths import check_folder
from lrwa.ray_train.cluster import backend_for, ensure_ray, plan_cpus
from lrwa.ray_train.run_folder import (
    RAY_SUBFOLDER,
    RUN_RECORD,
    EpochCallback,
    Progress,
    finish,
    new_record,
    read_record,
    write_record,
)
from lrwa.ray_train.worker import WorkerPlan, train_worker
from lrwa.run import (
    CONFIG_FILE,
    HOLDER,
    check_batches_fit,
    prepare_out_dir,
    reconcile_resume,
    remove_temporaries,
    resolve_teacher,
    unstarted,
)
from lrwa.sinks import METRICS_FILE, read_metrics
from lrwa.teacher import Teacher

# Test hook, read here and handed to the workers: "EPOCH:MARKER_FILE" makes the last rank
# die once, early in epoch EPOCH (see worker._maybe_fail).
FAIL_ONCE_ENV = "LRWA_RAY_TEST_FAIL_ONCE"
# Ray Train's controller polls its workers this often, and every report waits for a poll:
# at the 2 s default that dominates short epochs. A value the user set is kept.
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_SECONDS = "0.1"
# The newest checkpoint is the one a restart uses; one more in case it is being replaced.
KEEP_CHECKPOINTS = 2


def per_worker_config(config: DistillConfig, workers: int) -> DistillConfig:
    """The config one of `workers` workers runs: 1/N of the global batch and of the bank."""
    def split(key: str) -> int:
        value = getattr(config, key)
        if value % workers:
            raise LrwaError(f"{key} {value} is for the whole run and must split evenly over "
                            f"{workers} workers; choose a multiple of {workers}")
        return value // workers

    changes = {"batch_size": split("batch_size")}
    if config.replay == "memory":
        changes["buffer_size"] = split("buffer_size")
    if config.insert_size:
        changes["insert_size"] = split("insert_size")
    try:
        return config.replace(**changes)
    except LrwaError as error:
        raise LrwaError(f"per worker ({workers} workers): {error}") from None


def _check_devices(config: DistillConfig, gpus_per_worker: float, sync_batchnorm: bool) -> None:
    if not math.isfinite(gpus_per_worker) or gpus_per_worker < 0:
        raise LrwaError(f"--gpus-per-worker must be a finite number of at least 0, "
                        f"got {gpus_per_worker:g}")
    if config.device == "cuda" and gpus_per_worker == 0:
        raise LrwaError("device 'cuda' with Ray workers needs --gpus-per-worker (e.g. 1)")
    if config.device == "cpu" and gpus_per_worker > 0:
        raise LrwaError("device 'cpu' contradicts --gpus-per-worker; drop one of them")
    if not sync_batchnorm:
        return
    if gpus_per_worker < 1:
        raise LrwaError("--sync-batchnorm needs one whole GPU per worker (NCCL); on CPU "
                        "(gloo) each worker normalises with its own batch")
    if config.mode == "meta" and not config.first_order:
        # SyncBatchNorm's backward cannot be differentiated again (pytorch/pytorch#61222:
        # "derivative for batch_norm_backward_elemt is not implemented").
        raise LrwaError("--sync-batchnorm cannot be used with the second-order meta step; "
                        "pass --first-order or leave BatchNorm per worker")


def _absolute_storage(storage: str | None) -> str | None:
    """A local storage path made absolute (the workers run in another directory); URIs kept."""
    if storage is None or "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def _fail_once_hook() -> tuple[int, str] | None:
    value = os.environ.get(FAIL_ONCE_ENV)
    if not value:
        return None
    epoch, marker = value.split(":", 1)
    return int(epoch), marker


def _lrwa_cause(error: BaseException | None) -> LrwaError | None:
    """The LrwaError a worker raised, through any wrapping of Ray's, if that is what failed."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, LrwaError):
            return error
        error = getattr(error, "cause", None) or error.__cause__
    return None


def _trainer(plan: WorkerPlan, workers: int, cpus: float, gpus_per_worker: float,
             record: dict[str, Any], out_dir: Path, max_failures: int) -> TorchTrainer:
    resources = {"CPU": cpus, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    return TorchTrainer(
        train_worker,
        train_loop_config={"plan": plan},
        torch_config=TorchConfig(backend=backend_for(gpus_per_worker)),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=record["name"],
            storage_path=record["storage"] or str(out_dir / RAY_SUBFOLDER),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )


def _fit(trainer: TorchTrainer, queue: Queue, progress: Progress) -> ray.train.Result:
    """Run the trainer while a thread writes the streamed rows; worker LrwaErrors re-raised."""
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_SECONDS)  # read when fit starts
    stop = threading.Event()
    consumer = threading.Thread(target=progress.drain, args=(queue, stop), daemon=True,
                                name="lrwa-progress")
    consumer.start()
    try:
        result = trainer.fit()
    except SystemExit:
        # Ray Train's SIGINT handler aborts the run and exits; SIGTERM and SIGHUP reach it
        # too (lrwa.signals). The last checkpoint stays for --resume: stop as Ctrl+C does.
        raise KeyboardInterrupt from None
    except ray.train.WorkerGroupError as error:
        for rank, failure in sorted(error.worker_failures.items()):
            cause = _lrwa_cause(failure)
            if cause is not None:
                raise LrwaError(f"worker {rank}: {cause}") from None
        raise
    finally:
        stop.set()
        consumer.join()
        queue.shutdown(force=True)  # every message has been consumed
    if progress.errors:
        raise progress.errors[0]
    return result


def _startup_files(out_dir: Path) -> frozenset[str]:
    """What a distributed run writes before its first checkpoint: config.yaml, the lock,
    ray_run.json, and Ray's default storage as long as it holds no checkpoint."""
    names = {CONFIG_FILE, LOCK_FILE, RUN_RECORD}
    if not any((out_dir / RAY_SUBFOLDER).glob("*/epoch-*")):
        names.add(RAY_SUBFOLDER)
    return frozenset(names)


def run_distributed(config: DistillConfig | None, out_dir: str | Path, *, workers: int,
                    gpus_per_worker: float = 0, storage: str | None = None,
                    resume: bool = False, overrides: Mapping[str, Any] | None = None,
                    teacher: Teacher | None = None, on_epoch: EpochCallback | None = None,
                    sync_batchnorm: bool = False, checkpoint_every: int = 1,
                    max_failures: int = 2, cpus_per_worker: float | None = None
                    ) -> dict[str, Any]:
    """Run `config` on `workers` data-parallel Ray Train workers in `out_dir`, or resume it.

    `out_dir` gets what `run_distillation` writes (config.yaml, metrics.parquet,
    summary.json, learning_curve.png, student.pt) plus ray_run.json; the resumable state
    is in Ray's storage, `<out_dir>/ray` unless `storage` (a path or a URI such as
    s3://bucket/runs) says otherwise. `cpus_per_worker` defaults to the cluster's CPUs
    shared out evenly. Returns the summary dict.
    """
    out_dir = Path(out_dir).resolve()
    storage = _absolute_storage(storage)
    if workers < 1:
        raise LrwaError(f"--workers must be at least 1, got {workers}")
    if checkpoint_every < 1:
        raise LrwaError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
    check_folder(out_dir, "run folder")
    with hold_folder(out_dir, HOLDER):
        remove_temporaries(out_dir)
        return _run_held(config, out_dir, workers=workers, gpus_per_worker=gpus_per_worker,
                         storage=storage, resume=resume, overrides=overrides, teacher=teacher,
                         on_epoch=on_epoch, sync_batchnorm=sync_batchnorm,
                         checkpoint_every=checkpoint_every, max_failures=max_failures,
                         cpus_per_worker=cpus_per_worker)


def _run_held(config: DistillConfig | None, out_dir: Path, *, workers: int,
              gpus_per_worker: float, storage: str | None, resume: bool,
              overrides: Mapping[str, Any] | None, teacher: Teacher | None,
              on_epoch: EpochCallback | None, sync_batchnorm: bool, checkpoint_every: int,
              max_failures: int, cpus_per_worker: float | None) -> dict[str, Any]:
    """`run_distributed` once the folder is held."""
    startup_files = _startup_files(out_dir)
    if resume:
        # A run killed before its first checkpoint may have no record yet: it starts anew.
        died_early = ((out_dir / CONFIG_FILE).is_file() and not (out_dir / RUN_RECORD).is_file()
                      and unstarted(out_dir, startup_files))
        record = new_record(out_dir, storage, workers) if died_early else read_record(out_dir)
        config = reconcile_resume(out_dir, overrides or {})
        if workers != record["workers"]:
            raise LrwaError(f"--resume: {out_dir} was run with --workers {record['workers']}, "
                            f"not {workers}; each worker's streams live in its own shard")
        if storage is not None and storage != record["storage"]:
            raise LrwaError(f"--resume: {out_dir} keeps its checkpoints in "
                            f"{record['storage'] or out_dir / RAY_SUBFOLDER}, not {storage}")
    elif config is None:
        raise ValueError("a new run needs a config")
    else:
        prepare_out_dir(out_dir, resume=False, startup_files=startup_files)
        config = absolute_paths(config)
        record = new_record(out_dir, storage, workers)
    local_config = per_worker_config(config, workers)
    _check_devices(config, gpus_per_worker, sync_batchnorm)

    ensure_ray()
    cpus = plan_cpus(workers, gpus_per_worker, cpus_per_worker)
    teacher = teacher or resolve_teacher(config)
    if not resume:  # config.yaml names what ran: data set, teacher, threads, device
        config = config.replace(dataset=teacher.metadata["dataset"],
                                teacher_arch=teacher.metadata["arch"],
                                torch_threads=config.torch_threads or max(1, int(cpus)),
                                device="cuda" if gpus_per_worker else "cpu")
        local_config = per_worker_config(config, workers)
    check_batches_fit(local_config, teacher.spec, per_worker=f" per worker ({workers} workers)")
    # Loaded here and shipped to rank 0, so only the driver's machine needs the data.
    eval_split = load_split(teacher.spec.name, config.eval_split, data_root=config.data_root,
                            download=config.download)
    if not resume:
        write_text(out_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    write_record(out_dir, record)

    progress = Progress(out_dir, config, teacher, on_epoch, wall_before=record["wall_s"])
    if resume and (out_dir / METRICS_FILE).is_file():
        progress.rows = {int(row["epoch"]): row
                         for row in read_metrics(out_dir).to_dict("records")}
    queue = Queue(actor_options={"num_cpus": 0})  # must not take a CPU from the workers
    plan = WorkerPlan(config=config, local_config=local_config, teacher=teacher,
                      eval_split=eval_split,
                      threads=config.torch_threads or max(1, int(cpus)),
                      sync_batchnorm=sync_batchnorm, checkpoint_every=checkpoint_every,
                      progress=queue, fail_once=_fail_once_hook())
    trainer = _trainer(plan, workers, cpus, gpus_per_worker, record, out_dir, max_failures)
    result = _fit(trainer, queue, progress)
    record["wall_s"] = progress.wall()
    write_record(out_dir, record)
    summary = finish(out_dir, result.checkpoint, workers, config, teacher, record["wall_s"])
    if progress.last_row is not None and on_epoch is not None:
        on_epoch(progress.last_row)  # after the final files, as run_distillation does
    return summary
