"""Studies on an autoscaling Ray cluster that starts with no worker nodes.

The head (`ray_heads.start_head`, no CPUs of its own) runs Ray's autoscaler over the fake
multi-node provider: worker nodes of 1 CPU, at most 2, ended after 5 idle seconds. Its
node types are published the way cluster.yaml's head start does
(`python -m lrwa.ray_capacity publish`). Then:

- `lrwa tune` judges the study against the maximum (2 trials at a time), its pending
  trials make the autoscaler start the nodes, the study completes, and the nodes go;
- a worker node reclaimed mid-trial (its raylet and every process under it SIGKILLed, as
  a spot reclaim takes a machine) is replaced by the autoscaler, and the trial resumes
  from its checkpoint with every epoch once in the curves and the journal;
- `lrwa distill --workers 2` places its workers on nodes the autoscaler starts for them,
  and goes on from its checkpoint when one of them is reclaimed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_heads import busy_worker_node, cluster_nodes, descendants, reclaim, start_head
from tiny_study import read_journal, write_study_file, write_tiny_teacher

pytestmark = pytest.mark.cluster

WORKER_TYPE = {"cpu1": {"resources": {"CPU": 1}, "max_workers": 2}}
IDLE_TIMEOUT_S = 5
SCALE_DOWN_LIMIT_S = 90


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    folder = tmp_path_factory.mktemp("autoscaling")
    head = start_head(folder, worker_types=WORKER_TYPE, idle_timeout_s=IDLE_TIMEOUT_S)
    try:
        published = subprocess.run(
            [sys.executable, "-m", "lrwa.ray_capacity", "publish", str(head.config_file),
             "--address", head.address],
            env=head.ray_env(), capture_output=True, text=True, timeout=120, check=False)
        assert published.returncode == 0, published.stderr[-3000:]
        assert "2 x cpu1 (1 CPU)" in published.stdout
        yield head
    finally:
        head.stop()


def _worker_nodes(head) -> int:
    return len(cluster_nodes(head.address, head.ray_env())) - 1


def _show(head, **env) -> str:
    shown = subprocess.run(check=False, args=[sys.executable, "-m", "lrwa.ray_capacity", "show"],
                           env=head.ray_env(**env), capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-3000:]
    return shown.stdout


def test_the_maximum_comes_from_the_published_config_then_the_head_then_the_nodes(head,
                                                                                  tmp_path):
    published = _show(head)
    assert "from the cluster config the head published" in published
    # Withdrawn (an empty record), the maximum is the head's bootstrap config, else unknown.
    withdraw = ("import ray; ray.init(); from ray.core.generated import autoscaler_pb2; "
                "ray._private.worker.global_worker.gcs_client.report_cluster_config("
                "autoscaler_pb2.ClusterConfig().SerializeToString())")
    subprocess.run(check=True, args=[sys.executable, "-c", withdraw], env=head.ray_env(),
                   capture_output=True, timeout=120)
    try:
        (tmp_path / "ray_bootstrap_config.yaml").write_text(head.config_file.read_text())
        from_head = _show(head, HOME=str(tmp_path))
        assert ("up to 2 x cpu1 (1 CPU) + 1 x ray.head.default (no CPU), at most 2 worker "
                "nodes, from ~/ray_bootstrap_config.yaml") in from_head
        unknown = _show(head, HOME=str(tmp_path / "elsewhere"))
        assert "from the nodes up now" in unknown
        assert "warning: an autoscaler runs but its maximum is unknown" in unknown
    finally:
        subprocess.run(check=True, args=[sys.executable, "-m", "lrwa.ray_capacity", "publish",
                                         str(head.config_file), "--address", head.address],
                       env=head.ray_env(), capture_output=True, timeout=120)


def test_the_dry_run_prints_the_maximum_and_its_source(head, teacher_file, tmp_path):
    study = write_study_file(tmp_path, teacher_file, budget={"trials": 3, "max_concurrent": 4})
    run = subprocess.run(check=False, args=[sys.executable, "-m", "lrwa", "tune", str(study), "--dry-run"],
                         env=head.ray_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert ("capacity: up to 2 x cpu1 (1 CPU) + 1 x ray.head.default (no CPU), at most 2 "
            "worker nodes, from the cluster config the head published; 2 trial(s) at a time"
            ) in run.stdout


def test_a_study_scales_the_cluster_up_from_zero_and_back(head, teacher_file, tmp_path):
    assert _worker_nodes(head) == 0
    study = write_study_file(tmp_path, teacher_file, budget={"trials": 2, "max_concurrent": 4})
    run = subprocess.run(check=False, args=[sys.executable, "-m", "lrwa", "tune", str(study), "--storage",
                          str(tmp_path / "studies")], env=head.ray_env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    # Judged by the maximum (2 one-CPU nodes), not by the 0 CPUs up at the start.
    assert "2 trials, up to 2 at a time" in run.stdout
    assert "study " + str(tmp_path / "studies" / "tiny") + ": 2 completed" in run.stdout
    # Nothing was requested that outlives the study: idle nodes are ended.
    deadline = time.monotonic() + SCALE_DOWN_LIMIT_S
    while _worker_nodes(head) and time.monotonic() < deadline:
        time.sleep(1)
    assert _worker_nodes(head) == 0


def _raylet_of(pid: int, head) -> int:
    """The worker node raylet that started process `pid` (its nearest raylet ancestor)."""
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rpartition(")")[2].split()[1])
        if "raylet" in Path(f"/proc/{parent}/cmdline").read_text() and parent in {
                *descendants(head.process.pid)}:
            return parent
        pid = parent
    raise AssertionError("the trial does not run under a raylet of this cluster")


def test_a_reclaimed_node_is_replaced_and_the_trial_resumes(head, teacher_file, tmp_path,
                                                            monkeypatch):
    from lrwa.tune.recorder import StudyRecorder
    from lrwa.tune.runner import run_study
    from lrwa.tune.study import load_study_file

    epochs = 4
    study = load_study_file(write_study_file(
        tmp_path, teacher_file, base={"epochs": epochs, "iters_per_epoch": 6},
        budget={"trials": 2, "max_concurrent": 2}))
    reclaimed = []

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        result = trial.last_result or {}
        if not reclaimed and result.get("epoch") == 1:
            reclaimed.append((trial.trial_id, result["pid"]))
            reclaim(_raylet_of(result["pid"], head))

    monkeypatch.setattr(StudyRecorder, "on_checkpoint", on_checkpoint, raising=False)
    for key, value in head.ray_env().items():
        if key.startswith("RAY_"):
            monkeypatch.setenv(key, value)
    lines: list[str] = []
    outcome = run_study(study, tmp_path / "studies", out=lines.append)

    assert len(reclaimed) == 1, "the trial never reached its first checkpoint"
    (trial_id, lost_pid), = reclaimed
    assert outcome.complete and outcome.statuses["completed"] == 2
    location = tmp_path / "studies" / "tiny"
    results = [json.loads(line) for line in
               (location / "ray" / trial_id / "result.json").read_text().splitlines()]
    # Ray went on in a new process (on the replacement node) from a checkpoint: the
    # epochs after the reclaim come from another pid, and no epoch repeats in the curves.
    assert any(result["pid"] != lost_pid for result in results)
    from lrwa.tune import load_study

    trials, curves = load_study(str(location))
    journal = {trial.user_attrs["trial_id"]: trial for trial in read_journal(location).trials}
    for each in trials["trial_id"]:
        assert curves[curves["trial_id"] == each]["epoch"].tolist() == list(
            range(1, epochs + 1))
        assert journal[each].state.name == "COMPLETE"
        # A trial keeps its label ("trial 1/2 <id>") across its restart on another node.
        labels = {line.split(each)[0] for line in lines if f" {each}  " in line}
        assert len(labels) == 1, (each, labels)


def test_a_data_parallel_run_scales_up_from_zero_and_survives_a_reclaim(head, teacher_file,
                                                                          tmp_path):
    """`lrwa distill --workers 2` fits its workers to the maximum (2 nodes of 1 CPU: 1 CPU
    each), Ray Train's placement group makes the autoscaler start both nodes, and when one
    is reclaimed mid-run the autoscaler replaces it and Ray Train goes on from the last
    checkpoint, every epoch once."""
    deadline = time.monotonic() + SCALE_DOWN_LIMIT_S
    while _worker_nodes(head) and time.monotonic() < deadline:
        time.sleep(1)
    assert _worker_nodes(head) == 0
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "lrwa", "distill", "--teacher", str(teacher_file), "--workers",
         "2", "--epochs", "4", "--iters-per-epoch", "4", "--batch-size", "32", "--student",
         "lenet5-half", "--out", str(out)],
        env=head.ray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reclaimed = False
    try:
        for line in process.stdout:
            if line.startswith("epoch") and not reclaimed:
                raylet = busy_worker_node(head)
                if raylet is not None:
                    reclaim(raylet)
                    reclaimed = True
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, process.stderr.read()[-3000:]
    assert reclaimed
    import pandas as pd

    assert pd.read_parquet(out / "metrics.parquet")["epoch"].tolist() == [1, 2, 3, 4]
