"""What every Ray Train worker runs: one replica of the Distiller and its shard of each checkpoint.

A worker builds the Distiller from the per-worker config (batch_size/N fresh samples a
step, a bank of buffer_size/N) with `stream=rank`, so the initial weights are the same
on every worker and the noise and replay draws are its own. It restores from
`ray.train.get_checkpoint()` when Ray hands it one (a restart after a failure, or a rerun
of the same run name), trains epoch by epoch, and calls `ray.train.report` once per
epoch on every worker (report is a barrier), with a checkpoint every
`checkpoint_every` epochs and at the last epoch.

Checkpoint layout: every rank writes one file into the same checkpoint directory, which
Ray merges in storage. `rank-0.pt` holds rank 0's whole Distiller state (weights,
optimisers, counters, history, its streams) plus the run's config; `rank-k.pt` holds
only what is rank k's own: its replay state, noise and RNG states, and its BatchNorm
buffers (running statistics follow each worker's own batches). A restored rank k loads
rank 0's state, then its own streams on top, so each rank continues its own streams.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from lrwa.config import DistillConfig
from lrwa.data import ImageDataset
from lrwa.distiller import Distiller
from lrwa.errors import LrwaError, first_line
from lrwa.provenance import versions
from lrwa.ray_train.collectives import (
    average_in_place,
    differentiable_average,
    reduce_epoch_metrics,
)
from lrwa.seeding import capture_rng_state, restore_rng_state
from lrwa.teacher import Teacher
from lrwa.yaml_files import clipped

SHARD_FORMAT = "lrwa-ray-shard/1"


def shard_name(rank: int) -> str:
    return f"rank-{rank}.pt"


@dataclass(frozen=True)
class WorkerPlan:
    """Everything the driver hands the workers; Ray pickles it once for all of them."""

    config: DistillConfig        # the run's config: global batch and bank
    local_config: DistillConfig  # what one worker's Distiller is built with
    teacher: Teacher
    eval_split: ImageDataset     # loaded by the driver, so only its node needs the data
    threads: int                 # torch CPU threads per worker
    sync_batchnorm: bool
    checkpoint_every: int
    progress: Any = None         # a ray.util.queue.Queue that rank 0 feeds with epoch rows
    fail_once: tuple[int, str] | None = None  # test hook: (epoch, marker file), see below


def _own_state(distiller: Distiller) -> dict[str, Any]:
    return {
        "replay": distiller.replay.state_dict(),
        "noise": distiller.noise.get_state(),
        "rng": capture_rng_state(),
        "student_buffers": dict(distiller.student.named_buffers()),
        "generator_buffers": dict(distiller.generator.named_buffers()),
    }


def save_shard(distiller: Distiller, directory: Path, rank: int, workers: int,
               config: DistillConfig) -> None:
    payload: dict[str, Any] = {"format": SHARD_FORMAT, "rank": rank, "workers": workers}
    if rank == 0:
        payload.update(config=config.to_dict(), versions=versions(),
                       teacher_acc=distiller.teacher_acc, distiller=distiller.state_dict())
    else:
        payload.update(_own_state(distiller))
    torch.save(payload, directory / shard_name(rank))


def load_shard(directory: Path, rank: int, workers: int) -> dict[str, Any]:
    path = directory / shard_name(rank)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LrwaError(f"checkpoint {directory} has no {path.name}: it was not written by "
                        f"{workers} workers") from None
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise LrwaError(f"{path} cannot be read ({type(error).__name__}); it may be "
                        "corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != SHARD_FORMAT:
        raise LrwaError(f"{path} is not an lrwa Ray Train checkpoint shard")
    if payload["workers"] != workers:
        raise LrwaError(f"checkpoint {directory} was written by {payload['workers']} workers, "
                        f"not {workers}; resume with the original --workers")
    return payload


def _copy_buffers(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(saved[name])


def restore_shard(distiller: Distiller, directory: Path, rank: int, workers: int) -> None:
    """Restore rank 0's state, then this rank's own; a shard of another run is one line."""
    main, own = load_shard(directory, 0, workers), None
    if rank != 0:
        own = load_shard(directory, rank, workers)
    try:
        distiller.load_state_dict(main["distiller"])
        if own is None:
            return
        distiller.replay.load_state_dict(own["replay"])
        distiller.noise.set_state(own["noise"])
        restore_rng_state(own["rng"])
        _copy_buffers(distiller.student, own["student_buffers"])
        _copy_buffers(distiller.generator, own["generator_buffers"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        raise LrwaError(f"checkpoint {directory} does not fit this run "
                        f"({clipped(first_line(error))}); it was written by another run or is "
                        "damaged") from None


def _maybe_fail(plan: WorkerPlan, rank: int, workers: int, next_epoch: int) -> None:
    """Test hook: the last rank dies once, as if killed, early in epoch `epoch`.

    The marker file makes it happen once per test, across the restarts Ray makes. The
    wait gives Ray's controller, which polls the workers for their reports every 0.1 s,
    time to collect the previous epoch's report, so the restart is from its checkpoint.
    """
    if plan.fail_once is None or rank != workers - 1:
        return
    epoch, marker = plan.fail_once
    if next_epoch != epoch:
        return
    try:
        with open(marker, "x"):
            pass
    except FileExistsError:
        return
    time.sleep(2.0)
    os._exit(1)  # no cleanup, no exception: what a killed process looks like to Ray


def train_worker(loop_config: dict[str, Any]) -> None:
    """The per-worker training function handed to `TorchTrainer`."""
    plan: WorkerPlan = loop_config["plan"]
    config = plan.config
    context = ray.train.get_context()
    rank, workers = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(plan.threads)
    if rank == 0:
        eval_images, eval_labels = plan.eval_split.tensors()
    else:
        # Only rank 0 evaluates; the others skip the test set (and the teacher's pass on it).
        eval_images = plan.eval_split.images[:0].float()
        eval_labels = plan.eval_split.labels[:0]
    distiller = Distiller(plan.local_config, plan.teacher.model, plan.teacher.spec,
                          eval_images.to(device), eval_labels, device=device,
                          average_gradients=average_in_place, stream=rank,
                          inner_average=differentiable_average)
    if plan.sync_batchnorm:
        # The converted layers reuse the same parameter tensors, so the optimiser still
        # holds the right ones.
        distiller.student = nn.SyncBatchNorm.convert_sync_batchnorm(distiller.student)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            restore_shard(distiller, Path(directory), rank, workers)

    global_fresh = config.iters_per_epoch * config.student_steps * config.batch_size
    _maybe_fail(plan, rank, workers, distiller.epoch + 1)
    for row in distiller.epochs():
        reduce_epoch_metrics(row, global_fresh, device)
        if rank != 0:
            row["test_acc"] = math.nan
        epoch = distiller.epoch
        save = epoch % plan.checkpoint_every == 0 or epoch == config.epochs
        with tempfile.TemporaryDirectory(prefix="lrwa-shard-") as directory:
            checkpoint = None
            if save:
                save_shard(distiller, Path(directory), rank, workers, config)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(dict(row), checkpoint=checkpoint,
                             checkpoint_dir_name=f"epoch-{epoch:06d}" if save else None)
        if rank == 0 and plan.progress is not None:
            plan.progress.put({"row": dict(row), "teacher_acc": distiller.teacher_acc})
        _maybe_fail(plan, rank, workers, epoch + 1)
