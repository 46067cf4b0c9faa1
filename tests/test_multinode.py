"""Node loss: a study on a real multi-node Ray cluster on one machine loses a worker node
mid-trial, as a spot preemption would, and completes.

`ray.cluster_utils.Cluster` starts a head with no CPUs (so trials can only run on worker
nodes) and two worker nodes of one CPU each, every node with its own raylet and object
store. The driver is this process. Once Tune holds a trial's first checkpoint, the node
running that trial is removed with all its processes, by SIGKILL; Ray restarts the
trial from that checkpoint on the surviving node once its CPU is free. The study runs with
folder storage and with s3:// on moto's S3 server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal

import pytest
import ray
from moto_s3 import BUCKET, moto_server, read_object, s3_uri
from ray.cluster_utils import Cluster
from ray_heads import descendants, parent_pid
from tiny_study import assert_one_truth, write_study_file

from lrwa.tune.layout import RAY_DIR
from lrwa.tune.recorder import StudyRecorder
from lrwa.tune.runner import run_study
from lrwa.tune.study import load_study_file

EPOCHS = 3
WORKER_NODES = 2


@pytest.fixture(scope="module")
def endpoint():
    """Started before the cluster, so every node's processes see its credentials."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def cluster(endpoint):
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def worker_nodes(cluster):
    """Two one-CPU worker nodes (a test before may have removed one)."""
    while len(cluster.worker_nodes) < WORKER_NODES:
        cluster.add_node(num_cpus=1, include_dashboard=False)
    cluster.wait_for_nodes()
    return cluster


def _raylet(node):
    return node.all_processes["raylet"][0].process.pid


def node_running(cluster, pid):
    """The worker node whose raylet started process `pid` (its ancestor)."""
    raylets = {_raylet(node): node for node in cluster.worker_nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = parent_pid(pid)
    raise AssertionError("the trial does not run on a worker node")


def preempt(cluster, node):
    """The whole node at once, as a spot reclaim takes it: its Ray processes and every
    process they started (the trials' workers) are SIGKILLed."""
    workers = descendants(_raylet(node))
    cluster.remove_node(node, allow_graceful=False)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def preempt_at_first_checkpoint(worker_nodes, monkeypatch):
    """Once Tune has a trial's first checkpoint (epoch 1), preempt the node running that
    trial. Returns what was preempted: [(trial id, pid of the trial)]."""
    preempted = []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result or {}
        if not preempted and result.get("epoch") == 1:
            preempted.append((trial.trial_id, result["pid"]))
            preempt(worker_nodes, node_running(worker_nodes, result["pid"]))

    monkeypatch.setattr(StudyRecorder, "on_checkpoint", on_checkpoint, raising=False)
    return preempted


def _results(read, trial_id):
    """Ray's per-trial result.json: one JSON result per line."""
    return [json.loads(line) for line in read(f"{RAY_DIR}/{trial_id}/result.json").splitlines()]


@pytest.mark.parametrize("storage_kind", ["folder", "s3"])
def test_a_node_lost_mid_trial_is_survived(preempt_at_first_checkpoint, endpoint, teacher_file,
                                           tmp_path, storage_kind):
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": EPOCHS},
                                             budget={"trials": 2, "max_concurrent": 2}))
    if storage_kind == "folder":
        storage = tmp_path / "results"
        location = storage / "tiny"

        def read(relative):
            return (location / relative).read_text()
    else:
        prefix = f"{storage_kind}-{tmp_path.name}"
        storage = s3_uri(endpoint, prefix)
        location = s3_uri(endpoint, f"{prefix}/tiny")

        def read(relative):
            return read_object(endpoint, f"{prefix}/tiny/{relative}").decode()

    outcome = run_study(study, storage)

    assert len(preempt_at_first_checkpoint) == 1, "no trial reached its first checkpoint"
    (lost_trial, lost_pid), = preempt_at_first_checkpoint
    assert outcome.complete and outcome.statuses["completed"] == 2
    assert outcome.store.location().startswith(f"s3://{BUCKET}/" if storage_kind == "s3"
                                               else str(storage))
    # Each (trial, epoch) once, and the curves, table and journal agree.
    assert_one_truth(location, budget=2, epochs=EPOCHS)
    # The lost trial went on in a new process on the surviving node from its last
    # checkpoint (epoch 1): Ray's first result after the restart is epoch 2, and every epoch
    # ran once.
    results = _results(read, lost_trial)
    assert [(result["epoch"], result["pid"] == lost_pid, result["iterations_since_restore"])
            for result in results] == [(1, True, 1), (2, False, 1), (3, False, 2)]
