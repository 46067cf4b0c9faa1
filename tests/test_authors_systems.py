"""Each named system trained as its authors' code trains it, counted on the running engine:
the VAE's steps and sample shares per iteration, MB-DFKD's bank after k epochs and its
one-time-point replays, DFAD's step order, and every preset for one epoch."""

from __future__ import annotations

import math

import pytest
import torch

from lrwa.config import build_config
from lrwa.distiller import Distiller
from lrwa.presets import SYSTEM_PRESETS

# CPU-tiny sizes on top of any system: the method is the preset's, the sizes these.
TINY = {"epochs": 1, "iters_per_epoch": 3, "student_steps": 5, "batch_size": 32,
        "generator_width": 8, "latent_dim": 16, "vae_latent_dim": 16, "grad_cos_every": 0}


@pytest.fixture(scope="module")
def split(mnist_test_split):
    images, labels = mnist_test_split
    return images[:200], labels[:200]


def distiller(mnist_teacher, split, **values) -> Distiller:
    config = build_config("mnist5k", {**TINY, **values})
    return Distiller(config, mnist_teacher.model, mnist_teacher.spec, *split, device=torch.device("cpu"))


def test_the_vae_trains_at_the_first_four_steps_on_half_a_batch_plus_an_eighth(mnist_teacher, split):
    engine = distiller(mnist_teacher, split, preset="pre-dfkd")
    sizes: list[int] = []
    engine.replay.vae.encoder.register_forward_hook(
        lambda module, inputs, output: sizes.append(len(inputs[0])))
    row = engine.train_epoch()
    # 3 iterations x the first 4 of 5 student steps; the first iteration reconstructs the
    # fresh half alone (16 of 32), every later step 16 fresh + 32 / 8 = 4 replayed.
    assert engine.replay.steps == 12
    assert sizes == [16] * 4 + [16 + 4] * 8
    # The student replays from its first step, decoded from tuned latents.
    assert math.isfinite(row["loss_ret"]) and row["buffer_fill"] == 1.0


def test_mb_dfkd_stores_one_slot_every_five_epochs_and_replays_one_slot_whole(mnist_teacher, split):
    engine = distiller(mnist_teacher, split, preset="mb-dfkd", iters_per_epoch=1, student_steps=2)
    last_fresh: list[torch.Tensor] = []
    original = engine._fresh_images

    def recording() -> torch.Tensor:
        images = original()
        last_fresh.append(images)
        return images

    engine._fresh_images = recording
    replayed: list[torch.Tensor] = []
    original_sample = engine.replay.sample
    engine.replay.sample = lambda count: replayed.append(original_sample(count)) or replayed[-1]
    rows = [engine.train_epoch() for _ in range(7)]
    slot = 32 // 8
    # After epochs 1 and 6 (LRA's epoch % 5 == 0, counted from 0): the first batch / 8
    # samples of each epoch's last fresh batch, one slot each, oldest first.
    per_epoch_last = [last_fresh[2 * epoch + 1] for epoch in range(7)]
    want = torch.cat([per_epoch_last[0][:slot], per_epoch_last[5][:slot]]).half()
    assert torch.equal(engine.replay.contents(), want)
    # No replay before the first insertion; afterwards every replayed batch is one stored
    # slot, whole and in order.
    assert math.isnan(rows[0]["loss_ret"]) and all(math.isfinite(r["loss_ret"]) for r in rows[1:])
    stored = [per_epoch_last[0][:slot].half().float(), per_epoch_last[5][:slot].half().float()]
    for batch in replayed:
        assert any(torch.equal(batch, one) for one in stored)
    assert len(replayed) == 6 * 2  # epochs 2-7, two student steps each


def order_of_steps(engine: Distiller) -> str:
    """One epoch of `engine`, as the sequence of its generator (G) and student (S) steps."""
    calls: list[str] = []
    generator_step, student_step = engine.generator_step, engine.student_step
    engine.generator_step = lambda: calls.append("G") or generator_step()
    engine.student_step = lambda probe: calls.append("S") or student_step(probe)
    engine.train_epoch()
    return "".join(calls)


def test_dfad_takes_its_student_steps_before_the_generator_step(mnist_teacher, split):
    sizes = {"iters_per_epoch": 2, "student_steps": 3}
    assert order_of_steps(distiller(mnist_teacher, split, preset="dfad", **sizes)) == "SSSGSSSG"
    assert order_of_steps(distiller(mnist_teacher, split, preset="lrwa-memory",
                                    **sizes)) == "GSSSGSSS"


@pytest.mark.parametrize("name", list(SYSTEM_PRESETS))
def test_every_preset_runs_an_epoch(mnist_teacher, split, name):
    engine = distiller(mnist_teacher, split, preset=name, insert_every_epochs=1)
    rows = list(engine.epochs())
    assert [row["epoch"] for row in rows] == [1]
    assert math.isfinite(rows[0]["loss_acq"]) and math.isfinite(rows[0]["loss_gen"])
    assert 0.0 <= rows[0]["test_acc"] <= 1.0
    assert engine.config.preset == name


def test_the_generators_are_the_authors_layer_for_layer() -> None:
    from torch import nn

    from lrwa.generator import Generator

    lra = Generator(1000, 3, 32, style="pre-dfkd")
    dfad = Generator(256, 3, 32, style="dfad")
    # LRA: BatchNorm2d(128), (128, 0.8), (64, 0.8), (3, affine=False); DFAD: default eps.
    assert [m.eps for m in lra.modules() if isinstance(m, nn.BatchNorm2d)] == [
        1e-5, 0.8, 0.8, 1e-5]
    assert [m.eps for m in dfad.modules() if isinstance(m, nn.BatchNorm2d)] == [1e-5] * 4
    assert sum("parametrizations" in name for name, _ in lra.named_parameters()) == 3
    assert not any("parametrizations" in name for name, _ in dfad.named_parameters())
    # LRA's uniform(-0.08, 0.08) init with zero biases, against PyTorch's default for DFAD:
    # the linear layer's default bound is 1/sqrt(1000) ~ 0.032 < 0.08.
    lra_linear, dfad_linear = lra.project, Generator(1000, 3, 32, style="dfad").project
    assert 0.07 < lra_linear.weight.abs().max() <= 0.08 and not lra_linear.bias.any()
    assert dfad_linear.weight.abs().max() < 0.04 and dfad_linear.bias.any()
