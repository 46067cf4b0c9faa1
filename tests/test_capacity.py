"""The cluster's maximum, from cluster.yaml's node types: what fits on one node, how many
trials run at once within the worker cap, and the record published for Ray Train.
No Ray is started here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tiny_study import SPACE, write_study_file

from lrwa.errors import LrwaError
from lrwa.ray_capacity import (
    Capacity,
    NodeType,
    cluster_config_message,
    from_cluster_config_message,
    from_ray_up_config,
)
from lrwa.tune.resources import check_cluster
from lrwa.tune.study import load_study_file

CLUSTER_FILE = Path(__file__).resolve().parent.parent / "cluster.yaml"
HEAD = {"CPU": 8.0}  # an m5.2xlarge head, as Ray detects it


@pytest.fixture(scope="module")
def aws() -> Capacity:
    return from_ray_up_config(yaml.safe_load(CLUSTER_FILE.read_text()), HEAD, "cluster.yaml")


def _study(tmp_path, **resources):
    tmp_path.mkdir(parents=True, exist_ok=True)
    teacher = tmp_path / "teacher.pt"
    teacher.touch()
    # Data parallel splits the bank over the workers: a linear buffer_size steps evenly.
    space = {**SPACE, "buffer_size": {"type": "int", "low": 32, "high": 128}}
    return load_study_file(write_study_file(tmp_path, teacher, resources=resources,
                                            space=space,
                                            budget={"trials": 40, "max_concurrent": 40}))


def test_trials_are_counted_at_the_maximum_within_the_worker_cap(aws, tmp_path):
    # 8 worker nodes at most: 2 x gpu-4 (4 trials each) first, then 6 x gpu-1 = 14 GPUs.
    assert aws.slots({"CPU": 4, "GPU": 1}) == 14
    assert check_cluster(_study(tmp_path, cpus=4, gpus=1), aws) == 14
    # CPU-only trials may use the head's CPUs too: 8 / 4 + 2 x 12 + 6 x 1.
    assert aws.slots({"CPU": 4}) == 2 + 24 + 6


def test_a_trial_must_fit_on_one_node_type(tmp_path):
    # 2 nodes of 4 CPUs hold 8 CPUs in all, but never one 6-CPU trial.
    small = Capacity((NodeType("cpu-4", {"CPU": 4.0}, 2),), "a test")
    with pytest.raises(LrwaError, match=r"needs 6 CPU per trial but the Ray cluster's "
                                        r"largest node has 4 \(up to 2 x cpu-4"):
        check_cluster(_study(tmp_path, cpus=6), small)
    # Data parallel: each worker on one node; 2 workers of 4 CPUs on the 2 nodes.
    assert check_cluster(_study(tmp_path / "dp", cpus=4, workers=2), small) == 1


def test_concurrency_is_the_least_of_the_budget_and_the_maximum(tmp_path):
    two = Capacity((NodeType("cpu-1", {"CPU": 1.0}, 2),), "a test")
    assert check_cluster(_study(tmp_path, cpus=1), two) == 2
    none_now = Capacity((NodeType("head", {"CPU": 0.0}, 1, head=True),
                         NodeType("cpu-1", {"CPU": 1.0}, 2)), "a test")
    assert check_cluster(_study(tmp_path / "zero", cpus=1), none_now) == 2


def test_the_published_record_round_trips_and_bounds_ray_trains_check(aws):
    from ray._private.state import GlobalState

    message = cluster_config_message(aws)
    again = from_cluster_config_message(message)
    assert again.max_workers == 8
    assert {(node.name, node.max_count, node.head) for node in again.node_types} == {
        ("head", 1, True), ("gpu-1", 8, False), ("gpu-4", 2, False)}
    assert again.slots({"CPU": 4, "GPU": 1}) == 14
    # What Ray Train's own resource check reads from the same record.
    assert GlobalState._calculate_max_resource_from_cluster_config(message, "GPU") == 14
