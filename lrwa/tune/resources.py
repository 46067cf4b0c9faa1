"""What one trial asks of the Ray cluster, and whether the cluster can ever give it.

One worker: the trial runs the engine in its own process and holds all of its
resources. Several workers: the trial only drives a Ray Train run, whose workers
Ray Train places in a placement group of its own, so the trial holds a sliver of
a CPU; reserving the workers in the trial's group as well would book them twice
and deadlock a small machine (a trial holding 1 CPU with 2 one-CPU workers waits
forever on 2 CPUs).

"Ever" is the cluster at its largest (`lrwa.ray_capacity`): a trial, or each of its
workers, must fit on one node type, and the study runs as many trials at once as the
largest cluster holds, so an autoscaling cluster's pending trials start its nodes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from lrwa.errors import LrwaError
from lrwa.ray_capacity import Capacity, NodeType
from lrwa.tune.study import Study

# The Tune trial that drives a Ray Train run only waits on its workers; each worker gives
# back as much, so that trial + workers fit on a machine with exactly workers x cpus CPUs.
DRIVER_CPU = 0.001


def worker_cpus(study: Study) -> float:
    return max(DRIVER_CPU, study.resources.cpus - DRIVER_CPU)


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    return {"CPU": cpus, **({"GPU": gpus} if gpus else {})}


def trial_bundles(study: Study) -> list[dict[str, float]]:
    """The bundles of one Tune trial's placement group (see the module docstring)."""
    per_trial = study.resources
    return [_bundle(per_trial.cpus, per_trial.gpus) if per_trial.workers == 1
            else {"CPU": DRIVER_CPU}]


def resources_per_trial(study: Study) -> dict[str, float]:
    """Everything one trial occupies in the cluster, Ray Train workers included."""
    per_trial = study.resources
    if per_trial.workers == 1:
        return {"CPU": per_trial.cpus, "GPU": per_trial.gpus}
    return {"CPU": DRIVER_CPU + per_trial.workers * worker_cpus(study),
            "GPU": per_trial.workers * per_trial.gpus}


def _refuse_unplaceable(study: Study, bundle: dict[str, float], capacity: Capacity,
                        what: str) -> None:
    """An LrwaError unless one node type holds `bundle` (one trial or worker never spans
    two nodes, so a sum of the cluster's resources says nothing)."""
    if capacity.fits_one_node(bundle):
        return
    largest = {key: max((node.resources.get(key, 0.0) for node in capacity.node_types
                         if node.max_count), default=0.0) for key in bundle}
    key = next((key for key in bundle if bundle[key] > largest[key] + 1e-9), None)
    short = (f"{bundle[key]:g} {key} {what} but the Ray cluster's largest node has "
             f"{largest[key]:g}" if key else
             f"{bundle} {what} on one node but no node type of the Ray cluster holds all of it")
    raise LrwaError(f"study '{study.name}' needs {short} ({capacity.describe()}); lower "
                    "resources in the study file or use a larger cluster (RAY_ADDRESS)")


def check_cluster(study: Study, capacity: Capacity | Mapping[str, float]) -> int:
    """Refuse a trial the cluster can never place, even at its largest; return how many
    trials run at once: min(max_concurrent, trials, what the cluster holds at its largest).

    `capacity` is the cluster's (`lrwa.ray_capacity.cluster_capacity`), or a mapping
    of resources taken as one node."""
    if not isinstance(capacity, Capacity):
        capacity = Capacity((NodeType("the cluster", dict(capacity), 1),), "the resources given")
    workers = study.resources.workers
    if workers == 1:
        bundle = trial_bundles(study)[0]
        _refuse_unplaceable(study, bundle, capacity, "per trial")
    else:
        bundle = _bundle(worker_cpus(study), study.resources.gpus)
        _refuse_unplaceable(study, bundle, capacity, "per Ray Train worker")
    held = capacity.slots(bundle) // workers
    if held < 1 and workers > 1:
        raise LrwaError(f"study '{study.name}' needs {workers} workers x {bundle} per "
                        f"trial but the Ray cluster holds at most {capacity.slots(bundle)} "
                        f"such workers ({capacity.describe()}); lower resources.workers "
                        "or use a larger cluster (RAY_ADDRESS)")
    return max(1, min(study.budget.max_concurrent, study.budget.trials, held))


def capacity_line(study: Study) -> str:
    """The dry run's line on the cluster: joined (and left) only where RAY_ADDRESS names
    one; else the head's bootstrap config where this is a head; else this machine."""
    from lrwa.ray_capacity import BOOTSTRAP_CONFIG, cluster_capacity, from_ray_up_config

    if os.environ.get("RAY_ADDRESS"):
        import logging

        import ray

        from lrwa.ray_connect import connect_ray

        try:
            connect_ray(log_to_driver=False, logging_level=logging.ERROR)
        except LrwaError as error:
            return f"capacity: not known ({error})"
        try:
            capacity = cluster_capacity()
        finally:
            ray.shutdown()
    elif BOOTSTRAP_CONFIG.expanduser().is_file():
        import yaml

        config = yaml.safe_load(BOOTSTRAP_CONFIG.expanduser().read_text()) or {}
        capacity = from_ray_up_config(config, None, str(BOOTSTRAP_CONFIG))
    else:
        import torch

        machine = {"CPU": float(os.cpu_count() or 1),
                   "GPU": float(torch.cuda.device_count())}
        capacity = Capacity((NodeType("this machine", machine, 1, head=True),),
                            "a local Ray on this machine (set RAY_ADDRESS to judge a cluster)")
    try:
        held = f"{check_cluster(study, capacity)} trial(s) at a time"
    except LrwaError as error:
        held = f"refused: {error}"
    warning = f"; warning: {capacity.warning}" if capacity.warning else ""
    return f"capacity: {capacity.describe()}; {held}{warning}"
