"""Ray itself: starting it quietly, and fitting the workers to the cluster before asking.

A Ray Train run that asks for more than the cluster can ever have does not fail: it waits
for resources that never come. So the driver checks the request against the cluster's
nodes at its largest first (the autoscaler's maximum, `ray_capacity`) and refuses it in
one line, within seconds; an unreachable cluster is refused the same way (`ray_connect`).
"""

from __future__ import annotations

import logging
import math

import ray

from lrwa.errors import LrwaError
from lrwa.ray_capacity import cluster_capacity
from lrwa.ray_connect import connect_ray


def ensure_ray() -> None:
    """Start (or join, via RAY_ADDRESS) Ray quietly; Ray's logs stay in its log folder.

    No dashboard, and the workers' output is not forwarded to the console (a two-worker
    run otherwise prints hundreds of lines of Ray Train's own bookkeeping), so the console
    shows lrwa's progress.
    """
    if ray.is_initialized():
        return
    connect_ray(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)


def _fitting_workers(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many workers of `cpus` CPUs and `gpus` GPUs the nodes can hold at once."""
    total = 0
    for resources in nodes:
        count = math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            count = min(count, math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
        total += count
    return total


def plan_cpus(workers: int, gpus_per_worker: float, cpus_per_worker: float | None) -> float:
    """CPUs each worker reserves, or an LrwaError when the workers cannot be placed.

    By default each worker gets the largest whole number of CPUs at which all of them
    fit, so the run has the cluster's CPUs shared out evenly (a CPU worker runs that many
    torch threads). The check uses the cluster at its largest (`ray_capacity`): it cannot
    know what other jobs hold, and an autoscaling cluster adds the nodes the workers'
    placement group waits for.
    """
    capacity = cluster_capacity()
    if capacity.warning:
        print(f"warning: {capacity.warning}", flush=True)
    nodes = capacity.nodes()
    totals = {key: sum(node.get(key, 0.0) for node in nodes) for key in ("CPU", "GPU")}
    have = (f"the Ray cluster has {totals['CPU']:g} CPUs and {totals['GPU']:g} GPUs on "
            f"{len(nodes)} node(s) at its largest ({capacity.describe()})")
    if gpus_per_worker > 0 and totals.get("GPU", 0) == 0:
        raise LrwaError(f"--gpus-per-worker {gpus_per_worker:g} asks for GPUs but {have}")
    if cpus_per_worker is not None:
        if cpus_per_worker <= 0:
            raise LrwaError(f"cpus_per_worker must be positive, got {cpus_per_worker:g}")
        candidates = [cpus_per_worker]
    else:
        largest = max((int(resources.get("CPU", 0)) for resources in nodes), default=0)
        candidates = [float(cpus) for cpus in range(largest, 0, -1)] or [1.0]
    for cpus in candidates:
        if _fitting_workers(nodes, cpus, gpus_per_worker) >= workers:
            return cpus
    cpus = candidates[-1]
    each = f"{cpus:g} CPU" + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "")
    raise LrwaError(f"--workers {workers} needs {each} per worker but {have}; at most "
                    f"{_fitting_workers(nodes, cpus, gpus_per_worker)} such workers fit, "
                    "pass fewer --workers")


def backend_for(gpus_per_worker: float) -> str:
    """NCCL when every rank has a GPU of its own (NCCL refuses two ranks on one GPU), else gloo."""
    return "nccl" if gpus_per_worker >= 1 else "gloo"
