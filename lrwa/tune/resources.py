"""What one trial asks of the Ray cluster, and whether the cluster can ever give it.

One worker: the trial runs the engine in its own process and holds all of its
resources. Several workers: the trial only drives a Ray Train run, whose workers
Ray Train places in a placement group of its own, so the trial holds a sliver of
a CPU; reserving the workers in the trial's group as well would book them twice
and deadlock a small machine (a trial holding 1 CPU with 2 one-CPU workers waits
forever on 2 CPUs).
"""

from __future__ import annotations

import math

from lrwa.errors import LrwaError
from lrwa.tune.study import Study

# The Tune trial that drives a Ray Train run only waits on its workers; each worker gives
# back as much, so that trial + workers fit on a machine with exactly workers x cpus CPUs.
DRIVER_CPU = 0.001


def worker_cpus(study: Study) -> float:
    return max(DRIVER_CPU, study.cpus - DRIVER_CPU)


def trial_bundles(study: Study) -> list[dict[str, float]]:
    """The bundles of one Tune trial's placement group (see the module docstring)."""
    if study.workers == 1:
        bundle = {"CPU": study.cpus}
        if study.gpus:
            bundle["GPU"] = study.gpus
        return [bundle]
    return [{"CPU": DRIVER_CPU}]


def resources_per_trial(study: Study) -> dict[str, float]:
    """Everything one trial occupies in the cluster, Ray Train workers included."""
    if study.workers == 1:
        return {"CPU": study.cpus, "GPU": study.gpus}
    return {"CPU": DRIVER_CPU + study.workers * worker_cpus(study),
            "GPU": study.workers * study.gpus}


def check_cluster(study: Study, available: dict[str, float]) -> int:
    """Refuse a trial the cluster can never place; return the concurrency it can hold."""
    need = resources_per_trial(study)
    concurrency = min(study.max_concurrent, study.trials)
    for key, amount in need.items():
        if amount <= 0:
            continue
        have = float(available.get(key, 0.0))
        if amount > have + 1e-9:
            per = f"{study.workers} workers x " if study.workers > 1 else ""
            raise LrwaError(f"study '{study.name}' needs {amount:g} {key} per trial "
                            f"({per}resources) but the Ray cluster has {have:g}; lower "
                            "resources in the study file or use a larger cluster "
                            "(RAY_ADDRESS)")
        concurrency = min(concurrency, max(1, math.floor(have / amount + 1e-9)))
    return concurrency
