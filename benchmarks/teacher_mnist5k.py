"""Benchmark: the mnist5k LeNet-5 teacher recipe on two CPU threads.

Equivalent to `lrwa teacher train --dataset mnist5k --arch lenet5`: trains with the
recipe in `lrwa.teacher.RECIPES["mnist5k"]` and prints epochs, wall seconds and test
accuracy. The target is at least 98% test accuracy within 180 s on 2 cores. `--epochs`
takes several counts to trace accuracy against time (each count is a separate run, since
the one-cycle schedule depends on it); `--smoke-test` runs one epoch.

    python benchmarks/teacher_mnist5k.py [--epochs 10 20 30] [--threads 2] [--smoke-test]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from lrwa.teacher import RECIPES, train_teacher

TARGET_ACCURACY = 0.98
TARGET_SECONDS = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[RECIPES["mnist5k"].epochs])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke-test", action="store_true", help="one epoch, to check it runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    counts = [1] if args.smoke_test else args.epochs

    rows = []
    for epochs in counts:
        started = time.perf_counter()
        teacher = train_teacher("mnist5k", "lenet5", epochs=epochs, seed=args.seed,
                                progress=False)
        wall = time.perf_counter() - started  # includes loading the data and the test pass
        rows.append((epochs, wall, teacher.metadata["test_acc"]))
        print(f"  {epochs} epochs done in {wall:.1f} s", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmnist5k LeNet-5 teacher, {args.threads} threads, seed {args.seed}, "
          f"torch {torch.__version__}, 1-min load average at the end {load:.1f}")
    print(f"{'epochs':>6}  {'wall s':>8}  {'test acc':>8}  target (>= 98% in <= 180 s)")
    for epochs, wall, test_acc in rows:
        met = test_acc >= TARGET_ACCURACY and wall <= TARGET_SECONDS
        print(f"{epochs:>6}  {wall:>8.1f}  {100 * test_acc:>7.2f}%  {'met' if met else 'missed'}")


if __name__ == "__main__":
    main()
