"""What Ray Train costs: samples per second of one plain process vs Ray Train with 1 and 2 workers.

The same config (the mnist5k small preset, shortened) runs three ways on this machine:
`run_distillation` in this process, and `run_distributed` with 1 and 2 workers. Each
replica gets the same number of torch threads (`--threads`, default 1): the plain
process and every Ray worker, which reserves that many CPUs. Equal threads isolate
Ray's cost from torch's threading, whose scaling on a busy machine is erratic (a shared
2-core box with other jobs made 2-thread runs several times slower than 1-thread ones).
Three numbers per setup:

- train samples/s: fresh samples per second inside the training loop, the median over
  epochs after the first (which warms up); per-step costs show here (gradient
  all-reduce), per-epoch ones do not;
- cycle samples/s: fresh samples per epoch over the median time between two epochs'
  rows reaching the driver, so evaluation, checkpoint, report barrier and the row's trip
  through the queue all count; the overhead line compares this at 1 worker with the
  plain process (target: at most 5%);
- end to end: the wall time of the whole call, Ray's worker start-up included (a fixed
  cost per run, not per epoch).

Ray itself is started once before timing, with its workers at nice 0 like the plain
process (`--worker-niceness`): Ray starts workers at nice 15 to keep its own daemons
responsive, and on a machine shared with other jobs that alone cost them about 10% of
the CPU here. On such a machine the numbers also move by several percent from round to
round: use `--repeats`.

    python benchmarks/ray_overhead.py --epochs 4 --repeats 3
    python benchmarks/ray_overhead.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lrwa.config import build_config
from lrwa.ray_train import run_distributed
from lrwa.ray_train.cluster import ensure_ray
from lrwa.run import resolve_teacher, run_distillation


def _train_rate(rows: list[dict[str, Any]]) -> float:
    steady = rows[1:] or rows
    return statistics.median(row["samples_per_s"] for row in steady)


def _measure(name: str, run: Any, out_dir: Path, samples: int, epochs: int) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    arrivals: list[float] = []

    def on_epoch(row: dict[str, Any]) -> None:
        rows.append(row)
        arrivals.append(time.perf_counter())

    started = time.perf_counter()
    run(out_dir, on_epoch)
    seconds = time.perf_counter() - started
    cycles = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    cycle = samples / epochs / statistics.median(cycles) if cycles else float("nan")
    print(f"  {name}: {_train_rate(rows):.0f} train samples/s, {cycle:.0f} cycle samples/s, "
          f"{seconds:.1f} s end to end", flush=True)
    return {"setup": name, "train": _train_rate(rows), "cycle": cycle, "seconds": seconds,
            "end_to_end": samples / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--iters-per-epoch", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the plain process and of each Ray worker")
    parser.add_argument("--mode", default="meta", choices=("acquire", "joint", "meta"))
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over the three setups; the table shows medians")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="nice value of Ray's workers (Ray's own default is 15)")
    parser.add_argument("--quick", action="store_true", help="3 epochs of 2 iterations")
    parser.add_argument("--plot", help="also write a bar chart of cycle samples/s here")
    args = parser.parse_args()
    epochs, iters = (3, 2) if args.quick else (args.epochs, args.iters_per_epoch)
    config = build_config("mnist5k", overrides={"epochs": epochs, "iters_per_epoch": iters,
                                                "mode": args.mode})
    samples = epochs * iters * config.student_steps * config.batch_size
    teacher = resolve_teacher(config)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)  # read when Ray starts
    ensure_ray()
    print(f"{config.mode}/{config.replay}, {config.student}, batch {config.batch_size}, "
          f"{epochs} epochs x {iters} iterations x {config.student_steps} student steps; "
          f"{args.threads} torch thread(s) per replica, Ray workers at nice "
          f"{args.worker_niceness}; Ray started in "
          f"{time.perf_counter() - started:.1f} s", flush=True)

    setups = {
        "plain process": lambda out, callback: run_distillation(
            config, out, teacher=teacher, on_epoch=callback, progress=False),
        "Ray Train, 1 worker": lambda out, callback: run_distributed(
            config, out, workers=1, teacher=teacher, on_epoch=callback,
            cpus_per_worker=args.threads),
        "Ray Train, 2 workers": lambda out, callback: run_distributed(
            config, out, workers=2, teacher=teacher, on_epoch=callback,
            cpus_per_worker=args.threads),
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="lrwa-ray-overhead-") as scratch:
        for round_index in range(args.repeats):
            print(f"round {round_index + 1}/{args.repeats}", flush=True)
            for index, (name, run) in enumerate(setups.items()):
                out_dir = Path(scratch) / f"{round_index}-{index}"
                results[name].append(_measure(name, run, out_dir, samples, epochs))

    table = [{key: (statistics.median(r[key] for r in runs) if key != "setup" else name)
              for key in runs[0]} for name, runs in results.items()]
    plain = table[0]
    print()
    print("| setup | train samples/s | cycle samples/s | cycle vs plain | end-to-end s |")
    print("|---|---:|---:|---:|---:|")
    for row in table:
        print(f"| {row['setup']} | {row['train']:.0f} | {row['cycle']:.0f} | "
              f"{row['cycle'] / plain['cycle']:.2f}x | {row['seconds']:.1f} |")
    overhead = plain["cycle"] / table[1]["cycle"] - 1
    print(f"\nRay overhead at 1 worker: {100 * overhead:+.1f}% time per sample over whole "
          f"epochs (target <= 5%); fixed start-up {table[1]['seconds'] - plain['seconds']:+.1f}"
          " s per run")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3))
        axis.barh([row["setup"] for row in table], [row["cycle"] for row in table])
        axis.set_xlabel("samples/s over whole epochs")
        axis.set_title(f"Ray Train overhead ({config.mode}, mnist5k small preset)")
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
