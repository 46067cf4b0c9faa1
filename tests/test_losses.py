"""Golden values for the student and generator losses."""

from __future__ import annotations

import math

import pytest
import torch

from lrwa.errors import LrwaError
from lrwa.losses import (
    GeneratorLossWeights,
    dfad_generator_loss,
    generator_loss,
    js_divergence,
    kl_logits,
    l1_logits,
    pre_dfkd_generator_loss,
    student_loss,
)


def test_l1_on_logits_is_the_mean_absolute_difference():
    student = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    teacher = torch.tensor([[0.0, 0.0], [0.5, 2.0]])
    assert l1_logits(student, teacher).item() == pytest.approx((1 + 2 + 0 + 2) / 4)


def test_kl_is_zero_for_equal_logits_and_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    assert kl_logits(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    p = torch.softmax(torch.tensor([0.0, 0.0]), 0)       # student at T=1
    q = torch.softmax(torch.tensor([math.log(3.0), 0.0]), 0)  # teacher: (0.75, 0.25)
    expected = float((q * (q.log() - p.log())).sum())
    got = kl_logits(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]]), 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_js_divergence_bounds():
    logits = torch.randn(4, 10)
    assert js_divergence(logits, logits, 3.0).item() == pytest.approx(0.0, abs=1e-6)
    # Nearly one-hot on different classes: JS approaches its maximum, ln 2.
    first = torch.tensor([[100.0, 0.0]])
    second = torch.tensor([[0.0, 100.0]])
    assert js_divergence(first, second, 1.0).item() == pytest.approx(math.log(2), rel=1e-4)


def test_pre_dfkd_terms_have_their_known_values():
    # Teacher predicts class 0 and 1 with certainty on a two-sample batch; the student agrees.
    teacher = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    features = torch.tensor([[2.0, -2.0], [2.0, 2.0]])
    weights = GeneratorLossWeights(onehot=1.0, entropy=5.0, activation=0.1, adversarial=1.0)
    loss = pre_dfkd_generator_loss(teacher, features, teacher.clone(), weights)
    # onehot ~ 0, negative entropy of (0.5, 0.5) = -ln 2, activation = -2, adversarial = 1
    assert loss.item() == pytest.approx(5 * -math.log(2) + 0.1 * -2.0 + 1.0, abs=1e-4)


def test_dfad_generator_loss_is_negative_l1():
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    got = dfad_generator_loss(teacher, torch.zeros(3, 2), student, GeneratorLossWeights())
    assert got.item() == pytest.approx(-l1_logits(student, teacher).item())


def test_unknown_loss_names_are_refused():
    with pytest.raises(LrwaError, match="unknown generator loss 'gan'"):
        generator_loss("gan")
    with pytest.raises(LrwaError, match="unknown student loss 'mse'"):
        student_loss("mse")
