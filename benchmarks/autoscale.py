"""How long an autoscaled study waits for nodes: from `lrwa tune` to its first trial running
on a cluster with no worker nodes, and from a node's reclaim to its trial running again.

Runs on Ray's fake autoscaler on this machine (tests/ray_heads.py: a head of no CPUs, worker
nodes of 1 CPU, at most 2, published as cluster.yaml's head start does). Each repeat starts
a fresh head, runs the tiny study with `lrwa tune` as a command, and reads the times from
the command's own lines: "starting study" (Ray joined, Tuner built), the first "epoch 1"
line (a trial ran on a node the autoscaler started), and for the reclaim, the node is
SIGKILLed with everything under it once epoch 1 is printed, then the time to that trial's
next epoch line. A cloud adds its boot time (minutes for a GPU node) to the first figure.

    python benchmarks/autoscale.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ray_heads import busy_worker_node, reclaim, start_head
from tiny_study import write_study_file, write_tiny_teacher

WORKER_TYPE = {"cpu1": {"resources": {"CPU": 1}, "max_workers": 2}}


def one_run(teacher: Path, folder: Path, reclaim_node: bool) -> dict[str, float]:
    head = start_head(folder, worker_types=WORKER_TYPE, idle_timeout_s=5)
    try:
        env = head.ray_env()
        subprocess.run([sys.executable, "-m", "lrwa.ray_capacity", "publish",
                        str(folder / "autoscaling.yaml"), "--address", head.address],
                       env=env, check=True, capture_output=True)
        study = write_study_file(folder, teacher, base={"epochs": 3, "iters_per_epoch": 20},
                                 budget={"trials": 1, "max_concurrent": 1})
        started = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "lrwa", "tune", str(study),
                                    "--storage", str(folder / "studies")], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        times: dict[str, float] = {}
        for line in process.stdout:
            now = time.monotonic()
            if line.startswith("starting study"):
                times["joined_s"] = now - started
            elif "epoch 1/" in line and "first_epoch_s" not in times:
                times["first_epoch_s"] = now - started
                raylet = busy_worker_node(head) if reclaim_node else None
                if raylet is not None:
                    reclaim(raylet)
                    times["reclaimed_at"] = now
            elif "epoch" in line and "reclaimed_at" in times and "back_s" not in times:
                times["back_s"] = now - times.pop("reclaimed_at")
        process.wait()
        times["total_s"] = time.monotonic() - started
        return times
    finally:
        head.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lrwa-autoscale-") as folder:
        teacher = write_tiny_teacher(Path(folder))
        runs = []
        for index in range(args.repeats):
            run_folder = Path(folder) / f"run-{index}"
            run_folder.mkdir()
            runs.append(one_run(teacher, run_folder, reclaim_node=True))
            print(f"run {index + 1}: " + ", ".join(f"{key} {value:.1f}" for key, value
                                                   in runs[-1].items()), flush=True)
    print(f"\n{'measure':<48} {'median s':>9} {'min s':>7} {'max s':>7}")
    for key, label in [("joined_s", "`lrwa tune` -> study started (Ray joined)"),
                       ("first_epoch_s", "`lrwa tune` -> first epoch, from 0 worker nodes"),
                       ("back_s", "node reclaimed -> the trial's next epoch")]:
        values = [run[key] for run in runs if key in run]
        if values:
            print(f"{label:<48} {statistics.median(values):>9.1f} {min(values):>7.1f} "
                  f"{max(values):>7.1f}")
    print(f"({len(runs)} runs; CPUs: {os.cpu_count()}; load average "
          f"{os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    main()
