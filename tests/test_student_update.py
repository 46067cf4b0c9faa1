"""Known answers for the student updates (docs/method.md's sanity facts).

The student is a tiny BatchNorm-free LeNet in float64, so finite differences
are accurate to far below the 1e-4 tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from lrwa.losses import l1_logits, student_loss
from lrwa.models import build_model
from lrwa.student_update import Batch, UpdateRule, student_gradient

ALPHA = 0.5
INNER_DECAY = 5e-4


def _setup(seed: int = 0, loss_name: str = "kl"):
    torch.manual_seed(seed)
    student = build_model("lenet5-half", 1, 8, 10).double()
    fresh = Batch(torch.randn(16, 1, 8, 8, dtype=torch.float64),
                  torch.randn(16, 10, dtype=torch.float64))
    replayed = Batch(torch.randn(8, 1, 8, 8, dtype=torch.float64),
                     torch.randn(8, 10, dtype=torch.float64))
    # KL is smooth, so central differences converge; L1 is exercised separately below.
    return student, fresh, replayed, student_loss(loss_name, 2.0)


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _meta_objective(student, flat_theta, fresh, replayed, loss, form) -> torch.Tensor:
    """The meta objective of either loss form, written from scratch:

    separate:     L_acq(theta) + L_ret(theta')
    concatenated: L([fresh; replayed] at theta) + L_ret(theta')
    with theta' = theta - alpha (grad L_acq(theta) + wd theta), L_acq on the fresh samples.
    """
    names = [name for name, _ in student.named_parameters()]
    shapes = [p.shape for _, p in student.named_parameters()]
    pieces = torch.split(flat_theta, [s.numel() for s in shapes])
    theta = [piece.view(shape) for piece, shape in zip(pieces, shapes)]

    def loss_at(weights, images, targets):
        return loss(functional_call(student, dict(zip(names, weights)), (images,)), targets)

    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in theta]
        inner = torch.autograd.grad(loss_at(leaves, fresh.images, fresh.targets), leaves)
    adapted = [t - ALPHA * (g + INNER_DECAY * t) for t, g in zip(theta, inner)]
    retention = loss_at(adapted, replayed.images, replayed.targets)
    if form == "separate":
        return loss_at(theta, fresh.images, fresh.targets) + retention
    return loss_at(theta, torch.cat([fresh.images, replayed.images]),
                   torch.cat([fresh.targets, replayed.targets])) + retention


@pytest.mark.parametrize("form", ["separate", "concatenated"])
def test_meta_gradient_matches_central_finite_differences(form):
    student, fresh, replayed, loss = _setup()
    rule = UpdateRule("meta", loss, alpha=ALPHA, inner_weight_decay=INNER_DECAY,
                      replay_loss=form)
    analytic = _flat(student_gradient(student, rule, fresh, replayed).gradients)
    theta = _flat(p.detach() for p in student.parameters())
    generator = torch.Generator().manual_seed(1)
    epsilon = 1e-5
    for _ in range(12):
        direction = torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        direction /= direction.norm()
        with torch.no_grad():
            # the objective's inner gradient is re-derived at each perturbed point
            plus = _meta_objective(student, theta + epsilon * direction, fresh, replayed, loss,
                                   form)
            minus = _meta_objective(student, theta - epsilon * direction, fresh, replayed, loss,
                                    form)
        numeric = (plus - minus) / (2 * epsilon)
        expected = analytic @ direction
        assert abs(numeric - expected) <= 1e-4 * max(abs(expected), 1e-3)


def test_alpha_zero_meta_equals_joint_exactly():
    student, fresh, replayed, loss = _setup(loss_name="l1")
    joint = student_gradient(student, UpdateRule("joint", loss), fresh, replayed).gradients
    for first_order in (False, True):
        rule = UpdateRule("meta", loss, alpha=0.0, inner_weight_decay=INNER_DECAY,
                          first_order=first_order)
        meta = student_gradient(student, rule, fresh, replayed).gradients
        for a, b in zip(meta, joint):
            assert torch.equal(a, b)


def test_retention_term_reaches_theta_unlike_the_released_code():
    student, fresh, replayed, loss = _setup()
    ours = student_gradient(student, UpdateRule("meta", loss, alpha=ALPHA), fresh, replayed)
    released = student_gradient(
        student, UpdateRule("meta", loss, alpha=ALPHA, detach_inner=True), fresh, replayed)
    difference = (_flat(ours.gradients) - _flat(released.gradients)).norm()
    assert difference > 1e-3 * _flat(ours.gradients).norm()
    # theta' built from detached weights: L_ret(theta') adds exactly 0, leaving grad L_acq.
    alone = torch.autograd.grad(loss(student(fresh.images), fresh.targets),
                                list(student.parameters()))
    for a, b in zip(released.gradients, alone):
        assert torch.equal(a, b)


def test_first_order_equals_its_analytic_form():
    student, fresh, replayed, loss = _setup()
    rule = UpdateRule("meta", loss, alpha=ALPHA, inner_weight_decay=INNER_DECAY,
                      first_order=True)
    got = student_gradient(student, rule, fresh, replayed).gradients
    names, params = zip(*student.named_parameters())
    grad_acq = torch.autograd.grad(loss(student(fresh.images), fresh.targets), params)
    adapted = {name: (p - ALPHA * (g + INNER_DECAY * p)).detach().requires_grad_()
               for name, p, g in zip(names, params, grad_acq)}
    retention = loss(functional_call(student, adapted, (replayed.images,)), replayed.targets)
    grad_ret = torch.autograd.grad(retention, list(adapted.values()))
    for value, a, r in zip(got, grad_acq, grad_ret):
        torch.testing.assert_close(value, a + r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", ["separate", "concatenated"])
def test_second_order_differs_from_first_order_by_the_hessian_term(form):
    """d theta'/d theta = I - alpha H_acq(theta), so the two differ by exactly
    -alpha H_acq(theta) grad L_ret(theta'), whichever loss the outer step takes at theta."""
    student, fresh, replayed, loss = _setup()
    second = _flat(student_gradient(student, UpdateRule("meta", loss, alpha=ALPHA,
                                                        replay_loss=form),
                                    fresh, replayed).gradients)
    first = _flat(student_gradient(student, UpdateRule("meta", loss, alpha=ALPHA,
                                                       first_order=True, replay_loss=form),
                                   fresh, replayed).gradients)
    names, params = zip(*student.named_parameters())
    grad_acq = torch.autograd.grad(loss(student(fresh.images), fresh.targets), params,
                                   create_graph=True)
    adapted = {name: (p - ALPHA * g).detach().requires_grad_()
               for name, p, g in zip(names, params, grad_acq)}
    retention = loss(functional_call(student, adapted, (replayed.images,)), replayed.targets)
    grad_ret = torch.autograd.grad(retention, list(adapted.values()))
    hessian_times_grad_ret = torch.autograd.grad(
        sum((g * r).sum() for g, r in zip(grad_acq, grad_ret)), params)
    hessian_term = -ALPHA * _flat(hessian_times_grad_ret)
    assert hessian_term.norm() > 0.05 * second.norm()  # 14-17% of it, measured
    torch.testing.assert_close(second - first, hessian_term, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("form", ["separate", "concatenated"])
def test_acquire_ignores_replay_and_the_loss_form(form):
    student, fresh, replayed, loss = _setup(loss_name="l1")
    acquire = student_gradient(student, UpdateRule("acquire", loss, replay_loss=form), fresh,
                               replayed)
    alone = torch.autograd.grad(l1_logits(student(fresh.images), fresh.targets),
                                list(student.parameters()))
    for a, b in zip(acquire.gradients, alone):
        assert torch.equal(a, b)
    assert acquire.loss_ret is None


@pytest.mark.parametrize("form", ["separate", "concatenated"])
@pytest.mark.parametrize("mode", ["acquire", "joint", "meta"])
def test_cosine_probe_is_the_gradients_cosine_and_changes_nothing(mode, form):
    student, fresh, replayed, loss = _setup(loss_name="l1")
    rule = UpdateRule(mode, loss, alpha=ALPHA, replay_loss=form)
    plain = student_gradient(student, rule, fresh, replayed, probe_cosine=False)
    probed = student_gradient(student, rule, fresh, replayed, probe_cosine=True)
    # cos(grad L_acq(theta), grad L_ret(theta)), each on its own batch, in every mode
    grad_acq, grad_ret = (torch.autograd.grad(loss(student(batch.images), batch.targets),
                                              list(student.parameters()))
                          for batch in (fresh, replayed))
    expected = torch.nn.functional.cosine_similarity(_flat(grad_acq), _flat(grad_ret), dim=0)
    torch.testing.assert_close(probed.grad_cos.double(), expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(plain.gradients, probed.gradients):
        assert torch.equal(a, b)


@pytest.mark.parametrize("form", ["separate", "concatenated"])
def test_without_replay_every_mode_is_acquisition(form):
    student, fresh, _, loss = _setup(loss_name="l1")
    reference = student_gradient(student, UpdateRule("acquire", loss), fresh).gradients
    for mode in ("joint", "meta"):
        rule = UpdateRule(mode, loss, alpha=ALPHA, replay_loss=form)
        got = student_gradient(student, rule, fresh).gradients
        for a, b in zip(got, reference):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("changes", "message"), [
    ({"mode": "maml"}, "mode must be one of"),
    ({"replay_loss": "concat"}, "replay_loss must be one of"),
    ({"first_order": True, "detach_inner": True}, "cannot be combined")])
def test_update_rule_refuses_what_it_cannot_compute(changes, message):
    with pytest.raises(ValueError, match=message):
        UpdateRule(**{"mode": "meta", "loss": l1_logits, **changes})
