"""`lrwa tune --dry-run`: what a study would run, and an estimate of what it costs.

The estimate is measured where it can be: a generator step and a student step of
the base config are timed on the device the trials would use (CPU, or a GPU when
the study asks for GPUs and one is visible), at a batch of at most 64, scaled
linearly to the study's batch, plus one evaluation pass. A GPU study estimated on
a machine without a GPU uses the FLOP cost model below instead, and says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from lrwa.data import dataset_spec, load_split
from lrwa.errors import LrwaError
from lrwa.models import build_model
from lrwa.teacher import (
    DEFAULT_TEACHER,
    RECIPES,
    Teacher,
    default_teacher_path,
    load_teacher,
    torch_threads,
)
from lrwa.tune.commands import QUICKSTART_MINUTES, QUICKSTART_STUDY, Printer, print_line
from lrwa.tune.layout import DEFAULT_STORAGE  # one name for the default, in layout.py
from lrwa.tune.resources import capacity_line, resources_per_trial, trial_bundles
from lrwa.tune.storage import open_store
from lrwa.tune.study import Study

EVAL_SIZES = {"mnist5k": 1000, "digits": 360, "cifar10": 10000, "cifar100": 10000,
              "svhn": 26032}
MEASURE_BATCH = 64


def _measurement_setup(study: Study) -> tuple[Any, Any, Any]:
    """The base config, a teacher of the study's architecture and its data set's spec. The
    cost of a step does not depend on the weights, so a dry run never trains or loads one:
    the embedded teacher and a teacher file named with teacher_arch and dataset are stood
    in for by random weights."""
    base = study.base_config()
    if base.teacher is None:
        arch, dataset = DEFAULT_TEACHER["arch"], DEFAULT_TEACHER["dataset"]
    elif base.teacher_arch and base.dataset:
        arch, dataset = base.teacher_arch, base.dataset
    elif Path(base.teacher).is_file():
        teacher = load_teacher(base.teacher)
        return base, teacher, dataset_spec(teacher.metadata["dataset"])
    else:
        raise LrwaError(f"teacher file {base.teacher} does not exist yet and base names no "
                        "teacher_arch and dataset to build a stand-in of the same cost")
    spec = dataset_spec(dataset)
    model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    return base, Teacher(model, {"arch": arch, "dataset": dataset}), spec


def _timed(step: Callable[[], Any], repeats: int, cuda: bool) -> float:
    step()  # warm-up
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def measure_epoch_seconds(study: Study) -> tuple[float, str]:
    """(seconds per epoch of one trial at the base config, how), from the steps timed here
    as the module docstring says."""
    from lrwa.distiller import Distiller

    base, teacher, spec = _measurement_setup(study)
    cuda = study.resources.gpus > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    batch = min(base.batch_size, MEASURE_BATCH)
    config = base.replace(batch_size=batch, device=device.type)
    threads = max(1, int(study.resources.cpus))
    with torch_threads(threads):
        images = torch.randn(256, spec.channels, spec.image_size, spec.image_size)
        labels = torch.zeros(256, dtype=torch.int64)
        distiller = Distiller(config, teacher.model, spec, images.to(device), labels,
                              device=device)
        if config.replay != "none":
            distiller.replay.add(distiller._fresh_images()[:config.samples_per_insertion])
        generator_s = _timed(distiller.generator_step, 2, cuda)
        student_s = _timed(lambda: distiller.student_step(False), 3, cuda)
        # Generative replay trains its VAE at the first steps of every iteration.
        vae_steps = (min(config.vae_steps_per_iteration, config.student_steps)
                     if config.replay == "generative" else 0)
        fresh = distiller._fresh_images()
        vae_s = _timed(lambda: distiller.replay.add(fresh), 2, cuda) if vae_steps else 0.0
        eval_s = _timed(distiller.evaluate, 1, cuda) * EVAL_SIZES.get(spec.name, 10000) / 256
    scale = base.batch_size / batch
    iteration_s = scale * (base.generator_steps * generator_s + base.student_steps * student_s
                           + vae_steps * vae_s)
    epoch_s = base.iters_per_epoch * iteration_s + eval_s / base.eval_every
    where = (f"measured here on {device.type}"
             + (f" ({torch.cuda.get_device_name()})" if cuda else f" with {threads} thread(s)")
             + f": generator step {1e3 * generator_s:.1f} ms, student step "
             f"{1e3 * student_s:.1f} ms"
             + (f", VAE step {1e3 * vae_s:.1f} ms x {vae_steps}" if vae_steps else "")
             + f" at batch {batch}, scaled to batch {base.batch_size}")
    return epoch_s, where


# The GPU cost model, used when a GPU study is estimated on a machine without one:
# forward FLOPs per sample are counted with torch's FlopCounterMode, a training pass
# costs 3 forwards (forward + backward), the second-order meta step 1.4x a joint step
# and the first-order one 1.05x (the targets of benchmarks/step_cost.py), and a GPU
# sustains ASSUMED_GPU_FLOPS on these convolutions (TF32/bf16 ResNets at batch 512
# typically reach 15-40 TFLOP/s on an A100/H100; 25 is the middle).
ASSUMED_GPU_FLOPS = 25e12
META_FACTOR = {"acquire": 1.0, "joint": 1.0, "meta": 1.4}


def _forward_flops(model: Any, inputs: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return counter.get_total_flops() / inputs.shape[0]


def model_epoch_seconds(study: Study) -> tuple[float, str]:
    """Seconds per epoch of one trial on one GPU, from counted FLOPs (see above)."""
    from lrwa.generator import Generator
    from lrwa.vae import VAE

    base, teacher, spec = _measurement_setup(study)
    shape = (2, spec.channels, spec.image_size, spec.image_size)
    student = build_model(base.student, spec.channels, spec.image_size, spec.num_classes)
    generator = Generator(base.latent_dim, spec.channels, spec.image_size,
                          width=base.generator_width)
    vae = VAE(base.vae_latent_dim, spec.channels, spec.image_size, width=base.generator_width)
    teacher_f = _forward_flops(teacher.model, torch.randn(shape))
    student_f = _forward_flops(student, torch.randn(shape))
    generator_f = _forward_flops(generator, torch.randn(2, base.latent_dim))
    ratio = 0.0 if base.replay == "none" or base.mode == "acquire" else base.replay_ratio
    factor = 1.05 if base.mode == "meta" and base.first_order else META_FACTOR[base.mode]
    generator_step = 3 * (generator_f + teacher_f + student_f)
    student_step = generator_f + (1 + ratio) * teacher_f + factor * 3 * (1 + ratio) * student_f
    iteration = base.batch_size * (base.generator_steps * generator_step
                                   + base.student_steps * student_step)
    if base.replay == "generative":
        # Each VAE step trains encoder and decoder on batch/2 + the replayed batch, with the
        # teacher on input and reconstruction; each replayed batch first tunes its latents.
        vae_f = (_forward_flops(vae.encoder, torch.randn(shape))
                 + _forward_flops(vae.decoder, torch.randn(2, base.vae_latent_dim)))
        shares = base.batch_size // 2 + base.replay_batch_size
        vae_steps = min(base.vae_steps_per_iteration, base.student_steps)
        iteration += vae_steps * shares * 3 * (vae_f + 2 * teacher_f)
        iteration += base.student_steps * base.replay_batch_size * 3 * (vae_f + teacher_f)
    evaluation = EVAL_SIZES.get(spec.name, 10000) * student_f / base.eval_every
    epoch_flops = base.iters_per_epoch * iteration + evaluation
    where = (f"cost model, no GPU here: {epoch_flops / 1e15:.2f} PFLOP per epoch counted "
             f"with FlopCounterMode at an assumed {ASSUMED_GPU_FLOPS / 1e12:.0f} TFLOP/s "
             "per GPU")
    return epoch_flops / ASSUMED_GPU_FLOPS, where


def dry_run(study: Study, storage: str | os.PathLike[str] = DEFAULT_STORAGE,
            out: Printer = print_line, measure: bool = True) -> dict[str, Any]:
    """Print what the study would run and an estimate of its cost; run nothing."""
    base = study.base
    out(f"study '{study.name}' ({study.source}), hash {study.fingerprint()}")
    out(f"  folder: {open_store(storage, study.name).location()}")
    out(f"  base: {base['mode']} / {base['replay']}, student {base['student']}, teacher "
        f"{base['teacher'] or 'embedded mnist5k lenet5'}, {base['epochs']} epochs x "
        f"{base['iters_per_epoch']} iterations x {base['student_steps']} student steps, "
        f"batch {base['batch_size']}, seed {base['seed']}")
    out("  space:")
    for name, entry in study.space.items():
        out(f"    {name}: {entry.describe()}")
    objective = ", ".join(f"{o.direction} {o.metric}" for o in study.objectives)
    out(f"  objective: {objective}" + ("  (Pareto front)" if study.multi_objective else ""))
    scheduler = (f"asha (grace {study.scheduler.grace_period}, "
                 f"reduction {study.scheduler.reduction_factor:g})"
                 if study.scheduler.type == "asha" else "none")
    out(f"  trials: {study.budget.trials}, up to {study.budget.max_concurrent} at a time, "
        f"time budget {study.budget.time_budget_s or 'none'}; sampler {study.sampler.type} "
        f"(seed {study.seed}); scheduler {scheduler}; {len(study.points_to_evaluate)} points "
        "evaluated first")
    need = resources_per_trial(study)
    out(f"  resources per trial: {study.resources.workers} worker(s) x "
        f"{study.resources.cpus:g} CPU, {study.resources.gpus:g} GPU; "
        f"Tune placement group {trial_bundles(study)}; "
        f"{need['CPU']:g} CPU and {need['GPU']:g} GPU in all")
    out(f"  {capacity_line(study)}")
    if study.name == QUICKSTART_STUDY:
        out(f"  README's figure: about {QUICKSTART_MINUTES} min on 2 CPU cores, the teacher's "
            "training included, cold (benchmarks/quickstart_time.py); this machine's estimate "
            "is below")
    estimate: dict[str, Any] = {"trials": study.budget.trials, "resources": need,
                                "missing": missing_inputs(study)}
    for problem in estimate["missing"]:
        out(f"  not ready: {problem}")
    if not measure:
        return estimate
    try:
        if study.resources.gpus > 0 and not torch.cuda.is_available():
            epoch_s, how = model_epoch_seconds(study)
        else:
            epoch_s, how = measure_epoch_seconds(study)
    except LrwaError as error:
        out(f"  estimate: not available ({error})")
        return estimate
    epochs = expected_epochs(study)
    trial_s = epochs * epoch_s / study.resources.workers
    most_s = study.epochs * epoch_s / study.resources.workers
    parallel = max(1, min(study.budget.max_concurrent, study.budget.trials))
    teacher_s = teacher_training_seconds(study)
    # Trials run `parallel` at a time; a study starts with Ray and its first worker.
    wall_s = teacher_s + STUDY_START_S + study.budget.trials * trial_s / parallel
    estimate.update({
        "epoch_s": epoch_s, "trial_s": trial_s, "teacher_s": teacher_s, "wall_s": wall_s,
        "most_wall_s": teacher_s + STUDY_START_S + study.budget.trials * most_s / parallel,
        "cpu_hours": study.budget.trials * trial_s * need["CPU"] / 3600,
        "gpu_hours": study.budget.trials * trial_s * need["GPU"] / 3600, "how": how})
    out(f"  estimate ({how}):")
    out(f"    {epoch_s:.1f} s per epoch; {epochs:.3g} epochs per trial on average"
        + (f" with ASHA's stopping (at most {base['epochs']})" if study.scheduler.type == "asha"
           else "") + f"; {study.budget.trials} trials, {parallel} at a time")
    if teacher_s:
        out(f"    the embedded teacher is not cached yet: training it first, about "
            f"{teacher_s:.0f} s")
    out(f"    about {duration(wall_s)} of wall time"
        + (f" (at most {duration(estimate['most_wall_s'])} if no trial is stopped early)"
           if study.scheduler.type == "asha" else "")
        + f"; {estimate['cpu_hours']:.2f} CPU hours, {estimate['gpu_hours']:.2f} GPU hours"
        + (" (ideal data-parallel speed-up)" if study.resources.workers > 1 else ""))
    return estimate


def missing_inputs(study: Study) -> list[str]:
    """What the study's trials would need and cannot find: the teacher file, the data set's
    files under data_root (read here, as a trial would; the bundled sets always exist)."""
    base = study.base_config()
    problems, dataset = [], base.dataset
    if base.teacher is None:
        dataset = DEFAULT_TEACHER["dataset"]
    elif not Path(base.teacher).expanduser().is_file():
        arch = f" --arch {base.teacher_arch}" if base.teacher_arch else ""
        named = f" --dataset {base.dataset}" if base.dataset else ""
        problems.append(f"teacher file {base.teacher} does not exist (relative to "
                        f"{Path.cwd()}); train it first: lrwa teacher train{named}{arch} "
                        f"--out {base.teacher}")
    elif dataset is None:
        dataset = load_teacher(base.teacher).metadata["dataset"]
    if dataset is not None and dataset_spec(dataset).needs_root and not base.download:
        try:
            load_split(dataset, base.eval_split, data_root=base.data_root)
        except LrwaError as error:
            problems.append(f"data set {dataset}: {error}")
    return problems


STUDY_START_S = 10.0  # Ray's start, the Tuner and the first worker, measured on 2 cores


def duration(seconds: float) -> str:
    """2.5 min, 1.8 h: how the README, the CLI and the study files write a duration."""
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def expected_epochs(study: Study) -> float:
    """Epochs per trial with ASHA's successive halving: every trial reaches the grace
    period, 1/r of them the next rung (grace x r), 1/r^2 the one after, and so on to the
    last epoch. Without a scheduler every trial runs every epoch."""
    epochs = study.epochs
    if study.scheduler.type != "asha":
        return float(epochs)
    expected, rung, survivors = 0.0, 0, 1.0
    milestone = float(study.scheduler.grace_period)
    while rung < epochs:
        reached = min(epochs, int(milestone))
        expected += survivors * (reached - rung)
        rung, survivors = reached, survivors / study.scheduler.reduction_factor
        milestone *= study.scheduler.reduction_factor
    return expected


def teacher_training_seconds(study: Study) -> float:
    """Seconds to train the embedded teacher when the study needs it and it is not cached:
    a few of its recipe's batches timed here, scaled to the whole recipe; else 0."""
    if study.base.get("teacher") is not None or default_teacher_path().is_file():
        return 0.0
    dataset, arch = DEFAULT_TEACHER["dataset"], DEFAULT_TEACHER["arch"]
    recipe, spec = RECIPES[dataset], dataset_spec(dataset)
    train = load_split(dataset, "train", augment=True)
    loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True, drop_last=True)
    model = build_model(arch, spec.channels, spec.image_size, spec.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum)
    batches = iter(loader)

    def step() -> None:
        images, labels = next(batches)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    with torch_threads(recipe.threads):
        step()  # with `_timed`'s own, two warm-up batches
        per_batch = _timed(step, 20, cuda=False)
    return per_batch * len(loader) * recipe.epochs
