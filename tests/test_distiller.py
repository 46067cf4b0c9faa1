"""The engine end to end on the CPU: smoke runs, determinism, alpha = 0, resume, NaN guard."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from lrwa.config import build_config
from lrwa.distiller import Distiller, NonFiniteLoss
from lrwa.run import CHECKPOINT_FILE, load_checkpoint, run_distillation
from lrwa.sinks import read_metrics
from lrwa.teacher import train_teacher

TINY = {"epochs": 3, "iters_per_epoch": 3, "student_steps": 2, "batch_size": 64,
        "generator_width": 16, "latent_dim": 32, "buffer_size": 256, "replay_ratio": 0.25,
        "insert_every": 1, "vae_latent_dim": 16, "grad_cos_every": 2}
TIMING_COLUMNS = ["samples_per_s", "train_s", "wall_s"]


def _distiller(teacher, split, **overrides) -> Distiller:
    config = build_config("mnist5k", overrides={**TINY, **overrides})
    images, labels = split
    return Distiller(config, teacher.model, teacher.spec, images, labels,
                     device=torch.device("cpu"))


def _curve(distiller: Distiller) -> pd.DataFrame:
    return pd.DataFrame(list(distiller.epochs())).drop(columns=TIMING_COLUMNS)


@pytest.mark.parametrize(("mode", "replay", "replay_loss"), [
    ("acquire", "none", "separate"),  # acquire with a replay is refused by the config
    ("joint", "memory", "separate"), ("joint", "generative", "separate"),
    ("meta", "memory", "separate"), ("meta", "generative", "separate"),
    ("joint", "memory", "concatenated"), ("meta", "generative", "concatenated")])
def test_smoke_every_mode_and_replay(mnist_teacher, mnist_test_split, mode, replay,
                                     replay_loss):
    distiller = _distiller(mnist_teacher, mnist_test_split, mode=mode, replay=replay,
                           replay_loss=replay_loss)
    rows = list(distiller.epochs())
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert 0.0 <= row["test_acc"] <= 1.0
        assert math.isfinite(row["loss_acq"]) and math.isfinite(row["loss_gen"])
        assert row["samples_per_s"] > 0
    if mode == "acquire" and replay == "none":
        assert math.isnan(rows[-1]["loss_ret"]) and rows[-1]["buffer_fill"] == 0.0
    else:
        assert 0.0 < rows[-1]["buffer_fill"] <= 1.0
        assert -1.0 <= rows[-1]["grad_cos"] <= 1.0
    if mode != "acquire":
        assert math.isfinite(rows[-1]["loss_ret"])


def test_first_order_meta_smoke(mnist_teacher, mnist_test_split):
    rows = list(_distiller(mnist_teacher, mnist_test_split, first_order=True, epochs=1).epochs())
    assert math.isfinite(rows[0]["loss_ret"])


@pytest.mark.slow  # a whole run or more
def test_student_learns_from_the_teacher(mnist_teacher, mnist_test_split):
    """A short run beats chance by a wide margin: the pipeline transfers knowledge. One epoch
    is enough (measured: 0.58-0.69 test accuracy across seeds 0-3; chance is 0.1)."""
    distiller = _distiller(mnist_teacher, mnist_test_split, epochs=1, iters_per_epoch=10,
                           student_steps=5, batch_size=128, generator_width=32)
    rows = list(distiller.epochs())
    assert max(row["test_acc"] for row in rows) > 0.2  # chance is 0.1


# What a run's seed drives (initial weights, latent codes, replay draws) against what only
# the schedule sets: epoch, the bank's fill and the learning rate.
SEEDED_COLUMNS = {"loss_gen", "loss_acq", "loss_ret", "grad_cos", "test_acc"}


def test_one_seed_gives_identical_runs_and_another_seed_another_run(mnist_teacher,
                                                                      mnist_test_split):
    first = _curve(_distiller(mnist_teacher, mnist_test_split))
    second = _curve(_distiller(mnist_teacher, mnist_test_split))
    pd.testing.assert_frame_equal(first, second, check_exact=True)
    other_seed = _curve(_distiller(mnist_teacher, mnist_test_split, seed=1))
    differing = {column for column in first if not first[column].equals(other_seed[column])}
    assert differing == SEEDED_COLUMNS
    for column in ("loss_gen", "loss_acq", "loss_ret"):  # in every epoch, from the first
        assert (first[column] != other_seed[column]).all(), column


# wrn-16-2 is a BatchNorm student; at 28x28 it is costly, so its runs are shorter and
# evaluate on 200 test images.
RUNS = {
    "lenet5-half-memory": {"student": "lenet5-half", "replay": "memory"},
    "lenet5-half-generative": {"student": "lenet5-half", "replay": "generative"},
    "wrn-16-2-memory": {"student": "wrn-16-2", "replay": "memory", "epochs": 2,
                        "iters_per_epoch": 2, "batch_size": 32}}


def _pair(teacher, split, run, first, second):
    """Two runs of `run` that differ only in the settings `first` and `second`."""
    split = [tensor[:200] for tensor in split]
    return (_distiller(teacher, split, **RUNS[run], **first),
            _distiller(teacher, split, **RUNS[run], **second))


@pytest.mark.slow  # a whole run or more
@pytest.mark.parametrize("run", RUNS)
def test_meta_at_alpha_zero_is_the_joint_run(mnist_teacher, mnist_test_split, run):
    joint, meta = _pair(mnist_teacher, mnist_test_split, run, {"mode": "joint"},
                        {"mode": "meta", "alpha": 0.0, "inner_weight_decay": 5e-4})
    pd.testing.assert_frame_equal(_curve(joint), _curve(meta), check_exact=True)
    for a, b in zip(joint.student.state_dict().values(), meta.student.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("run", RUNS)
def test_released_update_is_the_concatenated_joint_run(mnist_teacher, mnist_test_split, run):
    """LRA's released update (theta' from detached weights) is MB-DFKD's / PRE-DFKD's run."""
    joint, released = _pair(
        mnist_teacher, mnist_test_split, run, {"mode": "joint", "replay_loss": "concatenated"},
        {"mode": "meta", "replay_loss": "concatenated", "alpha": 0.9,
         "inner_weight_decay": 5e-4, "detach_inner": True})
    joint_curve, released_curve = _curve(joint), _curve(released)
    # loss_ret is reported where it was taken: at theta in joint, at theta' in meta, so it
    # is the one column that differs, and in every epoch.
    assert (joint_curve["loss_ret"] != released_curve["loss_ret"]).all()
    pd.testing.assert_frame_equal(joint_curve.drop(columns="loss_ret"),
                                  released_curve.drop(columns="loss_ret"), check_exact=True)
    for a, b in zip(joint.student.state_dict().values(),
                    released.student.state_dict().values()):
        assert torch.equal(a, b)


def test_meta_at_positive_alpha_trains_another_student_than_joint(mnist_teacher,
                                                                  mnist_test_split):
    """Not only is loss_ret reported at theta' (that alone changes the column): the update
    itself differs, so the student's weights and its loss_acq move elsewhere."""
    joint = _distiller(mnist_teacher, mnist_test_split, mode="joint", epochs=1)
    meta = _distiller(mnist_teacher, mnist_test_split, mode="meta", alpha=0.9, epochs=1)
    joint_curve, meta_curve = _curve(joint), _curve(meta)
    pd.testing.assert_frame_equal(joint_curve[["epoch", "buffer_fill", "lr"]],
                                  meta_curve[["epoch", "buffer_fill", "lr"]])
    assert (joint_curve["loss_acq"] != meta_curve["loss_acq"]).all()
    # One epoch of 3 x 2 student steps apart: 2.8% of the weights' norm, measured.
    apart = torch.cat([(a - b).flatten() for a, b in zip(joint.student.parameters(),
                                                         meta.student.parameters())])
    weights = torch.cat([a.flatten() for a in joint.student.parameters()])
    assert apart.norm() > 0.01 * weights.norm()


class _StopAfter:
    """Simulates a kill after `epochs` completed epochs (their files are already written)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def __call__(self, row: dict) -> None:
        if row["epoch"] == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.slow  # a whole run or more
@pytest.mark.parametrize("replay", ["memory", "generative", "preset:mb-dfkd"])
def test_kill_and_resume_equals_uninterrupted(mnist_teacher, tmp_path, replay):
    # The generative run restores encoder, memory generator, their Adam and the latent RNG;
    # MB-DFKD's preset (slots every epoch here) the slots and the slot-choosing RNG.
    system = ({"preset": replay.split(":")[1], "insert_every_epochs": 1}
              if replay.startswith("preset:") else {"replay": replay})
    config = build_config("mnist5k", overrides={**TINY, "epochs": 4, **system})
    run_distillation(config, tmp_path / "whole", teacher=mnist_teacher, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_distillation(config, tmp_path / "killed", teacher=mnist_teacher,
                         on_epoch=_StopAfter(2), progress=False)
    assert len(read_metrics(tmp_path / "killed")) == 2
    run_distillation(None, tmp_path / "killed", resume=True, teacher=mnist_teacher,
                     progress=False)
    whole = read_metrics(tmp_path / "whole").drop(columns=TIMING_COLUMNS)
    resumed = read_metrics(tmp_path / "killed").drop(columns=TIMING_COLUMNS)
    assert resumed["epoch"].tolist() == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(whole, resumed, check_exact=True)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(mnist_teacher, tmp_path,
                                                              monkeypatch):
    config = build_config("mnist5k", overrides={**TINY, "epochs": 3})
    original = Distiller.student_step

    def poisoned(self, probe_cosine):
        if self.epoch == 1 and self.step == self.config.student_steps * 4:
            with torch.no_grad():
                next(self.student.parameters()).fill_(math.nan)
        return original(self, probe_cosine)

    monkeypatch.setattr(Distiller, "student_step", poisoned)
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, iteration \d+ \(student step \d+\)"):
        run_distillation(config, tmp_path / "run", teacher=mnist_teacher, progress=False)
    assert load_checkpoint(tmp_path / "run")["distiller"]["epoch"] == 1
    assert (tmp_path / "run" / CHECKPOINT_FILE).is_file()
    assert len(read_metrics(tmp_path / "run")) == 1


def test_non_finite_loss_names_where_and_nothing_more(mnist_teacher, mnist_test_split):
    """The engine cannot know what was saved; the run layer adds that context."""
    distiller = _distiller(mnist_teacher, mnist_test_split)
    distiller.step, distiller.iteration, distiller.epoch = 6, 3, 1
    with torch.no_grad():
        next(distiller.student.parameters()).fill_(math.inf)
    with pytest.raises(NonFiniteLoss) as caught:
        distiller.student_step(probe_cosine=False)
    assert str(caught.value) == "non-finite loss_acq at epoch 2, iteration 4 (student step 7)"


def test_channels_last_changes_the_layout_not_the_numbers(mnist_teacher, mnist_test_split):
    """The GPU speed option: same run up to float rounding (other kernels, same arithmetic)."""
    teacher = train_teacher("mnist5k", "lenet5", epochs=1, progress=False)  # converted in place
    # The authors' spectral-normed generator with eps-0.8 BatchNorms amplifies float rounding
    # over an adversarial epoch (1-2% apart here, 0.1% with eps 1e-5), so the whole run is
    # compared on DFAD's generator, and the authors' one forward at a time.
    authors_plain = _distiller(mnist_teacher, mnist_test_split, epochs=1)
    authors_nhwc = _distiller(teacher, mnist_test_split, epochs=1, channels_last=True)
    latent = torch.randn(64, authors_plain.config.latent_dim)
    assert torch.allclose(authors_plain.generator(latent), authors_nhwc.generator(latent),
                          atol=1e-5)
    plain = _distiller(mnist_teacher, mnist_test_split, epochs=1, generator_arch="dfad")
    nhwc = _distiller(teacher, mnist_test_split, epochs=1, channels_last=True,
                      generator_arch="dfad")
    weight = next(p for p in nhwc.student.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert nhwc._fresh_images().is_contiguous(memory_format=torch.channels_last)
    nhwc.noise.manual_seed(plain.config.seed)  # the probe above drew from the noise stream
    first, second = _curve(plain), _curve(nhwc)
    for column in ("loss_acq", "loss_ret", "loss_gen"):
        assert second[column].to_numpy() == pytest.approx(first[column].to_numpy(), rel=1e-3)
    for a, b in zip(plain.student.parameters(), nhwc.student.parameters()):
        assert torch.allclose(a, b, rtol=1e-2, atol=1e-3)  # a 1-epoch adversarial run
