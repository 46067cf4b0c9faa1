"""The student's gradient under the three updates of METHOD.md.

    acquire: grad L_acq(theta)
    joint:   grad [L_acq(theta) + L_ret(theta)]
    meta:    grad [L_acq(theta) + L_ret(theta')],  theta' = theta - alpha (grad L_acq(theta) + wd theta)

The meta gradient flows through theta' back to theta (second order), unlike
the released code, whose theta' was built from detached copies so that the
retention term never reached the student. `first_order=True` drops the
Hessian term on purpose; `detach_inner=True` reproduces the released code's
behaviour and exists only so that the defect can be measured.

The functions return gradients rather than stepping an optimiser, so that
all modes share one optimiser (momentum, weight decay, schedule) and the Ray
adapter can average gradients across workers before the step.

BatchNorm: every training forward uses batch statistics. The running
statistics are updated by the fresh forward at theta and by the retention
forward (at theta in joint, at theta' in meta), in that order in both modes,
so that at alpha = 0 the two modes are identical, buffers included. The
optional probe of cos(grad L_acq, grad L_ret) at theta in meta mode runs on
cloned buffers and changes nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

LossFunction = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Batch:
    """Student inputs and the teacher's logits for them."""

    images: Tensor
    targets: Tensor


@dataclass
class StudentGradient:
    gradients: list[Tensor]
    loss_acq: Tensor
    loss_ret: Tensor | None = None      # L_ret at the weights it was taken at (theta or theta')
    grad_cos: Tensor | None = None      # cos(grad L_acq(theta), grad L_ret(theta)) when probed


@dataclass(frozen=True)
class UpdateRule:
    mode: str                     # "acquire", "joint" or "meta"
    loss: LossFunction
    alpha: float = 0.0
    inner_weight_decay: float = 0.0
    first_order: bool = False
    detach_inner: bool = False    # the released code's defect, for comparison only
    autocast_dtype: torch.dtype | None = None
    # Data parallel: averages grad L_acq across workers before theta' is formed, so every
    # worker adapts with the global batch's gradient (must be differentiable for second order).
    inner_average: Callable[[list[Tensor]], list[Tensor]] | None = None


def _cosine(first: Sequence[Tensor], second: Sequence[Tensor]) -> Tensor:
    flat_first = torch.cat([g.reshape(-1) for g in first]).float()
    flat_second = torch.cat([g.reshape(-1) for g in second]).float()
    return F.cosine_similarity(flat_first, flat_second, dim=0).detach()


def _autocast(images: Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=images.device.type, dtype=dtype)


def _loss_at(student: nn.Module, weights: dict[str, Tensor], batch: Batch,
             rule: UpdateRule) -> Tensor:
    with _autocast(batch.images, rule.autocast_dtype):
        logits = functional_call(student, weights, (batch.images,))
    # autocast may return bf16 logits; the loss is taken in the targets' precision.
    return rule.loss(logits.to(batch.targets.dtype), batch.targets)


def _retention_gradient_at_theta(student: nn.Module, names: list[str], params: list[Tensor],
                                 replayed: Batch, rule: UpdateRule) -> list[Tensor]:
    """grad L_ret(theta) without touching the student's BatchNorm running statistics."""
    cloned_buffers = {name: buffer.clone() for name, buffer in student.named_buffers()}
    weights = {**dict(zip(names, params)), **cloned_buffers}
    return list(torch.autograd.grad(_loss_at(student, weights, replayed, rule), params))


def student_gradient(student: nn.Module, rule: UpdateRule, fresh: Batch,
                     replayed: Batch | None = None, probe_cosine: bool = False) -> StudentGradient:
    """The gradient of the chosen objective w.r.t. every student parameter, in parameter order.

    Without a replayed batch (replay not ready yet) every mode reduces to acquisition.
    """
    names, params = map(list, zip(*student.named_parameters()))
    theta = dict(zip(names, params))
    needs_inner_graph = rule.mode == "meta" and replayed is not None and not (
        rule.first_order or rule.detach_inner)

    loss_acq = _loss_at(student, theta, fresh, rule)
    grad_acq = list(torch.autograd.grad(loss_acq, params, create_graph=needs_inner_graph))
    if replayed is None:
        return StudentGradient(grad_acq, loss_acq.detach())

    if rule.mode in ("acquire", "joint"):
        # Separate forwards (not one concatenated batch) so BatchNorm sees the same batches
        # as in the meta step, which is what makes meta at alpha = 0 identical to joint.
        if rule.mode == "acquire" and not probe_cosine:
            return StudentGradient(grad_acq, loss_acq.detach())
        loss_ret = _loss_at(student, theta, replayed, rule)
        grad_ret = list(torch.autograd.grad(loss_ret, params))
        cosine = _cosine(grad_acq, grad_ret) if probe_cosine else None
        gradients = grad_acq if rule.mode == "acquire" else [
            a + r for a, r in zip(grad_acq, grad_ret)]
        return StudentGradient(gradients, loss_acq.detach(), loss_ret.detach(), cosine)

    cosine = None
    if probe_cosine:
        grad_ret_at_theta = _retention_gradient_at_theta(student, names, params, replayed, rule)
        cosine = _cosine([g.detach() for g in grad_acq], grad_ret_at_theta)

    inner_grad = grad_acq if rule.inner_average is None else rule.inner_average(grad_acq)
    if needs_inner_graph:
        # theta' stays a function of theta: grad L_ret(theta') w.r.t. theta carries the
        # (I - alpha H_acq) factor, the term that aligns acquisition with retention.
        adapted = [p - rule.alpha * (g + rule.inner_weight_decay * p)
                   for p, g in zip(params, inner_grad)]
        loss_ret = _loss_at(student, dict(zip(names, adapted)), replayed, rule)
        grad_ret = torch.autograd.grad(loss_ret, params)
    else:
        # First order (and the released code): theta' is a constant, so the retention
        # gradient is taken at theta' and applied to theta unchanged.
        adapted = [(p - rule.alpha * (g + rule.inner_weight_decay * p)).detach().requires_grad_()
                   for p, g in zip(params, inner_grad)]
        loss_ret = _loss_at(student, dict(zip(names, adapted)), replayed, rule)
        grad_ret = torch.autograd.grad(loss_ret, adapted)
        if rule.detach_inner:
            # The released code's outer loss: retention at theta' never reaches theta, so the
            # student sees only L_acq + L_ret at theta (plus wasted compute).
            grad_ret = _retention_gradient_at_theta(student, names, params, replayed, rule)
    # grad L_acq(theta) from the inner step is reused as the acquisition part of the outer
    # gradient: backpropagating L_acq a second time would cost a full extra pass.
    gradients = [a.detach() + r for a, r in zip(grad_acq, grad_ret)]
    return StudentGradient(gradients, loss_acq.detach(), loss_ret.detach(), cosine)


def apply_gradient(student: nn.Module, gradients: Sequence[Tensor]) -> None:
    """Place the computed gradient in .grad for the optimiser."""
    for param, gradient in zip(student.parameters(), gradients):
        param.grad = gradient.detach()
