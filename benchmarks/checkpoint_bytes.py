"""Bytes a study trial uploads to the study's storage per epoch.

Each epoch a trial reports its whole run folder to Ray Tune as that epoch's checkpoint,
and Ray copies the folder to `STORAGE/<study>/ray/<trial>/checkpoint_N/` (the newest two
are kept): config.yaml, checkpoint.pt, metrics.parquet, summary.json and the run's lock
file every epoch, plus student.pt and learning_curve.png at the last. This script builds
the run's state at the study's sizes, one real training step included (the optimisers'
state exists only after a step), with a random teacher and random evaluation images of
the data set's shape, fills the memory bank to the largest buffer the study searches
(the bank saves only its filled rows, so a run's checkpoint grows until the bank is
full), writes the folder as `lrwa.run` writes it, and prints each file's size.

    python benchmarks/checkpoint_bytes.py        # the quickstart and the CIFAR-10 study

The sizes do not depend on the batch size, so the step runs a small batch (CIFAR's 512
would take minutes on a CPU). Nothing is downloaded; no teacher is trained.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from lrwa.data import dataset_spec
from lrwa.distiller import Distiller
from lrwa.folder_lock import hold_folder
from lrwa.models import build_model
from lrwa.run import (
    CONFIG_FILE,
    STUDENT_FILE,
    _save_checkpoint,  # the run's own writer, so the bytes are the run's
    build_summary,
    student_metadata,
)
from lrwa.sinks import plot_learning_curve, write_metrics, write_summary
from lrwa.teacher import DEFAULT_TEACHER, Teacher, save_teacher
from lrwa.tune.study import load_study_file

STUDIES = ("quickstart", "cifar10_resnet34_resnet18")
LAST_EPOCH_FILES = (STUDENT_FILE, "learning_curve.png")
EVAL_IMAGES = 256
STEP_BATCH = 32


def study_config(name: str) -> tuple[Any, Any]:
    """(the config of the study's largest-buffer trial, with a one-step epoch, its study)."""
    study = load_study_file(name)
    largest = {name: entry.high for name, entry in study.space.items()
               if name == "buffer_size"}
    config = study.trial_config(largest).replace(
        teacher=None, device="cpu", iters_per_epoch=1, student_steps=1,
        batch_size=STEP_BATCH, data_root=None)
    return config, study


def run_folder(config: Any, teacher_arch: str, out_dir: Path,
               epochs: int) -> tuple[dict[str, int], dict[str, int]]:
    """Write the run folder of `config` after its last epoch: each file's size in bytes, and
    checkpoint.pt's by part."""
    spec = dataset_spec(config.dataset or DEFAULT_TEACHER["dataset"])
    torch.manual_seed(0)
    teacher_model = build_model(teacher_arch, spec.channels, spec.image_size, spec.num_classes)
    teacher = Teacher(teacher_model, {"arch": teacher_arch, "dataset": spec.name})
    shape = (spec.channels, spec.image_size, spec.image_size)
    eval_images = torch.randn(EVAL_IMAGES, *shape)
    eval_labels = torch.randint(spec.num_classes, (EVAL_IMAGES,))
    distiller = Distiller(config.replace(epochs=1), teacher_model, spec, eval_images,
                          eval_labels)
    row = next(iter(distiller.epochs()))
    for start in range(0, config.buffer_size, 512):
        distiller.replay.add(torch.randn(min(512, config.buffer_size - start), *shape))
    # A whole run's history, so metrics.parquet and the checkpoint are the last epoch's.
    distiller.history = [{**row, "epoch": epoch} for epoch in range(1, epochs + 1)]
    distiller.epoch = epochs
    with hold_folder(out_dir, "checkpoint_bytes"):
        (out_dir / CONFIG_FILE).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        _save_checkpoint(out_dir, distiller, config)
        write_metrics(out_dir, distiller.history)
        summary = build_summary(distiller.history, distiller.teacher_acc, config, teacher,
                                wall_seconds=1.0, complete=True)
        write_summary(out_dir, summary)
        plot_learning_curve(out_dir, distiller.history, "benchmark", distiller.teacher_acc)
        student = build_model(config.student, spec.channels, spec.image_size, spec.num_classes)
        student.load_state_dict(distiller.student.state_dict())
        save_teacher(Teacher(student, student_metadata(config, spec, summary["final_acc"])),
                     out_dir / STUDENT_FILE)
        return ({path.name: path.stat().st_size for path in sorted(out_dir.iterdir())
                 if path.is_file()}, checkpoint_parts(distiller))


def saved_bytes(value: Any) -> int:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.tell()


def checkpoint_parts(distiller: Distiller) -> dict[str, int]:
    """checkpoint.pt's bytes by part of the distiller's state (each saved alone)."""
    state = distiller.state_dict()
    parts = {key: saved_bytes(state[key]) for key in (
        "student", "student_optimizer", "generator", "generator_optimizer", "replay")}
    parts["the rest (history, rng, counters)"] = saved_bytes(
        {key: value for key, value in state.items() if key not in parts})
    return parts


def megabytes(count: int) -> str:
    return f"{count / 1e6:9.3f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="*", default=list(STUDIES))
    args = parser.parse_args()
    for name in args.studies:
        config, study = study_config(name)
        teacher_arch = study.base_config().teacher_arch or DEFAULT_TEACHER["arch"]
        with tempfile.TemporaryDirectory() as folder:
            sizes, parts = run_folder(config, teacher_arch, Path(folder) / "run",
                                      config.epochs)
        every_epoch = sum(size for file, size in sizes.items() if file not in LAST_EPOCH_FILES)
        dataset = config.dataset or DEFAULT_TEACHER["dataset"]
        print(f"\n{name}: {teacher_arch} -> {config.student} on {dataset}, "
              f"{config.mode} + {config.replay}, buffer {config.buffer_size} (the largest "
              f"searched), {config.epochs} epochs")
        print(f"  {'file':<22}{'bytes':>12}  {'size':>12}")
        for file, size in sizes.items():
            note = "  (last epoch only)" if file in LAST_EPOCH_FILES else ""
            print(f"  {file:<22}{size:>12,}  {megabytes(size)}{note}")
        print("  checkpoint.pt by part:")
        for part, size in parts.items():
            print(f"    {part:<34}{size:>12,}  {megabytes(size)}")
        whole_trial = every_epoch * config.epochs + sum(sizes[f] for f in LAST_EPOCH_FILES)
        for label, count, note in (
                ("each epoch", every_epoch, ""),
                ("the last epoch", sum(sizes.values()), ""),
                ("a whole trial, at most", whole_trial,
                 (f"  ({config.epochs} epochs, the bank full from the first; Ray keeps "
                  "the newest 2 folders)"))):
            print(f"  {label:<24}{count:>14,}  {megabytes(count)}{note}")


if __name__ == "__main__":
    main()
