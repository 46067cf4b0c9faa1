"""GPU throughput of the paper-scale setting: epochs per hour, per update rule and speed option.

CIFAR-shaped ResNet-34 teacher -> ResNet-18 student with random weights (no data needed:
the cost of a step does not depend on what the weights have learnt), the paper's batch
(512 fresh + 64 replayed from a memory bank), 72 iterations of 1 generator step and 10
student steps per epoch. Each cell times `--iters` whole iterations after `--warmup`
and scales to the paper's epoch. The speed options are `channels_last` and `bf16`
(autocast of the student update); the meta rows give the meta step's cost against joint.

    python benchmarks/gpu_throughput.py                     # on a CUDA machine
    python benchmarks/gpu_throughput.py --device cpu --batch 16 --iters 1 --warmup 0  # runs?
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from lrwa.config import build_config
from lrwa.data import dataset_spec
from lrwa.distiller import Distiller
from lrwa.models import build_model

UPDATES = {"joint": {"mode": "joint"}, "meta first order": {"mode": "meta", "first_order": True},
           "meta second order": {"mode": "meta"}}
OPTIONS = {"plain": {}, "channels_last": {"channels_last": True}, "bf16": {"bf16": True},
           "channels_last + bf16": {"channels_last": True, "bf16": True}}


def seconds_per_iteration(overrides: dict, device: torch.device, iters: int, warmup: int,
                          batch: int) -> float:
    spec = dataset_spec("cifar10")
    config = build_config(None, overrides={
        "student": "resnet18", "batch_size": batch, "iters_per_epoch": iters,
        "replay": "memory", "grad_cos_every": 0, "device": device.type, **overrides})
    teacher = build_model("resnet34", spec.channels, spec.image_size, spec.num_classes)
    images = torch.zeros(1, spec.channels, spec.image_size, spec.image_size, device=device)
    distiller = Distiller(config, teacher, spec, images, torch.zeros(1, dtype=torch.long),
                          device=device)
    # Fill the bank so every timed step replays, as it does after the first epoch.
    while not distiller.replay.can_sample(config.replay_batch_size):
        distiller.replay.add(distiller._fresh_images()[:config.samples_per_insertion])
    for _ in range(warmup):
        distiller.train_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    distiller.train_epoch()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per cell")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of --iters first")
    parser.add_argument("--paper-iters", type=int, default=72, help="iterations per epoch")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"ResNet-34 -> ResNet-18, 3x32x32, batch {args.batch} + {args.batch // 8} replayed, "
          f"{args.paper_iters} iterations x (1 generator + 10 student steps) per epoch, "
          f"{name}, torch {torch.__version__}")
    print("| update | option | s / iteration | epochs / hour | vs joint (same option) |")
    print("|---|---|---:|---:|---:|")
    joint: dict[str, float] = {}
    for (update, rule), (option, speed) in itertools.product(UPDATES.items(), OPTIONS.items()):
        if speed.get("bf16") and device.type != "cuda":
            continue  # bf16 autocast is a CUDA option
        seconds = seconds_per_iteration({**rule, **speed}, device, args.iters, args.warmup,
                                        args.batch)
        if update == "joint":
            joint[option] = seconds
        ratio = seconds / joint[option] if option in joint else float("nan")
        print(f"| {update} | {option} | {seconds:.3f} | "
              f"{3600 / (seconds * args.paper_iters):.1f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
