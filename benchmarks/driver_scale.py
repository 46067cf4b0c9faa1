"""What the study's driver costs per event as a study grows: the real StudyRecorder and
Optuna journal fed with synthetic trials (no Ray, no training), folder storage.

For each study size N (trials) x E (epochs per trial), the study first holds N - K
finished trials (each driven through the recorder with one epoch: what later events see
is the journal, the table and the curves folder of an N-trial study), then K more trials
run E epochs each through the recorder, and the driver CPU of each kind of event is
measured on those K: an epoch's report (`on_trial_result`), a trial's end
(`on_trial_complete`: the journal told, the curve compacted, the table row), a trial's
start. The amortized rewrites of trials.parquet fall inside the measured events.

The store is a folder that presents itself as an object store, so the journal travels as
it does to S3 (a local cache, parts pushed per change, one whole write at the end), and
every byte lrwa writes to the store is counted: the last column is that total over the
final size of the study's files (target: at most 3x; Ray's own uploads of checkpoints are
not lrwa's and are not counted).

Targets (issue 21): at N = 10,000, at most 2 ms of driver CPU per epoch event and 20 ms
per trial end.

    python benchmarks/driver_scale.py                  # N in 100, 1000, 10000; E in 5, 50, 400
    python benchmarks/driver_scale.py --trials 100,1000 --epochs 5,50   # minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time
import types
from pathlib import Path

import optuna

from lrwa.tune.journal import journal_storage
from lrwa.tune.layout import TRIAL_ID_ATTR
from lrwa.tune.recorder import StudyRecorder
from lrwa.tune.space import optuna_space
from lrwa.tune.storage import StudyStore, open_store
from lrwa.tune.study import Study, parse_study

STUDY = {"name": "scale", "base": {"student": "lenet5-half", "mode": "meta", "replay": "memory",
                                   "epochs": 5, "iters_per_epoch": 2, "batch_size": 32,
                                   "device": "cpu", "teacher": "teacher.pt"},
         "space": {"alpha": {"type": "loguniform", "low": 0.1, "high": 1.0},
                   "replay_ratio": {"type": "uniform", "low": 0.1, "high": 0.5}},
         "objective": {"metric": "mean_acc", "direction": "max"},
         "budget": {"trials": 10, "max_concurrent": 1}}


def _study(trials: int, epochs: int) -> Study:
    data = {**STUDY, "base": {**STUDY["base"], "epochs": epochs},
            "budget": {**STUDY["budget"], "trials": trials}}
    return parse_study(data, "driver_scale")


@dataclasses.dataclass(frozen=True)
class CountedObjectStore(StudyStore):
    """A folder taken for an object store, counting the bytes written to it."""

    @property
    def remote(self) -> bool:
        return True


WRITTEN = [0]
_write = StudyStore.write_bytes


def _counted_write(self: StudyStore, relative: str, data: bytes) -> None:
    WRITTEN[0] += len(data)
    _write(self, relative, data)


class Driver:
    """What Tune and the searcher do around the recorder, for synthetic trials."""

    def __init__(self, study: Study, store: StudyStore) -> None:
        self.study, self.store = study, store
        self.optuna = optuna.create_study(study_name=store.name, storage=journal_storage(store),
                                          direction="maximize", load_if_exists=True,
                                          sampler=optuna.samplers.RandomSampler(seed=0))
        self.space = optuna_space(study)
        self.recorder = StudyRecorder(study, store)
        self.trials: list[types.SimpleNamespace] = []
        self.cpu = {"start": 0.0, "epoch": 0.0, "end": 0.0}
        self.counts = {"start": 0, "epoch": 0, "end": 0}

    def _timed(self, kind: str, call, *args, **kwargs) -> None:
        start = time.process_time()
        call(*args, **kwargs)
        self.cpu[kind] += time.process_time() - start
        self.counts[kind] += 1

    def run_trial(self, epochs: int, timed: bool) -> None:
        asked = self.optuna.ask(self.space)  # the searcher's part, not timed
        trial_id = f"t{len(self.trials):07d}"
        asked.set_user_attr(TRIAL_ID_ATTR, trial_id)
        trial = types.SimpleNamespace(trial_id=trial_id, config=dict(asked.params),
                                      last_result={}, checkpoint=None, status="RUNNING")
        self.trials.append(trial)
        run = self._timed if timed else (lambda kind, call, *a, **k: call(*a, **k))
        run("start", self.recorder.on_trial_start, 0, self.trials, trial)
        best = total = 0.0
        for epoch in range(1, epochs + 1):
            accuracy = 0.5 + 0.4 * epoch / epochs
            best, total = max(best, accuracy), total + accuracy
            result = {"epoch": epoch, "test_acc": accuracy, "loss_acq": 0.1, "loss_ret": 0.1,
                      "loss_gen": 0.1, "grad_cos": 0.5, "buffer_fill": 1.0,
                      "samples_per_s": 1e4, "train_s": 0.1, "wall_s": 0.2, "lr": 0.01,
                      "best_acc": best, "mean_acc": total / epoch}
            trial.last_result = result
            run("epoch", self.recorder.on_trial_result, 0, self.trials, trial, result)
        trial.status = "TERMINATED"
        run("end", self.recorder.on_trial_complete, 0, self.trials, trial)


def _size(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def measure(trials: int, epochs: int, measured: int, root: Path) -> dict[str, float]:
    study = _study(trials, epochs)
    store = CountedObjectStore(open_store(root / f"n{trials}-e{epochs}", "scale").storage,
                               "scale")
    WRITTEN[0] = 0
    driver = Driver(study, store)
    driver.recorder.out = lambda line: None  # the console line's cost is not the driver's
    began = time.process_time()
    for _ in range(trials - measured):
        driver.run_trial(1, timed=False)
    prefill = time.process_time() - began
    for _ in range(measured):
        driver.run_trial(epochs, timed=True)
    driver.recorder.on_experiment_end(driver.trials)
    journal = store.journal_file().stat().st_size / 1e6
    return {"prefill_s": prefill,
            **{f"{kind}_ms": 1e3 * driver.cpu[kind] / max(1, driver.counts[kind])
               for kind in driver.cpu},
            "journal_mb": journal, "study_mb": _size(Path(store.path())),
            "written_ratio": WRITTEN[0] / 1e6 / _size(Path(store.path()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", default="100,1000,10000",
                        help="study sizes N, comma-separated (default 100,1000,10000)")
    parser.add_argument("--epochs", default="5,50,400",
                        help="epochs per trial E, comma-separated (default 5,50,400)")
    parser.add_argument("--measured", type=int, default=20,
                        help="trials measured at the end of each study (default 20)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    StudyStore.write_bytes = _counted_write  # type: ignore[method-assign]
    root = Path(tempfile.mkdtemp(prefix="lrwa-driver-scale-"))
    os.environ["LRWA_CACHE_DIR"] = str(root / "cache")  # the journal's local cache
    sizes = [(int(n), int(e)) for n in args.trials.split(",") for e in args.epochs.split(",")]
    print("| trials N | epochs E | measured trials | driver CPU per epoch event (ms) | "
          "per trial end (ms) | per trial start (ms) | journal (MB) | study folder (MB) | "
          "prefill CPU (s) | bytes written / study size |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    try:
        for trials, epochs in sizes:
            measured = min(trials, args.measured)
            row = measure(trials, epochs, measured, root)
            print(f"| {trials:,} | {epochs} | {measured} | {row['epoch_ms']:.2f} | "
                  f"{row['end_ms']:.2f} | {row['start_ms']:.2f} | {row['journal_mb']:.2f} | "
                  f"{row['study_mb']:.1f} | {row['prefill_s']:.1f} | "
                  f"{row['written_ratio']:.2f} |", flush=True)
            shutil.rmtree(root / f"n{trials}-e{epochs}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
