"""Per-student-step cost of every update rule, in both loss forms.

The updates run interleaved in one process on the same fixed fresh and replayed batches
(round-robin, so drift in machine load hits all of them alike); each timed step is the
gradient plus the optimiser step, i.e. exactly what differs between the rules. The table
gives the median seconds per step and the ratio to joint. Targets: first order <= 1.05x
joint, second order <= 1.4x joint (separate form). The concatenated rows are the baselines'
form (MB-DFKD, PRE-DFKD), LRA's outer loss with theta' connected, and LRA's released update
(theta' from detached weights, whose gradient is the concatenated joint's).

    python benchmarks/step_cost.py                      # LeNet-5-half on 28x28, batch 256
    python benchmarks/step_cost.py --arch resnet18 --image-size 32 --channels 3 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from lrwa.losses import l1_logits
from lrwa.models import build_model
from lrwa.student_update import Batch, UpdateRule, apply_gradient, student_gradient

# The settings that tell the rules apart, as DistillConfig keys; alpha is the paper's CIFAR
# value, theta' without weight decay as in the paper.
SETTINGS: dict[str, dict[str, Any]] = {
    "acquire": {"mode": "acquire"},
    "joint": {"mode": "joint"},
    "meta first order": {"mode": "meta", "first_order": True},
    "meta second order": {"mode": "meta"},
    "joint concatenated": {"mode": "joint", "replay_loss": "concatenated"},
    "meta concatenated": {"mode": "meta", "replay_loss": "concatenated"},
    "released (concatenated, detached theta')": {
        "mode": "meta", "replay_loss": "concatenated", "detach_inner": True,
        "inner_weight_decay": 5e-4},
}
RULES = {name: UpdateRule(loss=l1_logits, alpha=0.9, **settings)
         for name, settings in SETTINGS.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="lenet5-half")
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--replay-ratio", type=float, default=0.25)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-full-step", dest="full_step", action="store_false",
                        help="skip the full student step table")
    parser.add_argument("--no-systems", dest="systems", action="store_false",
                        help="skip the per-iteration table of the named systems")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = (args.channels, args.image_size, args.image_size)
    replay_count = max(1, round(args.replay_ratio * args.batch))
    fresh = Batch(torch.randn(args.batch, *shape, device=device),
                  torch.randn(args.batch, args.classes, device=device))
    replayed = Batch(torch.randn(replay_count, *shape, device=device),
                     torch.randn(replay_count, args.classes, device=device))
    students = {name: build_model(args.arch, *shape[:1], args.image_size, args.classes).to(device)
                for name in RULES}
    optimisers = {name: torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9,
                                        weight_decay=5e-4) for name, model in students.items()}
    timings: dict[str, list[float]] = {name: [] for name in RULES}

    def step(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = student_gradient(students[name], RULES[name], fresh, replayed)
        apply_gradient(students[name], result.gradients)
        optimisers[name].step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for round_index in range(args.warmup + args.rounds):
        for name in RULES:
            elapsed = step(name)
            if round_index >= args.warmup:
                timings[name].append(elapsed)

    print(f"update only: {args.arch} on {'x'.join(map(str, shape))}, batch {args.batch} "
          f"+ {replay_count} replayed, {args.device}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print_table(timings)
    if args.full_step:
        print("\nfull student step (generate the fresh batch, teacher targets, replay sample, "
              "update), mnist5k small preset, lenet5 -> lenet5-half")
        print_table(full_step_timings(args.rounds, args.warmup, device))
    if args.systems:
        print("\nwhole iteration of each named system (1 generator step + 5 student steps and "
              "its replay work), mnist5k small preset; replay = the scheme's own add + sample")
        print_system_table(*system_iteration_timings(max(3, args.rounds // 5), 1, device))


def print_table(timings: dict[str, list[float]]) -> None:
    joint = statistics.median(timings["joint"])
    print("| update | ms / step | ratio to joint |\n|---|---|---|")
    for name, samples in timings.items():
        median = statistics.median(samples)
        print(f"| {name} | {1e3 * median:.2f} | {median / joint:.2f}x |")


def full_step_timings(rounds: int, warmup: int, device: torch.device) -> dict[str, list[float]]:
    """`Distiller.student_step` per mode, with a random-weight teacher (cost, not accuracy)."""
    from lrwa.config import build_config
    from lrwa.data import dataset_spec
    from lrwa.distiller import Distiller

    spec = dataset_spec("mnist5k")
    distillers = {}
    for name, overrides in SETTINGS.items():
        replay = {"replay": "none"} if overrides["mode"] == "acquire" else {}  # it has none
        config = build_config("mnist5k", overrides={**overrides, **replay, "grad_cos_every": 0,
                                                    "device": device.type})
        teacher = build_model("lenet5", spec.channels, spec.image_size, spec.num_classes)
        images = torch.zeros(1, spec.channels, spec.image_size, spec.image_size)
        distiller = Distiller(config, teacher, spec, images, torch.zeros(1, dtype=torch.long),
                              device=device)
        for _ in range(4 if config.replay != "none" else 0):
            distiller.replay.add(distiller._fresh_images()[:config.samples_per_insertion])
        distillers[name] = distiller
    timings: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for round_index in range(warmup + rounds):
        for name, distiller in distillers.items():
            started = time.perf_counter()
            distiller.student_step(probe_cosine=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index >= warmup:
                timings[name].append(time.perf_counter() - started)
    return timings


SYSTEMS = ("dfad", "mb-dfkd", "pre-dfkd", "lrwa-memory", "lrwa-generative")


def system_iteration_timings(rounds: int, warmup: int, device: torch.device
                             ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per whole iteration of each preset, and the part its replay scheme took.

    Each distiller runs one-iteration epochs, so `train_epoch` is one iteration: the
    generator step, the student steps with their replayed batches, and the replay's own
    training (generative: 4 VAE steps; MB-DFKD's bank: an insertion each epoch here)."""
    from lrwa.config import build_config
    from lrwa.data import dataset_spec
    from lrwa.distiller import Distiller

    spec = dataset_spec("mnist5k")
    distillers, spent = {}, {name: 0.0 for name in SYSTEMS}
    for name in SYSTEMS:
        config = build_config("mnist5k", overrides={
            "preset": name, "iters_per_epoch": 1, "epochs": 10_000, "insert_every_epochs": 1,
            "grad_cos_every": 0, "device": device.type})
        teacher = build_model("lenet5", spec.channels, spec.image_size, spec.num_classes)
        images = torch.zeros(1, spec.channels, spec.image_size, spec.image_size)
        distiller = Distiller(config, teacher, spec, images, torch.zeros(1, dtype=torch.long),
                              device=device)
        for method in ("add", "sample"):
            original = getattr(distiller.replay, method)

            def timed(*args: Any, _original: Any = original, _name: str = name) -> Any:
                started = time.perf_counter()
                result = _original(*args)
                spent[_name] += time.perf_counter() - started
                return result

            setattr(distiller.replay, method, timed)
        distillers[name] = distiller
    totals: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    replay: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    for round_index in range(warmup + rounds):
        for name, distiller in distillers.items():
            spent[name] = 0.0
            started = time.perf_counter()
            distiller.train_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index >= warmup:
                totals[name].append(time.perf_counter() - started)
                replay[name].append(spent[name])
    return totals, replay


def print_system_table(totals: dict[str, list[float]], replay: dict[str, list[float]]) -> None:
    base = statistics.median(totals["mb-dfkd"])
    print("| system | ms / iteration | ratio to MB-DFKD | of which replay, ms |\n|---|---|---|---|")
    for name, samples in totals.items():
        median = statistics.median(samples)
        print(f"| {name} | {1e3 * median:.0f} | {median / base:.2f}x | "
              f"{1e3 * statistics.median(replay[name]):.0f} |")


if __name__ == "__main__":
    main()
