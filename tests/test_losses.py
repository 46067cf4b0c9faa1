"""Golden values for the student and generator losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrwa.errors import LrwaError
from lrwa.losses import (
    GeneratorLossWeights,
    clamped_disagreement,
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
    # onehot ~ 0; the authors' entropy is in log10: sum p log10 p of (0.5, 0.5) = -log10 2;
    # activation = -2; the clamped disagreement of equal outputs is 0, so adversarial = 1.
    assert loss.item() == pytest.approx(5 * -math.log10(2) + 0.1 * -2.0 + 1.0, abs=1e-4)


def test_jsd_nats_keeps_lrwas_earlier_objective():
    from lrwa.losses import jsd_nats_generator_loss

    teacher = torch.tensor([[50.0, 0.0], [0.0, 50.0]])
    features = torch.tensor([[2.0, -2.0], [2.0, 2.0]])
    weights = GeneratorLossWeights(onehot=1.0, entropy=5.0, activation=0.1, adversarial=1.0)
    loss = jsd_nats_generator_loss(teacher, features, teacher.clone(), weights)
    # The earlier golden value: natural-log entropy -ln 2, JS divergence 0.
    assert loss.item() == pytest.approx(5 * -math.log(2) + 0.1 * -2.0 + 1.0, abs=1e-4)
    assert generator_loss("jsd-nats") is jsd_nats_generator_loss


def _authors_generator_loss(teacher: np.ndarray, features: np.ndarray, student: np.ndarray,
                            oh: float, ie: float, a: float) -> float:
    """PRE-DFKD's generator loss as LRA's code computes it, written from scratch in float64:
    CE on the teacher's argmax, sum p log10 p of the batch-mean softmax, -mean |features|,
    and 1 - clamp(J, 0, 1) with J from P, Q, M clamped to [0.01, 0.99] and KLDivLoss's
    default mean over batch x classes."""
    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    log_softmax = np.log(softmax(teacher))
    onehot = -log_softmax[np.arange(len(teacher)), teacher.argmax(axis=1)].mean()
    mean_p = softmax(teacher).mean(axis=0)
    entropy = float((mean_p * np.log10(mean_p)).sum())
    activation = -np.abs(features).mean()
    p, q = softmax(student / 3.0), softmax(teacher / 3.0)
    m = np.clip(0.5 * (p + q), 0.01, 0.99)
    p, q = np.clip(p, 0.01, 0.99), np.clip(q, 0.01, 0.99)
    kl_div = lambda log_input, target: (target * (np.log(target) - log_input)).mean()
    j = 0.5 * kl_div(np.log(p), m) + 0.5 * kl_div(np.log(q), m)
    return oh * onehot + ie * entropy + a * activation + 1.0 - float(np.clip(j, 0.0, 1.0))


@pytest.mark.parametrize("classes", [2, 10, 100])
def test_pre_dfkd_generator_loss_is_the_authors_on_fixed_tensors(classes: int) -> None:
    generator = torch.Generator().manual_seed(classes)
    teacher = 4 * torch.randn(16, classes, generator=generator, dtype=torch.float64)
    student = 4 * torch.randn(16, classes, generator=generator, dtype=torch.float64)
    features = torch.randn(16, 32, generator=generator, dtype=torch.float64)
    weights = GeneratorLossWeights(onehot=1.0, entropy=5.0, activation=0.1, adversarial=1.0)
    got = pre_dfkd_generator_loss(teacher, features, student, weights).item()
    want = _authors_generator_loss(teacher.numpy(), features.numpy(), student.numpy(),
                                   1.0, 5.0, 0.1)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_the_authors_disagreement_shrinks_with_the_class_count() -> None:
    # Opposite one-hot outputs: the JS divergence in nats is ln 2 whatever the class count;
    # the authors' mean over batch x classes divides the clamped term by C.
    def disagreement(classes: int) -> float:
        student = torch.full((1, classes), -50.0)
        teacher = torch.full((1, classes), -50.0)
        student[0, 0] = teacher[0, 1] = 50.0
        return clamped_disagreement(student, teacher, 1.0).item()

    # Classes 2.. are clamped to 0.01 in P, Q and M alike and add 0: J(C) = J(2) x 2 / C.
    assert disagreement(10) == pytest.approx(2 * disagreement(2) / 10, rel=1e-5)
    assert disagreement(100) == pytest.approx(disagreement(10) / 10, rel=1e-5)
    # By hand: mean over 2 classes of M (log M - log P), M = (0.5, 0.5), P = (0.99, 0.01);
    # above ln 2, the bound of the true JS divergence, because of the clamps.
    assert disagreement(2) == pytest.approx(
        (math.log(0.5 / 0.99) + math.log(0.5 / 0.01)) / 4, rel=1e-5)


def test_dfad_generator_loss_is_negative_l1():
    student, teacher = torch.randn(3, 5), torch.randn(3, 5)
    got = dfad_generator_loss(teacher, torch.zeros(3, 2), student, GeneratorLossWeights())
    assert got.item() == pytest.approx(-l1_logits(student, teacher).item())


def test_unknown_loss_names_are_refused():
    with pytest.raises(LrwaError, match="unknown generator loss 'gan'"):
        generator_loss("gan")
    with pytest.raises(LrwaError, match="unknown student loss 'mse'"):
        student_loss("mse")
