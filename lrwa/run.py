"""A single-process distillation run in an output folder: start, checkpoint, resume.

The folder holds `config.yaml` (the resolved config), `checkpoint.pt` (the full
training state after the last complete epoch), `metrics.parquet` (one row per
epoch), `summary.json`, `learning_curve.png` and `student.pt` (the final
student, in the teacher checkpoint format so `lrwa teacher eval` reads it).
A folder that already holds a run is never overwritten: it is resumed with
`resume=True` or refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

import lrwa
from lrwa.atomic import atomic_path, write_text
from lrwa.config import DistillConfig, from_mapping, load_yaml
from lrwa.data import DatasetSpec, load_split
from lrwa.distiller import Distiller, resolve_device
from lrwa.errors import LrwaError
from lrwa.provenance import versions
from lrwa.sinks import plot_learning_curve, write_metrics, write_summary
from lrwa.summary import curve_statistics
from lrwa.teacher import Teacher, default_teacher, load_teacher, save_teacher

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
STUDENT_FILE = "student.pt"
RUN_FORMAT = "lrwa-run/1"
# Keys a resumed run may change: extending a run's length is the one common wish.
RESUMABLE_CHANGES = {"epochs"}

EpochCallback = Callable[[dict[str, Any]], None]


def resolve_teacher(config: DistillConfig, progress: bool = True) -> Teacher:
    if config.teacher is None:
        return default_teacher(progress=progress)
    return load_teacher(config.teacher, config.teacher_arch, config.dataset)


def prepare_out_dir(out_dir: Path, resume: bool) -> None:
    if resume:
        if not (out_dir / CHECKPOINT_FILE).is_file():
            raise LrwaError(f"--resume: {out_dir} holds no run to resume (no {CHECKPOINT_FILE})")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        raise LrwaError(f"{out_dir} already holds files; pass --resume to continue that run "
                        "or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)


def saved_config(out_dir: Path) -> DistillConfig:
    return from_mapping(load_yaml(out_dir / CONFIG_FILE))


def reconcile_resume(out_dir: Path, overrides: Mapping[str, Any]) -> DistillConfig:
    """The saved config wins; an explicitly different value is an error, except `epochs`."""
    saved = saved_config(out_dir)
    requested = saved.replace(**overrides)
    for key in overrides:
        if key not in RESUMABLE_CHANGES and getattr(saved, key) != getattr(requested, key):
            raise LrwaError(f"--resume: {out_dir} was run with {key}={getattr(saved, key)!r}, "
                            f"not {getattr(requested, key)!r}; resume with the original settings")
    return requested


def _save_checkpoint(out_dir: Path, distiller: Distiller, config: DistillConfig) -> None:
    payload = {"format": RUN_FORMAT, "config": config.to_dict(), "versions": versions(),
               "distiller": distiller.state_dict()}
    with atomic_path(out_dir / CHECKPOINT_FILE) as temporary:
        torch.save(payload, temporary)


def load_checkpoint(out_dir: Path) -> dict[str, Any]:
    try:
        payload = torch.load(out_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise LrwaError(f"{out_dir / CHECKPOINT_FILE} cannot be read ({type(error).__name__}); "
                        "it may be corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != RUN_FORMAT:
        raise LrwaError(f"{out_dir / CHECKPOINT_FILE} is not an lrwa run checkpoint")
    return payload


def build_summary(history: Sequence[Mapping[str, Any]], teacher_acc: float,
                  config: DistillConfig, teacher: Teacher, wall_seconds: float,
                  complete: bool) -> dict[str, Any]:
    """summary.json of a run whose per-epoch rows are `history` (single process or Ray)."""
    statistics = curve_statistics([row["test_acc"] for row in history])
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


def run_distillation(config: DistillConfig | None, out_dir: str | Path, resume: bool = False,
                     overrides: Mapping[str, Any] | None = None, teacher: Teacher | None = None,
                     on_epoch: EpochCallback | None = None, progress: bool = True,
                     detach_inner: bool = False) -> dict[str, Any]:
    """Run `config` in a new `out_dir`, or resume the run there (`overrides`: explicit keys).

    Returns the summary dict.
    """
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, resume)
    if resume:
        config = reconcile_resume(out_dir, overrides or {})
    elif config is None:
        raise ValueError("a new run needs a config")
    teacher = teacher or resolve_teacher(config, progress=progress)
    spec = teacher.spec
    eval_images, eval_labels = load_split(spec.name, config.eval_split,
                                          data_root=config.data_root,
                                          download=config.download).tensors()
    device = resolve_device(config.device)
    distiller = Distiller(config, teacher.model, spec, eval_images.to(device), eval_labels,
                          device=device, detach_inner=detach_inner)
    if resume:
        distiller.load_state_dict(load_checkpoint(out_dir)["distiller"])
    else:
        write_text(out_dir / CONFIG_FILE, yaml.safe_dump(config.to_dict(), sort_keys=False))
    started = time.perf_counter() - sum(row["wall_s"] for row in distiller.history)
    title = f"{config.mode} / {config.replay}: {teacher.metadata['arch']} -> {config.student}"
    for row in distiller.epochs():
        write_metrics(out_dir, distiller.history)
        _save_checkpoint(out_dir, distiller, config)
        write_summary(out_dir, build_summary(distiller.history, distiller.teacher_acc, config,
                                             teacher, time.perf_counter() - started,
                                             complete=False))
        if on_epoch is not None:
            on_epoch(row)
    summary = build_summary(distiller.history, distiller.teacher_acc, config, teacher,
                            time.perf_counter() - started, complete=True)
    write_summary(out_dir, summary)
    plot_learning_curve(out_dir, distiller.history, title, distiller.teacher_acc)
    save_teacher(Teacher(distiller.student.cpu(), student_metadata(config, spec,
                                                                   summary["final_acc"])),
                 out_dir / STUDENT_FILE)
    return summary
