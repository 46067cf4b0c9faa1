"""The losses: student distillation losses and the generator's adversarial losses.

Student: L1 between raw logits (the paper's code) or KL at a temperature.
Generator: the PRE-DFKD composite as PRE-DFKD's and LRA's code compute it (one-hot
CE on the teacher's argmax, log10 information entropy of the batch-mean teacher
softmax, teacher activation norm, and 1 - the authors' clamped disagreement) or
DFAD's negative L1 disagreement. Each is chosen by name from a small registry;
`jsd-nats` keeps lrwa's earlier objective for results made with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lrwa.errors import LrwaError


def l1_logits(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    return F.l1_loss(student_logits, teacher_logits)


def kl_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    # T^2 keeps the gradient scale independent of the temperature (Hinton et al.).
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature**2


def student_loss(name: str, kl_temperature: float = 4.0) -> Callable[[Tensor, Tensor], Tensor]:
    if name == "l1":
        return l1_logits
    if name == "kl":
        return lambda student, teacher: kl_logits(student, teacher, kl_temperature)
    raise LrwaError(f"unknown student loss '{name}' (choose from: l1, kl)")


def js_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Jensen-Shannon divergence between the tempered softmaxes, batch mean, in nats."""
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp_min(1e-12)
    return 0.5 * (F.kl_div(m.log(), p, reduction="batchmean")
                  + F.kl_div(m.log(), q, reduction="batchmean"))


def clamped_disagreement(student_logits: Tensor, teacher_logits: Tensor,
                         temperature: float) -> Tensor:
    """The PRE-DFKD / LRA disagreement term, as their code computes it.

    With P = softmax(S/T), Q = softmax(T/T) and M = (P+Q)/2, each clamped to [0.01, 0.99]
    (M from the unclamped P and Q), J = 1/2 mean(M (log M - log P)) + 1/2 mean(M (log M -
    log Q)): torch's KLDivLoss with its default reduction, a mean over batch x classes, so
    J shrinks as the class count grows. This is not the JS divergence in nats
    (`js_divergence`); it is the authors' quantity, and their generators were trained on it.
    """
    p = F.softmax(student_logits / temperature, dim=1)
    q = F.softmax(teacher_logits / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    # Written out rather than kl_div(reduction="mean"), whose meaning torch plans to change.
    return 0.5 * ((m * (m.log() - p.log())).mean() + (m * (m.log() - q.log())).mean())


@dataclass(frozen=True)
class GeneratorLossWeights:
    onehot: float = 1.0
    entropy: float = 5.0
    activation: float = 0.1
    adversarial: float = 1.0
    js_temperature: float = 3.0


def onehot_loss(teacher_logits: Tensor) -> Tensor:
    """Confident teacher predictions: CE against the teacher's own argmax (DAFL)."""
    return F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))


def negative_entropy(teacher_logits: Tensor, log: Callable[[Tensor], Tensor]) -> Tensor:
    """sum p log p of the batch-mean teacher softmax: minimised by balanced classes.

    PRE-DFKD and LRA take log10 (`torch.log10`), which weighs the term 1/ln 10 of the
    natural log's. The clamp only guards an underflowed class against log 0."""
    mean_probability = F.softmax(teacher_logits, dim=1).mean(dim=0)
    return (mean_probability * log(mean_probability.clamp_min(1e-30))).sum()


def _composite(teacher_logits: Tensor, teacher_features: Tensor, student_logits: Tensor,
               weights: GeneratorLossWeights, log: Callable[[Tensor], Tensor],
               disagreement: Callable[[Tensor, Tensor, float], Tensor]) -> Tensor:
    """oh x one-hot CE + ie x sum p log p + a x (-mean |features|) + (1 - clamp(J, 0, 1))."""
    activation = -teacher_features.abs().mean()  # strong teacher features, as real data give
    adversarial = 1.0 - disagreement(student_logits, teacher_logits,
                                     weights.js_temperature).clamp(0.0, 1.0)
    return (weights.onehot * onehot_loss(teacher_logits)
            + weights.entropy * negative_entropy(teacher_logits, log)
            + weights.activation * activation + weights.adversarial * adversarial)


def pre_dfkd_generator_loss(teacher_logits: Tensor, teacher_features: Tensor,
                            student_logits: Tensor, weights: GeneratorLossWeights) -> Tensor:
    """The generator objective of PRE-DFKD as LRA's code computes it (docs/method.md): log10
    entropy and the authors' clamped, batch x class averaged disagreement."""
    return _composite(teacher_logits, teacher_features, student_logits, weights, torch.log10,
                      clamped_disagreement)


def jsd_nats_generator_loss(teacher_logits: Tensor, teacher_features: Tensor,
                            student_logits: Tensor, weights: GeneratorLossWeights) -> Tensor:
    """lrwa's objective before it matched the authors': natural-log entropy and the JS
    divergence in nats (batch mean, no clamps), about C times the authors' adversarial pull
    for C classes. Kept by name to reproduce results made with it; no system uses it."""
    return _composite(teacher_logits, teacher_features, student_logits, weights, torch.log,
                      js_divergence)


def dfad_generator_loss(teacher_logits: Tensor, teacher_features: Tensor,
                        student_logits: Tensor, weights: GeneratorLossWeights) -> Tensor:
    del teacher_features, weights  # DFAD uses the disagreement alone
    return -F.l1_loss(student_logits, teacher_logits)


GeneratorLoss = Callable[[Tensor, Tensor, Tensor, GeneratorLossWeights], Tensor]
GENERATOR_LOSSES: dict[str, GeneratorLoss] = {
    "pre-dfkd": pre_dfkd_generator_loss,
    "dfad": dfad_generator_loss,
    "jsd-nats": jsd_nats_generator_loss,
}


def generator_loss(name: str) -> GeneratorLoss:
    if name not in GENERATOR_LOSSES:
        raise LrwaError(f"unknown generator loss '{name}' (choose from: "
                        f"{', '.join(GENERATOR_LOSSES)})")
    return GENERATOR_LOSSES[name]


def agreement(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of correct top-1 predictions."""
    return (logits.argmax(dim=1) == labels).sum()

