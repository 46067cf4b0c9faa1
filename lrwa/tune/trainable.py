"""One Tune trial: an lrwa run whose every epoch travels to Ray as a checkpoint.

The trial runs the engine in a scratch run folder in its working directory. After
each epoch, once the run folder holds that epoch's checkpoint.pt, metrics and
summary, the folder is reported to Tune as the epoch's checkpoint; Ray persists it
to the study's storage (`ray/<trial_id>/checkpoint_NNNNNN/`, the newest two kept)
and hands it back on restore, on whichever node the trial restarts, where the run
resumes exactly. The last epoch's checkpoint also holds student.pt and
learning_curve.png. Data-parallel trials run Ray Train, whose own checkpoints go to
`train/<trial_id>/` of the study's storage; their Tune checkpoint is the small run
record that finds them.

An error of the engine (a non-finite loss, a bad setting) ends the trial with one
report carrying the error: retrying would fail the same way. A trial that dies with
its process or node is retried by Ray from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from ray import tune

from lrwa.distiller import NonFiniteLoss
from lrwa.errors import first_line
from lrwa.run import Evaluation, run_distillation
from lrwa.sinks import METRICS_FILE, SUMMARY_FILE
from lrwa.teacher import Teacher
from lrwa.tune.layout import ERROR_KEY, OBJECTIVE_METRICS, epoch_values
from lrwa.tune.resources import worker_cpus
from lrwa.tune.storage import StudyStore
from lrwa.tune.study import Study

TRAIN_DIR = "train"  # Ray Train's checkpoints of data-parallel trials
FAULT_ACTIONS = ("raise", "interrupt", "kill", "kill-trial", "oserror")


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Test-only faults at the end of `epoch`, before Tune hears of it: once per study in
    the first trial to get there (a marker file remembers), or in every trial when
    `marker` is empty. "raise" fails the engine; "interrupt" sends SIGUSR1 to the driver
    (Tune's Ctrl+C); "kill" SIGKILLs the driver; "kill-trial" SIGKILLs the trial's own
    process, as the kernel's out-of-memory killer would; "oserror" raises ENOSPC, as a
    full disk would. The CLI never sets one."""

    epoch: int
    marker: str = ""
    action: str = "raise"
    driver_pid: int = 0

    def __post_init__(self) -> None:
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"FaultPlan.action {self.action!r} is not one of {FAULT_ACTIONS}")
        if self.action in ("interrupt", "kill") and self.driver_pid <= 0:
            # os.kill(0 or -1, ...) would signal a whole process group, or every process.
            raise ValueError(f"FaultPlan {self.action!r} needs the driver's pid, got "
                             f"{self.driver_pid}")


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial of one invocation shares; passed through `tune.with_parameters`."""

    study: Study
    store: StudyStore
    decided: frozenset[str] = frozenset()  # trials whose end the journal already holds
    faults: FaultPlan | None = None


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"[:500]


def _inject_fault(plan: FaultPlan | None, epoch: int) -> None:
    if plan is None or epoch != plan.epoch:
        return
    if plan.marker:
        try:
            marker = os.open(plan.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(marker, str(os.getpid()).encode())  # which process the fault hit
        os.close(marker)
    if plan.action == "raise":
        raise NonFiniteLoss(f"non-finite loss_acq at epoch {epoch} (injected by a test)")
    if plan.action == "kill-trial":
        os.kill(os.getpid(), signal.SIGKILL)
    if plan.action == "oserror":  # a full disk: the trial's storage cannot take a write
        raise OSError(28, "No space left on device (injected by a test)")
    os.kill(plan.driver_pid, signal.SIGUSR1 if plan.action == "interrupt" else signal.SIGKILL)


def _summary(run_dir: Path, *extra: str) -> dict[str, Any]:
    """The objective metrics (and `extra`) of the run's summary so far, None where absent."""
    path = run_dir / SUMMARY_FILE
    summary = json.loads(path.read_text()) if path.is_file() else {}
    return {name: summary.get(name) for name in (*OBJECTIVE_METRICS, *extra)}


def _report(run_dir: Path, row: dict[str, Any], checkpoint: bool) -> None:
    """Tell Tune of epoch `row`: its metrics, the curve statistics so far (what ASHA and
    the console judge), and the run folder as the epoch's checkpoint."""
    metrics = {"epoch": int(row["epoch"]), **epoch_values(row),
               **_summary(run_dir, "teacher_acc")}
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(run_dir))
                if checkpoint else None)


def train_trial(params: dict[str, Any], context: TrialContext, teacher: Teacher,
                evaluation: Evaluation | None = None) -> None:
    """The Tune function trainable (wrapped by `tune.with_parameters` in the runner)."""
    trial_id = tune.get_context().get_trial_id()
    if trial_id in context.decided:
        return  # restored from an older experiment state; the journal holds its end
    run_dir = Path.cwd() / "lrwa-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        checkpoint.to_directory(str(run_dir))
    try:
        _run(params, context, teacher, evaluation, trial_id, run_dir,
             resume=checkpoint is not None)
    except OSError:
        # A full disk, a lost mount: not the configuration's fault. Ray retries the trial
        # from its last checkpoint, and a rerun resumes it if those retries fail too.
        raise
    except Exception as error:  # noqa: BLE001 - the engine's errors end the trial, once
        # No epoch, so ASHA ignores this report; the objective keys keep Tune's check of
        # reported metrics content.
        tune.report({ERROR_KEY: error_text(error), **_summary(run_dir)})
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _run(params: dict[str, Any], context: TrialContext, teacher: Teacher,
         evaluation: Evaluation | None, trial_id: str, run_dir: Path, resume: bool) -> None:
    study = context.study
    config = study.trial_config(params)
    reported = False

    def on_epoch(row: dict[str, Any]) -> None:
        nonlocal reported
        epoch = int(row["epoch"])
        _inject_fault(context.faults, epoch)
        _report(run_dir, row, checkpoint=epoch % study.resources.checkpoint_every == 0
                or epoch >= config.epochs)
        reported = True

    if study.resources.workers == 1:  # the config carries the trial's threads (Study.trial_config)
        run_distillation(None if resume else config, run_dir, resume=resume, teacher=teacher,
                         on_epoch=on_epoch, progress=False, evaluation=evaluation)
    else:
        from lrwa.ray_train import run_distributed

        storage = context.store.uri(f"{TRAIN_DIR}/{trial_id}")
        run_distributed(None if resume else config, run_dir, workers=study.resources.workers,
                        gpus_per_worker=study.resources.gpus, storage=None if resume else storage,
                        resume=resume, teacher=teacher, on_epoch=on_epoch,
                        cpus_per_worker=worker_cpus(study))
    if not reported:
        # Restored from the checkpoint of its last epoch: tell Tune that epoch again.
        _report(run_dir, pq.read_table(run_dir / METRICS_FILE).to_pylist()[-1], checkpoint=False)
