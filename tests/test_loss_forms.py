"""Known answers for the two loss forms, the BatchNorm policy and detach_inner.

The BatchNorm students (wrn-16-2, resnet18 at 8x8) are where the forms and the policy
matter: one concatenated batch normalises differently from two separate ones, and a forward
that writes running statistics changes the evaluated network. Every identity claimed in
lrwa/student_update.py is checked bit for bit (torch.equal); closed forms written from
scratch with other arithmetic are checked to float64 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from lrwa.losses import l1_logits, student_loss
from lrwa.models import build_model
from lrwa.student_update import Batch, UpdateRule, student_gradient

BATCHNORM_STUDENTS = ["wrn-16-2", "resnet18"]
ALPHA = 0.9
INNER_DECAY = 5e-4
FORMS = ["separate", "concatenated"]
# The ways theta' enters the meta step.
META_VARIANTS = {"second order": {}, "first order": {"first_order": True},
                 "detached": {"detach_inner": True}}


def _setup(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    torch.manual_seed(seed)
    student = build_model(arch, 1, 8, 10).to(dtype)
    fresh = Batch(torch.randn(16, 1, 8, 8, dtype=dtype), torch.randn(16, 10, dtype=dtype))
    # Shifted, so that the replayed batch's statistics differ from the fresh batch's.
    replayed = Batch(2.0 + 3.0 * torch.randn(4, 1, 8, 8, dtype=dtype),
                     torch.randn(4, 10, dtype=dtype))
    return student, fresh, replayed


def _concatenation(fresh: Batch, replayed: Batch) -> Batch:
    return Batch(torch.cat([fresh.images, replayed.images]),
                 torch.cat([fresh.targets, replayed.targets]))


def _buffers(student) -> list[torch.Tensor]:
    return [buffer.clone() for buffer in student.buffers()]


def _step(student, rule, fresh, replayed, probe_cosine=False):
    """One update on a copy of `student`: (result, the copy's buffers afterwards)."""
    copied = copy.deepcopy(student)
    result = student_gradient(copied, rule, fresh, replayed, probe_cosine)
    return result, _buffers(copied)


def _plain_gradient(student, batch, loss=l1_logits):
    """Gradient and buffers after one ordinary training forward of a copy on `batch`."""
    copied = copy.deepcopy(student)
    gradient = torch.autograd.grad(loss(copied(batch.images), batch.targets),
                                   list(copied.parameters()))
    return list(gradient), _buffers(copied)


def _assert_equal(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


# -- the BatchNorm policy: one forward at theta writes the running statistics ---------------

@pytest.mark.parametrize("arch", BATCHNORM_STUDENTS)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("mode", "variant"), [
    ("acquire", "second order"), ("joint", "second order"), *[
        ("meta", name) for name in META_VARIANTS]])
def test_buffers_after_a_step_are_those_of_the_one_forward_at_theta(arch, form, mode, variant):
    student, fresh, replayed = _setup(arch)
    rule = UpdateRule(mode, l1_logits, alpha=ALPHA, inner_weight_decay=INNER_DECAY,
                      replay_loss=form, **META_VARIANTS[variant])
    named_batch = (fresh if mode == "acquire" or form == "separate"
                   else _concatenation(fresh, replayed))
    _, expected = _plain_gradient(student, named_batch)
    assert not all(torch.equal(a, b) for a, b in zip(expected, _buffers(student)))
    plain, after_plain = _step(student, rule, fresh, replayed)
    probed, after_probed = _step(student, rule, fresh, replayed, probe_cosine=True)
    _assert_equal(after_plain, expected)
    _assert_equal(after_probed, expected)
    _assert_equal(plain.gradients, probed.gradients)


@pytest.mark.parametrize("arch", BATCHNORM_STUDENTS)
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("probe_cosine", [False, True])
def test_separate_meta_at_alpha_zero_is_joint_gradients_and_buffers(arch, first_order,
                                                                    probe_cosine):
    student, fresh, replayed = _setup(arch)
    joint, joint_buffers = _step(student, UpdateRule("joint", l1_logits), fresh, replayed,
                                 probe_cosine)
    rule = UpdateRule("meta", l1_logits, alpha=0.0, inner_weight_decay=INNER_DECAY,
                      first_order=first_order)
    meta, meta_buffers = _step(student, rule, fresh, replayed, probe_cosine)
    _assert_equal(meta.gradients, joint.gradients)
    _assert_equal(meta_buffers, joint_buffers)
    assert torch.equal(meta.loss_acq, joint.loss_acq)
    assert torch.equal(meta.loss_ret, joint.loss_ret)


# -- the concatenated form --------------------------------------------------------------

@pytest.mark.parametrize("arch", BATCHNORM_STUDENTS)
def test_released_update_is_the_concatenated_l1_gradient_bit_for_bit(arch):
    """LRA's update: theta' from detached weights adds 0, leaving grad L1(student([f; r]))."""
    student, fresh, replayed = _setup(arch)
    expected, expected_buffers = _plain_gradient(student, _concatenation(fresh, replayed))
    joint, joint_buffers = _step(
        student, UpdateRule("joint", l1_logits, replay_loss="concatenated"), fresh, replayed)
    released, released_buffers = _step(
        student, UpdateRule("meta", l1_logits, alpha=ALPHA, inner_weight_decay=INNER_DECAY,
                            detach_inner=True, replay_loss="concatenated"), fresh, replayed)
    for gradients, buffers in ((joint.gradients, joint_buffers),
                               (released.gradients, released_buffers)):
        _assert_equal(gradients, expected)
        _assert_equal(buffers, expected_buffers)
    assert torch.equal(released.loss_acq, joint.loss_acq)


@pytest.mark.parametrize("arch", BATCHNORM_STUDENTS)
@pytest.mark.parametrize("first_order", [False, True])
def test_concatenated_meta_at_alpha_zero_adds_the_retention_gradient(arch, first_order):
    """At alpha = 0 the LRA-form outer loss is L_cat(theta) + L_ret(theta): not joint."""
    student, fresh, replayed = _setup(arch)
    grad_cat, cat_buffers = _plain_gradient(student, _concatenation(fresh, replayed))
    grad_ret, _ = _plain_gradient(student, replayed)
    rule = UpdateRule("meta", l1_logits, alpha=0.0, inner_weight_decay=INNER_DECAY,
                      first_order=first_order, replay_loss="concatenated")
    meta, meta_buffers = _step(student, rule, fresh, replayed)
    _assert_equal(meta.gradients, [c + r for c, r in zip(grad_cat, grad_ret)])
    _assert_equal(meta_buffers, cat_buffers)
    # Joint's is grad L_cat alone, so meta at alpha = 0 is joint plus the whole grad L_ret,
    # larger than grad L_cat itself here (2.5x for wrn-16-2, 5.6x for resnet18).
    joint, _ = _step(student, UpdateRule("joint", l1_logits, replay_loss="concatenated"),
                     fresh, replayed)
    _assert_equal(joint.gradients, grad_cat)
    assert _flat(grad_ret).norm() > _flat(grad_cat).norm()


@pytest.mark.parametrize("arch", ["lenet5-half", "wrn-16-2"])
def test_concatenated_l1_gradient_from_scratch(arch):
    """One mean of |S - T| over every logit of the concatenated batch, in one forward."""
    student, fresh, replayed = _setup(arch, torch.float64)
    images = torch.cat([fresh.images, replayed.images])
    targets = torch.cat([fresh.targets, replayed.targets])
    copied = copy.deepcopy(student)
    difference = copied(images) - targets
    by_hand = difference.abs().sum() / difference.numel()
    expected = torch.autograd.grad(by_hand, list(copied.parameters()))
    for rule in (UpdateRule("joint", l1_logits, replay_loss="concatenated"),
                 UpdateRule("meta", l1_logits, alpha=ALPHA, detach_inner=True,
                            replay_loss="concatenated")):
        got, _ = _step(student, rule, fresh, replayed)
        for a, b in zip(got.gradients, expected):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_concatenated_replay_weighs_its_share_of_the_batch():
    """Without BatchNorm, L_cat = (n L_acq + m L_ret) / (n + m): 4 replayed of 20 weigh 1/5."""
    student, fresh, replayed = _setup("lenet5-half", torch.float64)
    grad_acq, _ = _plain_gradient(student, fresh)
    grad_ret, _ = _plain_gradient(student, replayed)
    n, m = len(fresh.images), len(replayed.images)
    got, _ = _step(student, UpdateRule("joint", l1_logits, replay_loss="concatenated"),
                   fresh, replayed)
    for value, a, r in zip(got.gradients, grad_acq, grad_ret):
        torch.testing.assert_close(value, (n * a + m * r) / (n + m), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("arch", ["lenet5-half", "wrn-16-2"])
def test_concatenated_first_order_equals_its_analytic_form(arch):
    student, fresh, replayed = _setup(arch, torch.float64)
    loss = student_loss("kl", 2.0)
    rule = UpdateRule("meta", loss, alpha=ALPHA, inner_weight_decay=INNER_DECAY,
                      first_order=True, replay_loss="concatenated")
    got, _ = _step(student, rule, fresh, replayed)
    grad_cat, _ = _plain_gradient(student, _concatenation(fresh, replayed), loss)
    grad_acq, _ = _plain_gradient(student, fresh, loss)
    names, params = zip(*student.named_parameters())
    adapted = {name: (p - ALPHA * (g + INNER_DECAY * p)).detach().requires_grad_()
               for name, p, g in zip(names, params, grad_acq)}
    retention = loss(functional_call(copy.deepcopy(student), adapted, (replayed.images,)),
                     replayed.targets)
    grad_ret = torch.autograd.grad(retention, list(adapted.values()))
    for value, c, r in zip(got.gradients, grad_cat, grad_ret):
        torch.testing.assert_close(value, c + r, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(got.loss_ret, retention.detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("arch", BATCHNORM_STUDENTS)
def test_concatenated_form_reports_its_slices_and_retention_at_theta_prime(arch):
    student, fresh, replayed = _setup(arch, torch.float64)
    split = len(fresh.images)
    logits = copy.deepcopy(student)(torch.cat([fresh.images, replayed.images])).detach()
    joint, _ = _step(student, UpdateRule("joint", l1_logits, replay_loss="concatenated"),
                     fresh, replayed)
    torch.testing.assert_close(joint.loss_acq, l1_logits(logits[:split], fresh.targets))
    torch.testing.assert_close(joint.loss_ret, l1_logits(logits[split:], replayed.targets))
    grad_acq, _ = _plain_gradient(student, fresh)
    adapted = {name: p - ALPHA * g
               for (name, p), g in zip(student.named_parameters(), grad_acq)}
    at_adapted = l1_logits(functional_call(copy.deepcopy(student), adapted, (replayed.images,)),
                           replayed.targets).detach()
    for variant in META_VARIANTS.values():
        rule = UpdateRule("meta", l1_logits, alpha=ALPHA, replay_loss="concatenated", **variant)
        meta, _ = _step(student, rule, fresh, replayed)
        torch.testing.assert_close(meta.loss_acq, joint.loss_acq, rtol=0, atol=0)
        torch.testing.assert_close(meta.loss_ret, at_adapted)


# -- what every mode and form share ------------------------------------------------------

@pytest.mark.parametrize("arch", BATCHNORM_STUDENTS)
def test_probe_measures_one_cosine_in_every_mode_and_form(arch):
    """cos(grad L_acq(theta), grad L_ret(theta)), each loss on its own batch, everywhere."""
    student, fresh, replayed = _setup(arch)
    grad_acq, _ = _plain_gradient(student, fresh)
    grad_ret, _ = _plain_gradient(student, replayed)
    expected = torch.nn.functional.cosine_similarity(_flat(grad_acq), _flat(grad_ret), dim=0)
    for mode in ("acquire", "joint", "meta"):
        for form in FORMS:
            rule = UpdateRule(mode, l1_logits, alpha=ALPHA, replay_loss=form)
            got, _ = _step(student, rule, fresh, replayed, probe_cosine=True)
            torch.testing.assert_close(got.grad_cos, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", ["second order", "first order"])
def test_inner_average_shapes_theta_prime_in_both_forms(form, variant):
    """A hook that doubles grad L_acq before theta' is a meta step of twice the alpha."""
    student, fresh, replayed = _setup("wrn-16-2", torch.float64)
    options = {"replay_loss": form, **META_VARIANTS[variant]}
    doubled, _ = _step(student, UpdateRule(
        "meta", l1_logits, alpha=ALPHA, inner_average=lambda grads: [2 * g for g in grads],
        **options), fresh, replayed)
    twice_alpha, _ = _step(student, UpdateRule("meta", l1_logits, alpha=2 * ALPHA, **options),
                           fresh, replayed)
    once_alpha, _ = _step(student, UpdateRule("meta", l1_logits, alpha=ALPHA, **options),
                          fresh, replayed)
    for a, b in zip(doubled.gradients, twice_alpha.gradients):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert not torch.allclose(_flat(doubled.gradients), _flat(once_alpha.gradients))
