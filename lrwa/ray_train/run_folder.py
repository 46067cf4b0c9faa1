"""The run folder of a distributed run, written by the driver with `run.py`'s and `sinks.py`'s writers.

The driver writes it because on a multi-node cluster the driver's disk is where the
user looks. While the trainer runs, rank 0 streams each epoch's row through a queue
actor; `Progress` rewrites metrics.parquet and summary.json from them and calls
`on_epoch`, except for the last epoch. When the trainer returns, `finish` writes the
final files from the last checkpoint, whose history holds each epoch exactly once, and
only then does the driver call `on_epoch` for the last epoch, so that a caller sees
every file of the run for it (as with `run_distillation`).

`ray_run.json` records what a resume needs and the config does not hold: the Ray run
name, the storage, the number of workers, and the wall time of earlier calls.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
from ray.util.queue import Empty, Queue

from lrwa.atomic import write_text
from lrwa.config import DistillConfig
from lrwa.errors import LrwaError
from lrwa.models import build_model
from lrwa.ray_train.worker import load_shard
from lrwa.run import CHECKPOINT_FILE, STUDENT_FILE, build_summary, student_metadata
from lrwa.sinks import plot_learning_curve, write_metrics, write_summary
from lrwa.teacher import Teacher, save_teacher

RUN_RECORD = "ray_run.json"
RUN_RECORD_FORMAT = "lrwa-ray-run/1"
RAY_SUBFOLDER = "ray"  # Ray's storage inside the run folder, unless --storage says otherwise

EpochCallback = Callable[[dict[str, Any]], None]


def run_name(out_dir: Path) -> str:
    """The Ray run name: the same every time for the same absolute run folder."""
    digest = hashlib.sha256(str(out_dir).encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", out_dir.name)[:40] or "run"
    return f"lrwa-{readable}-{digest}"


def new_record(out_dir: Path, storage: str | None, workers: int) -> dict[str, Any]:
    # storage None means the default, <out_dir>/ray, resolved at each call so that a
    # moved run folder still finds its checkpoints.
    return {"format": RUN_RECORD_FORMAT, "name": run_name(out_dir), "storage": storage,
            "workers": workers, "wall_s": 0.0}


def read_record(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RUN_RECORD
    if not path.is_file():
        if (out_dir / CHECKPOINT_FILE).is_file():
            raise LrwaError(f"--resume: {out_dir} holds a single-process run; resume it "
                            "without --workers")
        raise LrwaError(f"--resume: {out_dir} holds no distributed run to resume "
                        f"(no {RUN_RECORD})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("format") != RUN_RECORD_FORMAT:
        raise LrwaError(f"{path} is not an lrwa Ray run record")
    return record


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    write_text(out_dir / RUN_RECORD, json.dumps(record, indent=2) + "\n")


@dataclass
class Progress:
    """Writes the rows rank 0 streams while the trainer runs, and calls `on_epoch`.

    After a restart from a checkpoint the epochs after it run again: a row for epoch e
    replaces every row from e on, so the table never holds an epoch twice.
    """

    out_dir: Path
    config: DistillConfig
    teacher: Teacher
    on_epoch: EpochCallback | None
    wall_before: float
    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    errors: list[BaseException] = field(default_factory=list)
    last_row: dict[str, Any] | None = None  # the last epoch's row, for on_epoch after finish

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def handle(self, message: dict[str, Any]) -> None:
        row = message["row"]
        self.rows = {epoch: kept for epoch, kept in self.rows.items() if epoch < row["epoch"]}
        self.rows[row["epoch"]] = row
        history = [self.rows[epoch] for epoch in sorted(self.rows)]
        write_metrics(self.out_dir, history)
        write_summary(self.out_dir, build_summary(history, message["teacher_acc"], self.config,
                                                  self.teacher, self.wall(), complete=False))
        if row["epoch"] == self.config.epochs:
            self.last_row = row
        elif self.on_epoch is not None:
            self.on_epoch(row)

    def drain(self, queue: Queue, stop: threading.Event) -> None:
        """Handle messages until `stop` is set and the queue is empty (run in a thread)."""
        while True:
            try:
                message = queue.get(timeout=0.2)
            except Empty:
                if stop.is_set():
                    return
                continue
            try:
                self.handle(message)
            except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
                self.errors.append(error)
                return


def finish(out_dir: Path, checkpoint: ray.train.Checkpoint | None, workers: int,
           config: DistillConfig, teacher: Teacher, wall: float) -> dict[str, Any]:
    """Write the final files from the last checkpoint's rank-0 shard; return the summary."""
    if checkpoint is None:
        raise LrwaError("the distributed run ended without a checkpoint; nothing to write")
    with checkpoint.as_directory() as directory:
        main = load_shard(Path(directory), 0, workers)
    state = main["distiller"]
    history, teacher_acc = state["history"], main["teacher_acc"]
    write_metrics(out_dir, history)
    summary = build_summary(history, teacher_acc, config, teacher, wall, complete=True)
    write_summary(out_dir, summary)
    title = (f"{config.mode} / {config.replay}: {teacher.metadata['arch']} -> {config.student}"
             f", {workers} workers")
    plot_learning_curve(out_dir, history, title, teacher_acc)
    spec = teacher.spec
    student = build_model(config.student, spec.channels, spec.image_size, spec.num_classes)
    student.load_state_dict(state["student"])
    save_teacher(Teacher(student, student_metadata(config, spec, summary["final_acc"])),
                 out_dir / STUDENT_FILE)
    return summary
