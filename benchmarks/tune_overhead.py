"""What the study harness costs: Tune + Optuna per trial, the quickstart, loading results.

(a) One trial of about a minute (mnist5k small preset, embedded teacher, one thread)
    run directly through `run_distillation` and as a one-trial study, alternately, the
    fastest of each kept; the difference is the harness's cost per trial (Ray's own
    start, once per session, is shown apart). The direct run reuses this warm process;
    the same run as `lrwa distill` in a new process shows what any fresh process pays,
    as each trial's does. A 2-trial study then shows what a later trial on a reused
    worker costs, and Tune's result files the cost per epoch.
    Target: <= 5% of a 60 s trial.
(b) `tune_studies/quickstart.yaml` end to end, into a temporary folder.
(c) `lrwa.tune.load_study` on a synthetic study of 1,000 trials x 400 epochs
    written in the curves layout. Target: <= 2 s.

    python benchmarks/tune_overhead.py            # all three, about 10 minutes on 2 cores
    python benchmarks/tune_overhead.py --quick    # short trials, no quickstart
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from lrwa.config import build_config
from lrwa.run import resolve_teacher, run_distillation


def _study_file(folder: Path, name: str, epochs: int, iters: int, cpus: int,
                trials: int = 1) -> Path:
    data = {
        "name": name,
        "base": {"mode": "meta", "replay": "memory", "epochs": epochs,
                 "iters_per_epoch": iters},
        # A space of one point: every trial runs exactly the direct run's config.
        "space": {"alpha": {"type": "categorical", "choices": [0.9]}},
        "objective": {"metric": "mean_acc", "direction": "max"},
        "budget": {"trials": trials, "max_concurrent": 1},
        "resources": {"cpus": cpus, "gpus": 0, "workers": 1},
        "seed": 0,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def harness_overhead(folder: Path, epochs: int, iters: int, cpus: int,
                     repeats: int) -> list[tuple]:
    import ray
    import torch

    from lrwa.tune.runner import ensure_ray, run_study
    from lrwa.tune.study import load_study_file

    config = build_config("mnist5k", overrides={"epochs": epochs, "iters_per_epoch": iters,
                                                "mode": "meta", "replay": "memory"})
    teacher = resolve_teacher(config)
    torch.set_num_threads(cpus)
    started = time.perf_counter()
    ensure_ray(num_cpus=cpus)  # lrwa's own start, as `lrwa tune` does it
    ray_start = time.perf_counter() - started
    direct_s, shell_s, study_s = [], [], []
    # Direct run, the same run from a shell and one-trial study alternate, and the fastest
    # of each counts: on a shared machine a burst of someone else's work then hits all or
    # none.
    for index in range(repeats):
        started = time.perf_counter()
        run_distillation(config, folder / f"direct-{index}", teacher=teacher, progress=False)
        direct_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        _distill_in_a_new_process(folder / f"shell-{index}", epochs, iters, cpus)
        shell_s.append(time.perf_counter() - started)
        study = load_study_file(_study_file(folder, f"overhead-{index}", epochs, iters, cpus))
        started = time.perf_counter()
        run_study(study, folder / "results", out=lambda line: None)
        study_s.append(time.perf_counter() - started)
    # Later trials of a study run on the worker of an earlier one (reuse_actors). Timed
    # from the console lines: from the previous trial's end (or the study's start) to the
    # trial's first epoch line, less that epoch's own time. Both ends fall in the same
    # few seconds, so other load on the machine barely moves it.
    study = load_study_file(_study_file(folder, "overhead-twice", epochs, iters, cpus,
                                        trials=2))
    timeline = Timeline()
    run_study(study, folder / "results", out=timeline)
    starts = _trial_starts(timeline, folder / "results" / "overhead-twice")
    ray.shutdown()
    direct, shell, tuned = min(direct_s), min(shell_s), min(study_s)
    overhead = tuned - direct
    listed = ", ".join(f"{value:.1f}" for value in direct_s)
    per_epoch = _per_epoch_cost(folder / "results")
    return [
        ("(a) direct run_distillation, fastest of " + str(repeats), f"{direct:.1f} s",
         f"all: {listed} s; {cpus} thread(s)"),
        ("(a) Ray start (once per session, not per trial)", f"{ray_start:.1f} s", ""),
        ("(a) the same run as a 1-trial Tune + Optuna study, fastest of " + str(repeats),
         f"{tuned:.1f} s", "all: " + ", ".join(f"{value:.1f}" for value in study_s) + " s"),
        ("(a) harness overhead per trial", f"{overhead:.2f} s",
         f"{100 * overhead / direct:.1f}% of the trial (target <= 5% of 60 s)"),
        ("(a) the same run as `lrwa distill` in a new process, fastest of " + str(repeats),
         f"{shell:.1f} s", ("what a run started from a shell takes: the process's imports "
                            "(torch, and torch._dynamo with the first optimizer) are paid "
                            "by every trial too")),
        ("(a) harness overhead per trial against that", f"{tuned - shell:.2f} s",
         f"{100 * (tuned - shell) / shell:.1f}% of the run"),
        ("(a) 2-trial study: start of the first trial, to its first epoch",
         f"{starts[0]:.2f} s", "new worker process (imports torch) + the engine's set-up"),
        ("(a) 2-trial study: start of the second trial (reused worker)",
         f"{starts[1]:.2f} s", "the engine's set-up only"),
        ("(a) per epoch: Tune's time between reports less the engine's epoch",
         f"{1e3 * per_epoch:.0f} ms", "median over epochs 2+, timed inside the trials"),
    ]


def _distill_in_a_new_process(out: Path, epochs: int, iters: int, cpus: int) -> None:
    """`lrwa distill` with the direct run's settings, in a new interpreter on `cpus`
    threads (the embedded teacher comes from the cache the direct run filled)."""
    command = [sys.executable, "-m", "lrwa", "distill", "--mode", "meta", "--replay",
               "memory", "--epochs", str(epochs), "--iters-per-epoch", str(iters),
               "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus)}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)


class Timeline:
    """Records when each console line of a study appears (picklable, as Tune needs)."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str]] = []

    def __call__(self, line: str) -> None:
        self.lines.append((time.perf_counter(), line))


def _trial_starts(timeline: Timeline, study_dir: Path) -> list[float]:
    from lrwa.tune import load_study

    curves = load_study(study_dir)[1]
    starts, previous_end = [], timeline.lines[0][0]  # the "starting study" line
    for moment, line in timeline.lines:
        if " epoch 1/" in line:
            trial_id = line.split()[2]
            first = curves[(curves["trial_id"] == trial_id) & (curves["epoch"] == 1)]
            starts.append(moment - previous_end - float(first["wall_s"].iloc[0]))
        elif " completed" in line:
            previous_end = moment
    return starts


def _per_epoch_cost(results: Path) -> float:
    """Median of (time_this_iter_s - the engine's epoch wall_s) over all trials' epochs
    after the first, from Tune's result.json files: robust to other load on the machine,
    since both halves are timed in the same window."""
    import json

    gaps = []
    for result_file in results.glob("*/ray/*/result.json"):
        for line in result_file.read_text().splitlines():
            result = json.loads(line)
            if result.get("epoch", 0) >= 2 and "time_this_iter_s" in result:
                gaps.append(result["time_this_iter_s"] - result["wall_s"])
    return statistics.median(gaps) if gaps else math.nan


def quickstart(folder: Path) -> list[tuple]:
    from lrwa.tune.runner import run_study
    from lrwa.tune.study import load_study_file

    study = load_study_file("quickstart")
    started = time.perf_counter()
    outcome = run_study(study, folder / "quickstart", out=lambda line: None)
    wall = time.perf_counter() - started
    counts = ", ".join(f"{n} {status}" for status, n in outcome.statuses.items() if n)
    return [("(b) quickstart study, end to end (teacher cached; Ray start included)",
             f"{wall:.0f} s", f"{study.budget.trials} trials: {counts}")]


def load_time(folder: Path, trials: int, epochs: int) -> list[tuple]:
    from lrwa.config import DistillConfig
    from lrwa.tune import load_study
    from lrwa.tune.layout import EPOCH_METRICS, STUDY_FORMAT, STUDY_JSON
    from lrwa.tune.results import write_curve, write_trials_table
    from lrwa.tune.storage import open_store

    store = open_store(folder, "synthetic")
    store.write_bytes(STUDY_JSON, json.dumps({"format": STUDY_FORMAT}).encode())
    searched = ("alpha", "buffer_size", "replay_ratio")
    started = time.perf_counter()
    records = []
    for index in range(trials):
        config = DistillConfig(alpha=0.01 + index / trials, buffer_size=256 + index,
                               replay_ratio=0.1 + 0.3 * index / trials)
        rows = [{"epoch": epoch, **{name: math.sin(index + epoch + k)
                                    for k, name in enumerate(EPOCH_METRICS)}}
                for epoch in range(1, epochs + 1)]
        trial_id = f"{index:08x}"
        write_curve(store, trial_id, searched, config.to_dict(), rows)
        records.append({"study": "synthetic", "trial_id": trial_id, "status": "completed",
                        **{key: getattr(config, key) for key in (*searched, "mode", "replay",
                                                                 "seed")},
                        "best_acc": 0.9, "epochs_run": epochs, "epochs": epochs,
                        "config": config.to_dict()})
    write_trials_table(store, searched, records)
    write_s = time.perf_counter() - started
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        trials_frame, curves = load_study(str(store.local_path()))
        timings.append(time.perf_counter() - started)
    assert len(curves) == trials * epochs and len(trials_frame) == trials
    return [(f"(c) write {trials} trials x {epochs} epochs in the curves layout",
             f"{write_s:.1f} s", "synthetic rows"),
            (f"(c) load_study -> pandas ({trials * epochs:,} curve rows)",
             f"{min(timings):.2f} s",
             f"best of 3, median {statistics.median(timings):.2f} s (target <= 2 s)")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="about 10 s trials, no quickstart")
    parser.add_argument("--no-quickstart", action="store_true")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs (and threads) per trial")
    parser.add_argument("--repeats", type=int, default=2,
                        help="direct runs and 1-trial studies, alternated")
    args = parser.parse_args()
    # About 60 s per trial on one core of the 2-core reference machine (10 s with --quick).
    epochs, iters = (1, 10) if args.quick else (3, 20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lrwa-tune-bench-") as temporary:
        folder = Path(temporary)
        rows += harness_overhead(folder, epochs, iters, args.cpus, args.repeats)
        if not (args.quick or args.no_quickstart):
            rows += quickstart(folder)
        rows += load_time(folder, 1000, 400)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average during the benchmark: {load} (2 cores; other jobs skew timings)")
    print("| measurement | time | note |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    main()
