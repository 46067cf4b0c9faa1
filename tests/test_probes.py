"""Retention measured directly: frozen probe sets and the statistics after a warm-up."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from lrwa.config import build_config
from lrwa.distiller import Distiller
from lrwa.errors import LrwaError
from lrwa.probes import agreement, parse_probe_epochs
from lrwa.run import run_distillation
from lrwa.sinks import read_metrics
from lrwa.summary import curve_statistics

TINY = {"epochs": 4, "iters_per_epoch": 2, "student_steps": 2, "batch_size": 32,
        "generator_width": 8, "latent_dim": 16, "vae_latent_dim": 16, "grad_cos_every": 0,
        "buffer_size": 128, "replay_ratio": 0.25, "insert_every": 1}
PROBES = {"probe_size": 64, "probe_epochs": "1,3"}
TIMING = ["samples_per_s", "train_s", "wall_s"]


@pytest.fixture(scope="module")
def split(mnist_test_split):
    images, labels = mnist_test_split
    return images[:200], labels[:200]


def test_agreement_is_the_fraction_of_matching_argmaxes() -> None:
    # A linear "student" that returns its input: argmax of each row is known.
    student = nn.Identity()
    logits = torch.tensor([[3.0, 1.0], [0.0, 2.0], [5.0, 4.0], [1.0, 9.0]])
    assert agreement(student, logits, torch.tensor([0, 1, 1, 0])) == 0.5
    assert agreement(student, logits, torch.tensor([0, 1, 0, 1])) == 1.0


def test_probe_epochs_are_checked_in_one_line() -> None:
    assert parse_probe_epochs("1,5,10,20") == (1, 5, 10, 20) and parse_probe_epochs("") == ()
    for bad in ("1,,5", "5,1", "0,3", "a"):
        with pytest.raises(LrwaError, match="probe_epochs"):
            build_config("mnist5k", {"probe_epochs": bad})


def test_probes_measure_without_changing_training(mnist_teacher, split) -> None:
    def run(**values):
        config = build_config("mnist5k", {**TINY, **values})
        engine = Distiller(config, mnist_teacher.model, mnist_teacher.spec, *split,
                           device=torch.device("cpu"))
        return engine, pd.DataFrame(list(engine.epochs())).drop(columns=TIMING)

    plain_engine, plain = run()
    probed_engine, probed = run(**PROBES)
    # Training is untouched: every column the plain run has is equal, bit for bit.
    pd.testing.assert_frame_equal(plain, probed[plain.columns], check_exact=True)
    assert torch.equal(next(plain_engine.student.parameters()),
                       next(probed_engine.student.parameters()))
    # One column per probe epoch, NaN before its set exists, fractions after.
    assert probed["probe_agree_e1"].notna().all()
    assert probed["probe_agree_e3"].isna().tolist() == [True, True, False, False]
    assert probed[["probe_agree_e1", "probe_agree_e3"]].stack().dropna().between(0, 1).all()
    # The sets stay frozen: epoch 1's set is the one drawn at epoch 1.
    images, labels = probed_engine.probes.sets[1]
    assert images.shape == (64, 1, 28, 28) and labels.shape == (64,)
    assert probed.loc[3, "probe_agree_e1"] == agreement(probed_engine.student, images, labels)


@pytest.mark.slow  # a whole run or more
def test_probed_run_resumes_exactly(mnist_teacher, tmp_path) -> None:
    config = build_config("mnist5k", {**TINY, **PROBES})
    run_distillation(config, tmp_path / "whole", teacher=mnist_teacher, progress=False)

    def stop_after_two(row: dict) -> None:
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_distillation(config, tmp_path / "cut", teacher=mnist_teacher, progress=False,
                         on_epoch=stop_after_two)
    run_distillation(None, tmp_path / "cut", resume=True, teacher=mnist_teacher, progress=False)
    whole = read_metrics(tmp_path / "whole").drop(columns=TIMING)
    cut = read_metrics(tmp_path / "cut").drop(columns=TIMING)
    pd.testing.assert_frame_equal(whole, cut, check_exact=True)


def test_statistics_after_the_warm_up_leave_out_the_climb() -> None:
    curve = [0.2, 0.5, 0.8, 0.9, 0.85, 0.9]
    stats = curve_statistics(curve, warmup_epochs=3)
    late = [0.9, 0.85, 0.9]
    assert stats["var_acc_after_warmup"] == pytest.approx(
        sum((a - sum(late) / 3) ** 2 for a in late) / 3)
    assert stats["max_drop_after_warmup"] == pytest.approx(0.05)
    assert stats["var_acc"] > 10 * stats["var_acc_after_warmup"]
    assert stats["max_drop"] == pytest.approx(0.05)
    assert curve_statistics(curve, warmup_epochs=0)["var_acc_after_warmup"] == stats["var_acc"]
    assert math.isnan(curve_statistics(curve, warmup_epochs=10)["var_acc_after_warmup"])
