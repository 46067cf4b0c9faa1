"""The evidence study's pairs differ in one setting: each meta variant of
tune_studies/learning_evolution.yaml resolves to its joint baseline's config except for
`mode` and the meta update's own step (alpha, inner_weight_decay), and the running joint
update does not read that step, so the two runs of a pair differ in their update alone."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from tiny_study import write_tiny_teacher

from lrwa.config import build_config
from lrwa.distiller import Distiller
from lrwa.tune.study import load_study_file

# What only the meta update reads: theta' = theta - alpha (grad L_acq + wd theta).
META_STEP = {"alpha", "inner_weight_decay"}
SEED = {"seed": 0}


@pytest.fixture(scope="module")
def evidence_study(tmp_path_factory):
    """The shipped study resolved as it runs: its teacher path (relative to the working
    folder) holds a digits teacher, so the digits preset sits under its base."""
    folder = tmp_path_factory.mktemp("evidence")
    (folder / "runs" / "evidence").mkdir(parents=True)
    write_tiny_teacher(folder / "runs" / "evidence").rename(
        folder / "runs" / "evidence" / "digits_teacher.pt")
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield load_study_file("learning_evolution")
    finally:
        os.chdir(before)


def _differing(study, first: str, second: str) -> set[str]:
    one = dataclasses.asdict(study.trial_config({"variant": first, **SEED}))
    other = dataclasses.asdict(study.trial_config({"variant": second, **SEED}))
    return {key for key in one if one[key] != other[key]}


def test_every_meta_variant_is_one_setting_from_its_joint_baseline(evidence_study):
    variants = evidence_study.variants
    metas = [name for name in variants if ".meta." in name]
    assert len(metas) == 8  # 2 replays x 2 loss forms x (alpha 0.9, tuned)
    for name in metas:
        baseline = name.split(".meta.")[0] + ".joint"
        assert baseline in variants, name
        differing = _differing(evidence_study, baseline, name)
        assert "mode" in differing and differing - META_STEP == {"mode"}, (name, differing)
        config = evidence_study.trial_config({"variant": name, **SEED})
        assert config.mode == "meta" and not config.detach_inner
        assert (config.alpha == 0.9) == name.endswith("alpha-0.9")
    # The pairs cover both replays and both loss forms; every config is the test split's.
    configs = [evidence_study.trial_config({"variant": name, **SEED}) for name in variants]
    assert {(c.replay, c.replay_loss) for c in configs} == {
        (replay, form) for replay in ("memory", "generative")
        for form in ("separate", "concatenated")}
    assert {c.eval_split for c in configs} == {"test"} and {c.epochs for c in configs} == {60}
    # Seeds pair the runs: the same ten for every variant.
    seeds = evidence_study.space["seed"]
    assert tuple(seeds.choices) == tuple(range(10))


def test_two_variants_that_differ_elsewhere_are_caught(evidence_study):
    # Not vacuous: the baselines of the two replays differ in more than mode.
    differing = _differing(evidence_study, "memory.separate.joint",
                           "generative.concatenated.meta.tuned")
    assert {"replay", "replay_loss", "mode"} <= differing


@pytest.mark.parametrize("form", ["separate", "concatenated"])
def test_the_joint_update_does_not_read_the_meta_step(mnist_teacher, mnist_test_split, form):
    """Two joint runs whose alpha and inner weight decay differ train bit for bit alike."""
    images, labels = mnist_test_split
    weights = []
    for step in ({"alpha": 0.9, "inner_weight_decay": 5e-4}, {"alpha": 0.03,
                                                             "inner_weight_decay": 0.0}):
        config = build_config("mnist5k", {
            "preset": "mb-dfkd", "replay_loss": form, "epochs": 1, "iters_per_epoch": 2,
            "student_steps": 3, "batch_size": 32, "generator_width": 8, "latent_dim": 16,
            "grad_cos_every": 0, **step})
        engine = Distiller(config, mnist_teacher.model, mnist_teacher.spec, images[:100],
                           labels[:100], device=torch.device("cpu"))
        engine.train_epoch()
        weights.append(engine.student.state_dict())
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
