"""One Tune trial: a distillation run in the trial's own run folder, reported per epoch.

The run folder `STUDY_DIR/runs/<trial_id>/` is an ordinary `lrwa distill`
folder, and its `checkpoint.pt` is the trial's resumable state: the trial id and
therefore the folder survive `Tuner.restore`, so a restarted trial resumes the
run there whatever checkpoint Tune hands back. The checkpoint reported to Tune
is a few bytes (the epoch), which keeps Tune's iteration count in step with
the run without copying model weights every epoch. After each epoch the
trial's curve file is rewritten from the run's history and the running curve
statistics (best/mean/final/var accuracy, max drop) are reported, so ASHA and
Optuna judge a trial by the same numbers the report shows. With an object store
the trial works in a local mirror: it pulls its run folder first and pushes what
changed after every epoch, before Tune hears of the epoch (`storage.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lrwa.config import from_mapping
from lrwa.distiller import NonFiniteLoss
from lrwa.run import CHECKPOINT_FILE, run_distillation
from lrwa.sinks import METRICS_FILE
from lrwa.summary import curve_statistics
from lrwa.teacher import Teacher
from lrwa.tune.curves import curve_path, write_trial_curve
from lrwa.tune.resources import DRIVER_CPU
from lrwa.tune.storage import StudyStorage, TreePusher

RUNS_DIR = "runs"
ERROR_FILE = "error.txt"
EPOCH_FILE = "epoch.json"
DISTRIBUTED_RECORD = "ray_run.json"  # lrwa.ray_train's record of a data-parallel run
# What each epoch reports to Tune besides the running curve statistics.
REPORTED = ("epoch", "test_acc", "loss_acq", "loss_ret", "loss_gen", "grad_cos",
            "buffer_fill", "samples_per_s", "wall_s")


@dataclasses.dataclass(frozen=True)
class FaultPlan:
    """Test-only fault injection at the end of epoch `epoch`, after the curve is written
    and before Tune hears of the epoch, in the first trial to get there.

    `action` "raise" fails the trial with `NonFiniteLoss`; "interrupt" sends SIGUSR1 to
    `driver_pid`, which Tune treats like Ctrl+C. The marker file makes it happen once per
    study, across trials and restores, so a resumed study completes. The CLI never sets
    one.
    """

    epoch: int
    marker: str
    action: str = "raise"
    driver_pid: int = 0


@dataclasses.dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares; passed through `tune.with_parameters`."""

    study: str
    storage: str  # a StudyStorage URI; a folder is absolute
    base: dict[str, Any]
    searched: tuple[str, ...]
    cpus: float
    gpus: float
    workers: int
    faults: FaultPlan | None = None


def run_dir_of(study_dir: str | Path, trial_id: str) -> Path:
    return Path(study_dir) / RUNS_DIR / trial_id


def error_text(error: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}"[:500]


def _inject_fault(plan: FaultPlan | None, epoch: int) -> None:
    if plan is None or epoch != plan.epoch:
        return
    try:
        os.close(os.open(plan.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    if plan.action == "interrupt":
        os.kill(plan.driver_pid, signal.SIGUSR1)
        return
    raise NonFiniteLoss(f"non-finite loss_acq at epoch {epoch} (injected by the test "
                        "fault plan)")


def _fresh_or_resume(store: StudyStorage, study: str, trial_id: str, workers: int) -> bool:
    """True when the run folder holds a run to resume; otherwise clear leftovers of a start
    that died before its first checkpoint (they hold no completed epoch). A data-parallel
    run keeps its checkpoints in Ray storage inside the folder and is known by its record.
    """
    study_dir = store.study_dir(study)
    run_dir = run_dir_of(study_dir, trial_id)
    if store.remote:  # the store is the truth: start from its copy of the run
        if run_dir.exists():
            shutil.rmtree(run_dir)
        store.pull(study, _relative(study_dir, run_dir))
    resumable = CHECKPOINT_FILE if workers == 1 else DISTRIBUTED_RECORD
    if (run_dir / resumable).is_file():
        return True
    if run_dir.exists():
        shutil.rmtree(run_dir)
    curve = curve_path(study_dir, trial_id)
    curve.unlink(missing_ok=True)
    for leftover in (run_dir, curve):
        store.delete(study, _relative(study_dir, leftover))
    return False


def _relative(study_dir: Path, path: Path) -> str:
    return path.relative_to(study_dir).as_posix()


def _report(metrics: dict[str, Any], epoch: int | None) -> None:
    from ray import tune

    if epoch is None:
        tune.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="lrwa-tune-") as folder:
        Path(folder, EPOCH_FILE).write_text(json.dumps({"epoch": epoch}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _reported_metrics(row: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    metrics = {name: row[name] for name in REPORTED if name in row}
    metrics.update(curve_statistics([item["test_acc"] for item in history]))
    return metrics


def train_trial(params: dict[str, Any], context: TrialContext, teacher: Teacher) -> None:
    """The Tune function trainable (wrapped by `tune.with_parameters` in the runner)."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    store = StudyStorage(context.storage)
    pusher = TreePusher(store, context.study)
    study_dir = store.study_dir(context.study)
    run_dir = run_dir_of(study_dir, trial_id)
    try:
        _train(params, context, teacher, trial_id, store, pusher)
    except Exception as error:
        # Kept beside the run so the trial table can show the cause in one line.
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).write_text(error_text(error) + "\n")
        pusher.push(_relative(study_dir, run_dir))
        raise


def _train(params: dict[str, Any], context: TrialContext, teacher: Teacher, trial_id: str,
           store: StudyStorage, pusher: TreePusher) -> None:
    import torch

    config = from_mapping(params, base=from_mapping(context.base))
    study_dir = store.study_dir(context.study)
    run_dir = run_dir_of(study_dir, trial_id)
    resume = _fresh_or_resume(store, context.study, trial_id, context.workers)
    error_file = run_dir / ERROR_FILE
    if error_file.is_file():  # the store's copy came down with the run folder, if any
        error_file.unlink()
        store.delete(context.study, _relative(study_dir, error_file))
    if context.workers == 1:
        torch.set_num_threads(max(1, int(context.cpus)))
    history: list[dict[str, Any]] = []
    reported = False

    def on_epoch(row: dict[str, Any]) -> None:
        nonlocal reported, history
        metrics_file = run_dir / METRICS_FILE
        # The engine has just written the run's whole history (from its checkpointed
        # state); a distributed run may not, so fall back to the rows seen here.
        history = (pq.read_table(metrics_file).to_pylist() if metrics_file.is_file()
                   else [*history, dict(row)])
        curve = write_trial_curve(study_dir, context.study, trial_id, context.searched, config,
                                  history)
        pusher.push(_relative(study_dir, run_dir), _relative(study_dir, curve))
        _inject_fault(context.faults, int(row["epoch"]))
        _report(_reported_metrics(row, history), int(row["epoch"]))
        reported = True

    if context.workers == 1:
        summary = run_distillation(config, run_dir, resume=resume, teacher=teacher,
                                   on_epoch=on_epoch, progress=False)
    else:
        summary = _run_distributed(config, run_dir, resume, teacher, on_epoch, context)
    pusher.push(_relative(study_dir, run_dir))  # the final student.pt, summary and plot
    if not reported:
        # A restored trial whose run had already finished: tell Tune its final numbers.
        final = {"epoch": summary.get("epochs_run")}
        final.update({name: summary.get(name) for name in
                      ("best_acc", "mean_acc", "final_acc", "var_acc", "max_drop")})
        _report(final, None)


def _run_distributed(config: Any, run_dir: Path, resume: bool, teacher: Teacher,
                     on_epoch: Any, context: TrialContext) -> dict[str, Any]:
    """Data-parallel trial through Ray Train (imported only when a study asks for it)."""
    from lrwa.ray_train import run_distributed

    # Ray Train's checkpoints go to its default storage, `<run_dir>/ray`, so the run
    # folder holds the whole trial; each worker leaves the trial's driver its sliver.
    return run_distributed(config, run_dir, workers=context.workers,
                           gpus_per_worker=context.gpus, resume=resume, teacher=teacher,
                           on_epoch=on_epoch,
                           cpus_per_worker=max(DRIVER_CPU, context.cpus - DRIVER_CPU))
