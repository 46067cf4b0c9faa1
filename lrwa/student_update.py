"""The student's gradient under the updates of docs/method.md, in two loss forms.

`replay_loss="separate"` is the paper's equation, two means:

    acquire: grad L_acq(theta)
    joint:   grad [L_acq(theta) + L_ret(theta)]
    meta:    grad [L_acq(theta) + L_ret(theta')]
    theta' = theta - alpha (grad L_acq(theta) + wd theta)

`replay_loss="concatenated"` is how MB-DFKD, PRE-DFKD and LRA's code compute it: one forward
of [fresh; replayed] at theta, one mean, one BatchNorm batch, so replay weighs its share of
the batch. L_cat(theta) is that loss; theta' is built from L_acq on the fresh samples alone
(LRA's inner step):

    joint:   grad L_cat(theta)
    meta:    grad [L_cat(theta) + L_ret(theta')]

Concatenated meta at alpha = 0 is grad [L_cat(theta) + L_ret(theta)], not concatenated
joint: its outer loss has the extra retention term. `acquire` ignores the form.

The meta gradient flows through theta' back to theta (second order). `first_order=True`
takes the retention gradient at a detached theta' and applies it to theta.
`detach_inner=True` is LRA's released code: theta' is built from detached copies of theta,
so L_ret(theta') adds exactly 0 to the student's gradient: separate meta then gives
grad L_acq(theta), and concatenated meta gives grad L_cat(theta), the concatenated joint
update bit for bit. It is still computed (the reported loss_ret is L_ret(theta')), but its
backward, which reaches nothing, is skipped.

BatchNorm: every training forward uses batch statistics, and the running statistics are
updated by exactly one forward per step, the one at theta that defines the baseline's
batch: the fresh forward in the separate form, the concatenated forward in the
concatenated form. Every other forward (the replayed one at theta, the fresh-only one that
builds theta', every forward at theta', the cosine probe) runs on cloned buffers: theta' is
never evaluated, and LRA's code and `higher` discard its statistics too. Hence meta at
alpha = 0 equals joint exactly, buffers included, in the separate form, and concatenated
meta with `detach_inner` equals concatenated joint exactly.

The optional probe measures one quantity in every mode and form: cos(grad L_acq(theta),
grad L_ret(theta)), each loss on its own batch.

The functions return gradients rather than stepping an optimiser, so that all modes share
one optimiser (momentum, weight decay, schedule) and the Ray adapter can average gradients
across workers before the step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from lrwa.config import MODES, REPLAY_LOSSES

LossFunction = Callable[[Tensor, Tensor], Tensor]
Weights = dict[str, Tensor]


@dataclass
class Batch:
    """Student inputs and the teacher's logits for them."""

    images: Tensor
    targets: Tensor


@dataclass
class StudentGradient:
    gradients: list[Tensor]
    loss_acq: Tensor                    # L_acq on the fresh samples at theta
    loss_ret: Tensor | None = None      # L_ret at the weights it was taken at (theta or theta')
    grad_cos: Tensor | None = None      # cos(grad L_acq(theta), grad L_ret(theta)) when probed


@dataclass(frozen=True)
class UpdateRule:
    mode: str                     # "acquire", "joint" or "meta"
    loss: LossFunction
    alpha: float = 0.0
    inner_weight_decay: float = 0.0
    first_order: bool = False
    detach_inner: bool = False    # LRA's released code: theta' from detached weights
    replay_loss: str = "separate"  # "separate" (the paper) or "concatenated" (the baselines')
    autocast_dtype: torch.dtype | None = None
    # Data parallel: averages grad L_acq across workers before theta' is formed, so every
    # worker adapts with the global batch's gradient (must be differentiable for second order).
    inner_average: Callable[[list[Tensor]], list[Tensor]] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.replay_loss not in REPLAY_LOSSES:
            raise ValueError(f"replay_loss must be one of {REPLAY_LOSSES}, "
                             f"got {self.replay_loss!r}")
        if self.first_order and self.detach_inner:
            # The two define theta' differently; no single update is both.
            raise ValueError("first_order and detach_inner cannot be combined")

    @property
    def second_order(self) -> bool:
        return self.mode == "meta" and not (self.first_order or self.detach_inner)


def _cosine(first: Sequence[Tensor], second: Sequence[Tensor]) -> Tensor:
    flat_first = torch.cat([g.detach().reshape(-1) for g in first]).float()
    flat_second = torch.cat([g.detach().reshape(-1) for g in second]).float()
    return F.cosine_similarity(flat_first, flat_second, dim=0)


def _autocast(images: Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=images.device.type, dtype=dtype)


def _with_cloned_buffers(student: nn.Module, weights: Weights) -> Weights:
    """`weights` plus copies of the buffers: a forward on them leaves running statistics alone."""
    return {**weights, **{name: buffer.clone() for name, buffer in student.named_buffers()}}


def _logits_at(student: nn.Module, weights: Weights, images: Tensor, rule: UpdateRule,
               dtype: torch.dtype) -> Tensor:
    with _autocast(images, rule.autocast_dtype):
        logits = functional_call(student, weights, (images,))
    # autocast may return bf16 logits; the loss is taken in the targets' precision.
    return logits.to(dtype)


def _loss_at(student: nn.Module, weights: Weights, batch: Batch, rule: UpdateRule) -> Tensor:
    return rule.loss(_logits_at(student, weights, batch.images, rule, batch.targets.dtype),
                     batch.targets)


def _gradient(loss: Tensor, params: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def _gradient_aside(student: nn.Module, theta: Weights, batch: Batch, rule: UpdateRule,
                    create_graph: bool = False) -> tuple[Tensor, list[Tensor]]:
    """The loss on `batch` alone at theta and its gradient, running statistics untouched."""
    loss = _loss_at(student, _with_cloned_buffers(student, theta), batch, rule)
    return loss, _gradient(loss, list(theta.values()), create_graph)


def _adapted(params: Sequence[Tensor], inner_gradient: Sequence[Tensor],
             rule: UpdateRule) -> list[Tensor]:
    return [p - rule.alpha * (g + rule.inner_weight_decay * p)
            for p, g in zip(params, inner_gradient)]


def _retention_at_adapted(student: nn.Module, theta: Weights, grad_acq: list[Tensor],
                          replayed: Batch, rule: UpdateRule
                          ) -> tuple[Tensor, list[Tensor] | None]:
    """L_ret(theta') and its gradient w.r.t. theta; None where it adds exactly 0 (detached).

    theta' is never evaluated, so its forward runs on cloned buffers.
    """
    names, params = list(theta), list(theta.values())
    inner = grad_acq if rule.inner_average is None else rule.inner_average(grad_acq)

    def loss_at(adapted: list[Tensor]) -> Tensor:
        weights = _with_cloned_buffers(student, dict(zip(names, adapted)))
        return _loss_at(student, weights, replayed, rule)

    if rule.second_order:
        # theta' stays a function of theta: grad L_ret(theta') w.r.t. theta carries the
        # (I - alpha H_acq) factor, the term that aligns acquisition with retention.
        loss_ret = loss_at(_adapted(params, inner, rule))
        return loss_ret.detach(), _gradient(loss_ret, params)
    with torch.no_grad():
        adapted = _adapted(params, inner, rule)
        if rule.detach_inner:
            # LRA's theta' hangs off detached copies of theta: nothing flows back to theta.
            return loss_at(adapted), None
    # First order: theta' is a constant, so the retention gradient is taken at theta' and
    # applied to theta unchanged.
    adapted = [weight.requires_grad_() for weight in adapted]
    loss_ret = loss_at(adapted)
    return loss_ret.detach(), _gradient(loss_ret, adapted)


def _add_gradients(first: Sequence[Tensor], second: Sequence[Tensor] | None) -> list[Tensor]:
    """first + second, where None is a term that adds exactly 0 (left out, not added)."""
    if second is None:
        return [a.detach() for a in first]
    return [a.detach() + b for a, b in zip(first, second)]


def _separate_form(student: nn.Module, theta: Weights, rule: UpdateRule, fresh: Batch,
                   replayed: Batch, probe_cosine: bool) -> StudentGradient:
    params = list(theta.values())
    # The one forward of the step that writes BatchNorm running statistics.
    loss_acq = _loss_at(student, theta, fresh, rule)
    grad_acq = _gradient(loss_acq, params, create_graph=rule.second_order)
    if rule.mode == "acquire" and not probe_cosine:
        return StudentGradient(grad_acq, loss_acq.detach())
    loss_ret, grad_ret = None, None
    if rule.mode != "meta" or probe_cosine:
        loss_ret, grad_ret = _gradient_aside(student, theta, replayed, rule)
    cosine = _cosine(grad_acq, grad_ret) if probe_cosine else None
    if rule.mode == "acquire":
        return StudentGradient(grad_acq, loss_acq.detach(), loss_ret.detach(), cosine)
    if rule.mode == "joint":
        return StudentGradient(_add_gradients(grad_acq, grad_ret), loss_acq.detach(),
                               loss_ret.detach(), cosine)
    loss_ret, grad_ret = _retention_at_adapted(student, theta, grad_acq, replayed, rule)
    # grad L_acq(theta) from the inner step is reused as the acquisition part of the outer
    # gradient: backpropagating L_acq a second time would cost a full extra pass.
    return StudentGradient(_add_gradients(grad_acq, grad_ret), loss_acq.detach(), loss_ret, cosine)


def _concatenated_form(student: nn.Module, theta: Weights, rule: UpdateRule, fresh: Batch,
                       replayed: Batch, probe_cosine: bool) -> StudentGradient:
    params = list(theta.values())
    targets = torch.cat([fresh.targets, replayed.targets])
    # The one forward of the step that writes BatchNorm running statistics: the baselines'
    # batch. Its slices give the reported losses without another pass.
    logits = _logits_at(student, theta, torch.cat([fresh.images, replayed.images]), rule,
                        targets.dtype)
    grad_cat = _gradient(rule.loss(logits, targets), params)
    with torch.no_grad():
        split = len(fresh.images)
        loss_acq = rule.loss(logits[:split], fresh.targets)
        loss_ret = rule.loss(logits[split:], replayed.targets)

    grad_acq = None
    if rule.mode == "meta" or probe_cosine:
        # grad L_acq on the fresh samples alone: LRA's inner step, and the probe's first half.
        grad_acq = _gradient_aside(student, theta, fresh, rule,
                                   create_graph=rule.second_order)[1]
    # The probe measures the same quantity in every mode and form: each loss on its own batch.
    cosine = (_cosine(grad_acq, _gradient_aside(student, theta, replayed, rule)[1])
              if probe_cosine else None)
    if rule.mode == "joint":
        return StudentGradient(grad_cat, loss_acq, loss_ret, cosine)
    loss_ret, grad_ret = _retention_at_adapted(student, theta, grad_acq, replayed, rule)
    return StudentGradient(_add_gradients(grad_cat, grad_ret), loss_acq, loss_ret, cosine)


def student_gradient(student: nn.Module, rule: UpdateRule, fresh: Batch,
                     replayed: Batch | None = None, probe_cosine: bool = False) -> StudentGradient:
    """The gradient of the chosen objective w.r.t. every student parameter, in parameter order.

    Without a replayed batch (replay not ready yet) every mode and form reduces to
    acquisition.
    """
    theta = dict(student.named_parameters())
    if replayed is None:
        loss_acq = _loss_at(student, theta, fresh, rule)
        return StudentGradient(_gradient(loss_acq, list(theta.values())), loss_acq.detach())
    if rule.mode == "acquire" or rule.replay_loss == "separate":
        return _separate_form(student, theta, rule, fresh, replayed, probe_cosine)
    return _concatenated_form(student, theta, rule, fresh, replayed, probe_cosine)


def apply_gradient(student: nn.Module, gradients: Sequence[Tensor]) -> None:
    """Place the computed gradient in .grad for the optimiser."""
    for param, gradient in zip(student.parameters(), gradients):
        param.grad = gradient.detach()
