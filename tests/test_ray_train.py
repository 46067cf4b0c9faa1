"""Ray Train data parallel on a 2-CPU local cluster: modes, exact parity, faults, resources.

One Ray session for the module. Every run is tiny (digits, 8x8, a few steps): what costs
time is Ray starting two workers (12-20 s a run on two busy cores), so each run
checks as much as it can.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
import yaml

from lrwa.config import build_config
from lrwa.data import load_split
from lrwa.distiller import Distiller
from lrwa.errors import LrwaError
from lrwa.folder_lock import hold_folder
from lrwa.models import build_model
from lrwa.ray_train import per_worker_config, run_distributed
from lrwa.ray_train.driver import FAIL_ONCE_ENV
from lrwa.ray_train.run_folder import RUN_RECORD, run_name
from lrwa.replay import MemoryBank
from lrwa.sinks import read_metrics
from lrwa.teacher import Teacher, freeze, load_teacher

WORKERS = 2
CPUS_PER_WORKER = 0.9  # below 1 so that two workers always fit on two CPUs
TINY = {"epochs": 2, "iters_per_epoch": 2, "student_steps": 2, "batch_size": 32,
        "generator_width": 8, "latent_dim": 16, "buffer_size": 64, "replay_ratio": 0.25,
        "insert_every": 1, "vae_latent_dim": 8}
RUN_FILES = ("config.yaml", "metrics.parquet", "summary.json", "learning_curve.png",
             "student.pt", RUN_RECORD)
# float32, six SGD-with-momentum steps: the two runs differ only in the order in which
# per-sample terms are summed (one batch of 32 vs the mean of two of 16), about 1e-7 per
# step; measured max abs difference about 1e-7. Checked by hand that the tolerance separates
# right from wrong: without averaging grad L_acq before theta' the difference is 2e-2,
# and with a non-differentiable average in the second-order step it is 7e-4.
PARITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _ray(ray_session):
    """Every test here talks to Ray."""


@pytest.fixture(scope="module")
def teacher():
    # An untrained, BatchNorm-free LeNet-5: what is tested here does not need a good
    # teacher, and training one would cost seconds of the module's budget.
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 8, 10)
    return Teacher(freeze(model), {"arch": "lenet5", "dataset": "digits", "test_acc": None})


def _config(**overrides):
    return build_config("digits", overrides={**TINY, **overrides})


def _run(config, out_dir, teacher, **options):
    return run_distributed(config, out_dir, workers=WORKERS, teacher=teacher,
                           cpus_per_worker=CPUS_PER_WORKER, **options)


def _assert_complete_run(out_dir, epochs):
    for name in RUN_FILES:
        assert (out_dir / name).is_file(), name
    metrics = read_metrics(out_dir)
    assert metrics["epoch"].tolist() == list(range(1, epochs + 1))
    assert metrics["loss_acq"].map(math.isfinite).all()
    summary = pd.read_json(out_dir / "summary.json", typ="series")
    assert summary["complete"] and summary["epochs_run"] == epochs
    return metrics


# -- checks that need no workers ----------------------------------------------------------

def test_per_worker_config_splits_batch_and_bank():
    local = per_worker_config(_config(insert_size=8), WORKERS)
    assert (local.batch_size, local.buffer_size, local.insert_size) == (16, 32, 4)
    assert local.replay_batch_size * WORKERS == _config().replay_batch_size


def test_batch_that_does_not_split_is_refused():
    with pytest.raises(LrwaError, match="batch_size 33 .* split evenly over 2 workers"):
        per_worker_config(_config(batch_size=33), WORKERS)


def test_run_names_are_safe_and_two_folders_of_one_name_never_share_one(tmp_path):
    # Runs that share a --storage (one bucket for a team) each get their own Ray folder,
    # even when both run folders are called "run".
    first, second = run_name(tmp_path / "a" / "run"), run_name(tmp_path / "b" / "run")
    assert re.fullmatch(r"lrwa-run-[0-9a-f]{10}", first) and first[:-10] == second[:-10]
    assert first[-10:] != second[-10:]
    # A folder name that is no safe path component is kept readable, bounded and plain.
    odd = run_name(tmp_path / ("my run: ëxp|..|" * 8))
    assert re.fullmatch(r"lrwa-(.{40})-[0-9a-f]{10}", odd)[1] == ("my-run-xp-..-" * 8)[:40]
    assert re.fullmatch(r"lrwa-run-[0-9a-f]{10}", run_name(Path("/")))  # no name at all


def test_a_held_run_folder_is_refused_before_any_worker_starts(tmp_path, teacher):
    refused = pytest.raises(LrwaError, match=r"run is in use by lrwa distill \(host .+, pid ")
    with hold_folder(tmp_path / "run", "lrwa distill"), refused:
        _run(_config(), tmp_path / "run", teacher)


def test_a_per_worker_batch_too_small_for_batchnorm_is_refused(tmp_path, teacher):
    # 2 samples over 2 workers: each worker's resnet18 sees one value per channel at its
    # last BatchNorm (8x8 digits are 1x1 there).
    config = _config(student="resnet18", batch_size=2, replay_ratio=1.0, buffer_size=8)
    with pytest.raises(LrwaError, match=r"batch_size 1 per worker \(2 workers\) is too small "
                                        r"for resnet18 on digits"):
        _run(config, tmp_path / "run", teacher)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_sync_batchnorm_on_cpu_is_refused(tmp_path, teacher):
    with pytest.raises(LrwaError, match="sync-batchnorm needs one whole GPU"):
        _run(_config(), tmp_path / "run", teacher, sync_batchnorm=True)


# -- resources ----------------------------------------------------------------------------

@pytest.mark.parametrize(("workers", "gpus", "message"), [
    (8, 0, "--workers 8 needs 1 CPU per worker but the Ray cluster has 2 CPUs"),
    (2, 1, "--gpus-per-worker 1 asks for GPUs but the Ray cluster has 2 CPUs and 0 GPUs")])
def test_more_than_the_cluster_has_fails_fast(tmp_path, teacher, workers, gpus, message):
    started = time.perf_counter()
    with pytest.raises(LrwaError, match=message):
        run_distributed(_config(), tmp_path / "run", workers=workers, gpus_per_worker=gpus,
                        teacher=teacher)
    assert time.perf_counter() - started < 20


# -- runs ---------------------------------------------------------------------------------

# Replay-using modes run on two workers: joint here (with per-worker generative replay;
# probed for grad_cos), meta second and first order in the parity test, joint with a
# memory bank in the fault test. Every run costs about 12 s of Ray start-up on two cores.

def test_joint_with_generative_replay_on_two_workers(tmp_path, teacher, monkeypatch):
    # Credentials in the driver's environment must not travel in a runtime_env, which Ray
    # writes to its logs in clear text: workers get them from the provider's chain.
    canary = "lrwa-canary-secret-4f1c"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    monkeypatch.setenv("AWS_SESSION_TOKEN", canary)
    rows = []

    def on_epoch(row):
        rows.append((row["epoch"], (tmp_path / "student.pt").is_file()))

    summary = _run(_config(mode="joint", replay="generative", grad_cos_every=1), tmp_path,
                   teacher, on_epoch=on_epoch)
    metrics = _assert_complete_run(tmp_path, epochs=2)
    # Streamed live to the driver; the last epoch's after the final files are written.
    assert rows == [(1, False), (2, True)]
    # config.yaml names what ran: the teacher's data set and architecture, the threads each
    # worker used and the device, so the run reruns as it ran.
    ran = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (ran["dataset"], ran["teacher_arch"]) == (teacher.metadata["dataset"],
                                                     teacher.metadata["arch"])
    assert (ran["torch_threads"], ran["device"]) == (max(1, int(CPUS_PER_WORKER)), "cpu")
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    leaked = [path.name for path in logs.rglob("*") if path.is_file()
              and canary.encode() in path.read_bytes()]
    assert leaked == []
    assert summary["final_acc"] == pytest.approx(metrics["test_acc"].iloc[-1])
    assert load_teacher(tmp_path / "student.pt").metadata["arch"] == "lenet5-half"
    assert -1.0 <= metrics["grad_cos"].iloc[-1] <= 1.0


class _PerWorkerBanks:
    """The reference's replay: the workers' banks side by side, as the workers hold them.

    `add` gives bank k the k-th slice of the concatenated batch (worker k's samples);
    `sample` concatenates each bank's share, in rank order.
    """

    def __init__(self, config, image_shape):
        self.banks = [MemoryBank(config.buffer_size // WORKERS, image_shape, config.insertion,
                                 seed=config.seed + rank) for rank in range(WORKERS)]
        self.device = self.banks[0].device

    def add(self, images):
        for bank, part in zip(self.banks, images.chunk(WORKERS)):
            bank.add(part)

    def sample(self, count):
        return torch.cat([bank.sample(count // WORKERS) for bank in self.banks])

    def can_sample(self, count):
        return all(bank.can_sample(count // WORKERS) for bank in self.banks)

    def fill(self):
        return self.banks[0].fill()


def _single_process_reference(config, teacher):
    """The global batch on one process, drawn exactly as the two workers draw it."""
    images, labels = load_split("digits", "test").tensors()
    distiller = Distiller(config, teacher.model, teacher.spec, images, labels,
                          device=torch.device("cpu"))
    generator = distiller.generator
    streams = [torch.Generator().manual_seed(config.seed + rank) for rank in range(WORKERS)]
    local_batch = config.batch_size // WORKERS

    def fresh_images():
        # Each worker runs the generator once per step on its own half: BatchNorm sees that
        # half alone, and spectral norm's power iteration advances once, so restore the
        # buffers before the second half.
        before = {name: buffer.clone() for name, buffer in generator.named_buffers()}
        halves = []
        with torch.no_grad():
            for stream in streams:
                for name, buffer in generator.named_buffers():
                    buffer.copy_(before[name])
                halves.append(generator(generator.sample_latent(local_batch, stream,
                                                                distiller.device)))
        return torch.cat(halves)

    distiller._fresh_images = fresh_images
    distiller.replay = _PerWorkerBanks(config, (1, 8, 8))
    for _ in distiller.epochs():
        pass
    return distiller


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_two_workers_equal_one_process_on_a_batchnorm_free_student(tmp_path, teacher,
                                                                     first_order):
    # No generator steps (the generator loss has batch-level terms that do not split);
    # each worker inserts its whole batch, so the memory banks are the workers' own.
    config = _config(mode="meta", replay="memory", first_order=first_order, epochs=1,
                     iters_per_epoch=3, generator_steps=0, insert_size=32, grad_cos_every=0)
    assert config.student == "lenet5-half"
    _run(config, tmp_path, teacher)
    _assert_complete_run(tmp_path, epochs=1)
    distributed = load_teacher(tmp_path / "student.pt").model.state_dict()
    reference = _single_process_reference(config, teacher).student.state_dict()
    initial = Distiller(config, teacher.model, teacher.spec, torch.zeros(0, 1, 8, 8),
                        torch.zeros(0, dtype=torch.int64)).student.state_dict()
    moved = max((reference[name] - initial[name]).abs().max().item() for name in reference)
    assert moved > 1e-3  # the students did train: the comparison is not trivially equal
    for name, value in reference.items():
        difference = (distributed[name] - value).abs().max().item()
        assert difference < PARITY_TOLERANCE, (name, difference)


def test_killed_worker_restarts_and_each_epoch_is_kept_once(tmp_path, teacher, monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(FAIL_ONCE_ENV, f"2:{marker}")
    out_dir = tmp_path / "run"
    rows = []
    _run(_config(mode="joint", replay="memory", epochs=3), out_dir, teacher,
         on_epoch=rows.append)
    assert marker.is_file()  # rank 1 did die, early in epoch 2
    metrics = _assert_complete_run(out_dir, epochs=3)
    assert metrics["loss_ret"].map(math.isfinite).all()
    # Restarted from epoch 1's checkpoint: epoch 1 was not run (or streamed) twice.
    assert [row["epoch"] for row in rows] == [1, 2, 3]

    # Resume the finished run for one more epoch: the history comes from the checkpoint.
    monkeypatch.delenv(FAIL_ONCE_ENV)
    _run(None, out_dir, teacher, resume=True, overrides={"epochs": 4})
    _assert_complete_run(out_dir, epochs=4)
    with pytest.raises(LrwaError, match="was run with --workers 2"):
        run_distributed(None, out_dir, workers=1, resume=True, teacher=teacher)
