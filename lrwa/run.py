"""A single-process distillation run in an output folder: start, checkpoint, resume.

The folder holds `config.yaml` (the resolved config, its paths absolute so the run
resumes from any working directory), `checkpoint.pt` (the full training state after the
last complete epoch), `metrics.parquet` (one row per epoch), `summary.json`,
`learning_curve.png` and `student.pt` (the final student, in the teacher checkpoint
format so `lrwa teacher eval` reads it).

- One writer: a run holds its folder (`folder_lock.hold_folder`) from start to end; a
  second run into the same folder is refused at once, naming the first.
- Never overwritten: a folder that holds a run is resumed (`resume=True`) or refused.
  A folder whose run died before its first checkpoint holds only lrwa's own leftovers
  (config.yaml, the lock file, temporaries): it may be started afresh, or resumed, which
  starts from epoch 0 with its saved config. Temporaries of killed writes are removed
  when a run starts.
- Each epoch writes checkpoint.pt first, then metrics.parquet and summary.json, so the
  table never lists an epoch the checkpoint does not hold. The last epoch's final files
  (complete summary, plot, student.pt) are written before `on_epoch` sees that epoch.
- Failures that are the user's to fix are one line: a non-finite loss, memory that
  cannot be had for the batch, a full disk, a checkpoint from another run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

import lrwa
from lrwa.atomic import is_temporary, write_text, write_with
from lrwa.config import PATH_KEYS, DistillConfig, absolute_paths, from_mapping, resolved_path
from lrwa.data import DatasetSpec, load_split
from lrwa.distiller import Distiller, NonFiniteLoss, resolve_device
from lrwa.errors import LrwaError, first_line
from lrwa.execution import apply_execution, resolved_execution
from lrwa.folder_lock import LOCK_FILE, hold_folder
from lrwa.generator import Generator
from lrwa.models import build_model
from lrwa.output_paths import check_folder
from lrwa.provenance import versions
from lrwa.sinks import SUMMARY_FILE, plot_learning_curve, write_metrics, write_summary
from lrwa.summary import curve_statistics
from lrwa.teacher import Teacher, default_teacher, load_teacher, save_teacher
from lrwa.yaml_files import clipped, load_yaml_mapping, shown

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
STUDENT_FILE = "student.pt"
RUN_FORMAT = "lrwa-run/1"
# Keys a resumed run may change: extending a run's length is the one common wish.
RESUMABLE_CHANGES = {"epochs"}
# What a run writes before its first checkpoint: a folder holding only these (and
# temporaries) was never started, so a new run may use it.
STARTUP_FILES = frozenset({CONFIG_FILE, LOCK_FILE})
HOLDER = "lrwa distill"

EpochCallback = Callable[[dict[str, Any]], None]


def resolve_teacher(config: DistillConfig, progress: bool = True) -> Teacher:
    if config.teacher is None:
        return default_teacher(progress=progress)
    return load_teacher(config.teacher, config.teacher_arch, config.dataset)


def remove_temporaries(out_dir: Path) -> None:
    """Delete the temporaries of writes that a kill interrupted (call while holding out_dir)."""
    for path in out_dir.iterdir():
        if is_temporary(path) and path.is_file():
            path.unlink(missing_ok=True)


def unstarted(out_dir: Path, startup_files: frozenset[str] = STARTUP_FILES) -> bool:
    """True when `out_dir` is absent or holds nothing but a never-started run's leftovers."""
    if not out_dir.exists():
        return True
    return all(path.name in startup_files or is_temporary(path) for path in out_dir.iterdir())


def prepare_out_dir(out_dir: Path, resume: bool,
                    startup_files: frozenset[str] = STARTUP_FILES) -> bool:
    """Refuse a folder that does not fit the request; True when there is a checkpoint.

    A new run needs a folder that is absent, empty or never started; a resume needs a
    checkpoint, or the saved config of a run that died before its first one.
    """
    if resume:
        if (out_dir / CHECKPOINT_FILE).is_file():
            return True
        if (out_dir / CONFIG_FILE).is_file() and unstarted(out_dir, startup_files):
            return False
        raise LrwaError(f"--resume: {out_dir} holds no run to resume (no {CHECKPOINT_FILE})")
    if not unstarted(out_dir, startup_files):
        raise LrwaError(f"{out_dir} already holds files; pass --resume to continue that run "
                        "or choose another --out")
    return False


def saved_config(out_dir: Path) -> DistillConfig:
    return from_mapping(load_yaml_mapping(out_dir / CONFIG_FILE, "run config"))


def _same_setting(key: str, saved: Any, requested: Any) -> bool:
    if key in PATH_KEYS and isinstance(saved, str) and isinstance(requested, str):
        # The same file by another path (relative, through a symlink) is the same setting.
        return resolved_path(key, saved) == resolved_path(key, requested)
    return saved == requested


def reconcile_resume(out_dir: Path, overrides: Mapping[str, Any]) -> DistillConfig:
    """The saved config wins; an explicitly different value is an error, except `epochs`."""
    saved = saved_config(out_dir)
    requested = saved.replace(**overrides)
    for key in overrides:
        before, after = getattr(saved, key), getattr(requested, key)
        if key not in RESUMABLE_CHANGES and not _same_setting(key, before, after):
            raise LrwaError(f"--resume: {out_dir} was run with {key}={shown(before)}, "
                            f"not {shown(after)}; resume with the original settings")
    return requested.replace(**{key: getattr(saved, key) for key in PATH_KEYS})


def _save_checkpoint(out_dir: Path, distiller: Distiller, config: DistillConfig) -> None:
    payload = {"format": RUN_FORMAT, "config": config.to_dict(), "versions": versions(),
               "distiller": distiller.state_dict()}
    # Through a stream: torch.save to a file name hides a full disk in a RuntimeError.
    write_with(out_dir / CHECKPOINT_FILE, lambda stream: torch.save(payload, stream))


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    try:
        payload = torch.load(out_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise LrwaError(f"{out_dir / CHECKPOINT_FILE} cannot be read ({type(error).__name__}); "
                        "it may be corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != RUN_FORMAT:
        raise LrwaError(f"{out_dir / CHECKPOINT_FILE} is not an lrwa run checkpoint")
    return payload


def _foreign(out_dir: Path, detail: str) -> LrwaError:
    return LrwaError(f"{out_dir / CHECKPOINT_FILE} is not this run's checkpoint ({detail}); "
                     f"it was written by another run or is damaged")


def restore_checkpoint(distiller: Distiller, out_dir: Path, config: DistillConfig) -> None:
    """Load checkpoint.pt into `distiller`, refusing one written for another config or model."""
    payload = load_checkpoint(out_dir)
    recorded = payload.get("config")
    if not isinstance(recorded, dict):
        raise _foreign(out_dir, "it records no config")
    for key, value in config.to_dict().items():
        # A key newer than the checkpoint is not recorded; config.yaml has its default too.
        if key in recorded and key not in RESUMABLE_CHANGES and not _same_setting(
                key, recorded[key], value):
            raise _foreign(out_dir, f"it has {key}={shown(recorded[key])}, "
                                    f"{CONFIG_FILE} has {shown(value)}")
    try:
        distiller.load_state_dict(payload["distiller"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        raise _foreign(out_dir, clipped(first_line(error))) from None


def build_summary(history: Sequence[Mapping[str, Any]], teacher_acc: float,
                  config: DistillConfig, teacher: Teacher, wall_seconds: float,
                  complete: bool) -> dict[str, Any]:
    """summary.json of a run whose per-epoch rows are `history` (single process or Ray)."""
    statistics = curve_statistics([row["test_acc"] for row in history], config.warmup_epochs)
    return {
        **statistics,
        "teacher_acc": teacher_acc,
        "teacher_gap": teacher_acc - statistics["best_acc"],
        "epochs_run": int(history[-1]["epoch"]) if history else 0,
        "complete": complete,
        "wall_s": wall_seconds,
        "seed": config.seed,
        "dataset": teacher.metadata["dataset"],
        "teacher_arch": teacher.metadata["arch"],
        "config": config.to_dict(),
        "versions": versions(),
    }


def student_metadata(config: DistillConfig, spec: DatasetSpec, final_acc: float
                     ) -> dict[str, Any]:
    """student.pt's metadata: the teacher checkpoint fields, so `lrwa teacher eval` reads it."""
    return {"arch": config.student, "dataset": spec.name, "num_classes": spec.num_classes,
            "channels": spec.channels, "image_size": spec.image_size, "mean": list(spec.mean),
            "std": list(spec.std), "test_acc": final_acc, "lrwa_version": lrwa.__version__,
            "seed": config.seed, "distilled_with": config.mode}


def check_batches_fit(config: DistillConfig, spec: DatasetSpec, per_worker: str = "") -> None:
    """Refuse batches that leave a training BatchNorm layer one value per channel.

    BatchNorm in training needs two values per channel for a variance, and torch says so
    only when the layer is reached, mid-run. The smallest batch the student trains on is
    the replayed one when replay is on; the generator trains on the fresh batch. Both are
    tried on models built on the meta device, which allocates no memory and does no work.
    `per_worker` is said in the message for one worker's share of a data-parallel batch.
    """
    batches = {"batch_size": config.batch_size}
    if config.replay != "none":
        batches["the replayed batch (replay_ratio x batch_size)"] = config.replay_batch_size
    name, smallest = min(batches.items(), key=lambda item: item[1])
    # torch refuses only when batch x spatial size is 1, so batches of 2 or more always
    # fit; skipping the forward then spares each new process the ~1 s that its first
    # meta-device forward spends importing sympy (every trial of a study is one).
    if min(smallest, config.batch_size) >= 2:
        return
    with torch.device("meta"):
        student = build_model(config.student, spec.channels, spec.image_size, spec.num_classes)
        generator = Generator(config.latent_dim, spec.channels, spec.image_size,
                              width=config.generator_width)
        trials = ((config.student, student, torch.empty(smallest, spec.channels,
                                                        spec.image_size, spec.image_size)),
                  ("the generator", generator, torch.empty(config.batch_size, config.latent_dim)))
        for model_name, model, inputs in trials:
            try:
                model.train()(inputs)
            except ValueError as error:
                if "more than 1 value per channel" not in str(error):
                    raise
                size = smallest if model is student else config.batch_size
                which = name if model is student else "batch_size"
                raise LrwaError(f"{which} {size}{per_worker} is too small for {model_name} on "
                                f"{spec.name}: a BatchNorm layer gets one value per channel "
                                "and cannot normalise; use a larger batch_size") from None


def finished_summary(out_dir: Path, epochs: int | None) -> dict[str, Any] | None:
    """The summary of the run in `out_dir` when it has run all its epochs (`epochs`, when
    the resume names a length; else the length of its last call), with `already_complete`
    set; None when there is training left, or a length to refuse, or its files disagree.

    A finished run's last epoch wrote student.pt and a complete summary.json after its
    checkpoint, so these two say it is done without loading the teacher or the data.
    """
    if not (out_dir / STUDENT_FILE).is_file():
        return None
    try:
        summary = json.loads((out_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("complete") is not True:
        return None
    length = epochs if epochs is not None else (summary.get("config") or {}).get("epochs")
    if summary.get("epochs_run") != length:
        return None  # more epochs asked for, or fewer (refused on the full path)
    return {**summary, "already_complete": True}


def _out_of_memory(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text
                                                or "out of memory" in text)


def run_distillation(config: DistillConfig | None, out_dir: str | Path, resume: bool = False,
                     overrides: Mapping[str, Any] | None = None, teacher: Teacher | None = None,
                     on_epoch: EpochCallback | None = None,
                     progress: bool = True,
                     evaluation: Evaluation | None = None) -> dict[str, Any]:
    """Run `config` in a new `out_dir`, or resume the run there (`overrides`: explicit keys).

    `evaluation` is the evaluation split when the caller already holds it (a study's
    driver hands it to every trial instead of each trial reading the data set again).
    Returns the summary dict.
    """
    out_dir = Path(out_dir)
    check_folder(out_dir, "run folder")
    with hold_folder(out_dir, HOLDER):
        remove_temporaries(out_dir)
        has_checkpoint = prepare_out_dir(out_dir, resume)
        if resume:
            config = reconcile_resume(out_dir, overrides or {})
            asked = (overrides or {}).get("epochs")
            finished = finished_summary(out_dir, asked) if has_checkpoint else None
            if finished is not None:
                return finished
        elif config is None:
            raise ValueError("a new run needs a config")
        else:
            config = resolved_execution(absolute_paths(config))
        teacher = teacher or resolve_teacher(config, progress=progress)
        if not resume:  # config.yaml names what ran, the embedded teacher's data set too
            config = config.replace(dataset=teacher.metadata["dataset"],
                                    teacher_arch=teacher.metadata["arch"])
        apply_execution(config)
        check_batches_fit(config, teacher.spec)
        run = _Run(config, out_dir, teacher, evaluation)
        try:
            return run.train(has_checkpoint, write_config=not resume, on_epoch=on_epoch)
        except NonFiniteLoss as error:
            raise NonFiniteLoss(f"{error}; {run.kept()}") from None
        except Exception as error:
            if not _out_of_memory(error):
                raise
            raise LrwaError(f"out of memory at batch_size {config.batch_size} "
                            f"({type(error).__name__}); use a smaller batch_size; "
                            f"{run.kept()}") from None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """An evaluation split already in memory: which data set and split it is, and its
    tensors (the uint8 images are normalised by `ImageDataset.tensors`)."""

    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def load(cls, dataset: str, config: DistillConfig) -> Evaluation:
        images, labels = load_split(dataset, config.eval_split, data_root=config.data_root,
                                    download=config.download).tensors()
        return cls(dataset, config.eval_split, images, labels)

    def matches(self, dataset: str, config: DistillConfig) -> bool:
        return (self.dataset, self.split) == (dataset, config.eval_split)


class _Run:
    """The training part of `run_distillation`, keeping what a failure message must tell."""

    def __init__(self, config: DistillConfig, out_dir: Path, teacher: Teacher,
                 evaluation: Evaluation | None = None) -> None:
        self.config, self.out_dir, self.teacher = config, out_dir, teacher
        self.evaluation = evaluation
        self.distiller: Distiller | None = None

    def kept(self) -> str:
        """What a failed run leaves to resume from: each completed epoch was checkpointed."""
        if self.distiller is None or self.distiller.epoch == 0:
            return "no epoch had completed, so nothing was saved"
        return f"the last good checkpoint (epoch {self.distiller.epoch}) is kept"

    def train(self, has_checkpoint: bool, write_config: bool,
              on_epoch: EpochCallback | None) -> dict[str, Any]:
        config, out_dir, teacher = self.config, self.out_dir, self.teacher
        spec = teacher.spec
        evaluation = self.evaluation
        if evaluation is None or not evaluation.matches(spec.name, config):
            evaluation = Evaluation.load(spec.name, config)
        eval_images, eval_labels = evaluation.images, evaluation.labels
        device = resolve_device(config.device)
        self.distiller = distiller = Distiller(config, teacher.model, spec,
                                               eval_images.to(device), eval_labels,
                                               device=device)
        if has_checkpoint:
            restore_checkpoint(distiller, out_dir, config)
            if config.epochs < distiller.epoch:
                raise LrwaError(f"--resume: {out_dir} has already run {distiller.epoch} epochs; "
                                f"epochs must be at least {distiller.epoch}, not "
                                f"{config.epochs}")
        if write_config:
            write_text(out_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
        started = time.perf_counter() - sum(row["wall_s"] for row in distiller.history)
        title = f"{config.mode} / {config.replay}: {teacher.metadata['arch']} -> {config.student}"
        summary = None
        for row in distiller.epochs():
            # The checkpoint first: the table and summary never list an epoch it lacks.
            _save_checkpoint(out_dir, distiller, config)
            write_metrics(out_dir, distiller.history)
            wall = time.perf_counter() - started
            if distiller.epoch == config.epochs:
                # Before on_epoch, so a caller sees every file of the run for its last epoch.
                summary = self._write_final(wall, title)
            else:
                write_summary(out_dir, build_summary(distiller.history, distiller.teacher_acc,
                                                     config, teacher, wall, complete=False))
            if on_epoch is not None:
                on_epoch(row)
        if summary is None:  # resumed a run that had already finished: nothing was trained
            summary = self._write_final(time.perf_counter() - started, title)
        return summary

    def _write_final(self, wall: float, title: str) -> dict[str, Any]:
        distiller, config, spec = self.distiller, self.config, self.teacher.spec
        assert distiller is not None
        summary = build_summary(distiller.history, distiller.teacher_acc, config, self.teacher,
                                wall, complete=True)
        write_summary(self.out_dir, summary)
        plot_learning_curve(self.out_dir, distiller.history, title, distiller.teacher_acc,
                            spec.num_classes)
        student = build_model(config.student, spec.channels, spec.image_size, spec.num_classes)
        student.load_state_dict(distiller.student.state_dict())  # a CPU copy; training goes on
        save_teacher(Teacher(student, student_metadata(config, spec, summary["final_acc"])),
                     self.out_dir / STUDENT_FILE)
        return summary
