"""The losses: student distillation losses and the generator's adversarial losses.

Student: L1 between raw logits (the paper's code) or KL at a temperature.
Generator: the PRE-DFKD composite (one-hot CE on the teacher's argmax,
information entropy of the batch-mean teacher softmax, teacher activation
norm, and 1 - clamped JS divergence between teacher and student) or DFAD's
negative L1 disagreement. Each is chosen by name from a small registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class GeneratorLossWeights:
    onehot: float = 1.0
    entropy: float = 5.0
    activation: float = 0.1
    adversarial: float = 1.0
    js_temperature: float = 3.0


def pre_dfkd_generator_loss(teacher_logits: Tensor, teacher_features: Tensor,
                            student_logits: Tensor, weights: GeneratorLossWeights) -> Tensor:
    # Confident teacher predictions: the samples should look like some class.
    onehot = F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))
    # Balanced classes over the batch: minimise the negative entropy of the mean prediction.
    mean_probability = F.softmax(teacher_logits, dim=1).mean(dim=0)
    negative_entropy = (mean_probability * mean_probability.clamp_min(1e-12).log()).sum()
    # Strong teacher features, as real data produce (DAFL).
    activation = -teacher_features.abs().mean()
    # Disagreement, bounded so the generator cannot win by pushing it without limit.
    disagreement = js_divergence(student_logits, teacher_logits, weights.js_temperature)
    adversarial = 1.0 - disagreement.clamp(0.0, 1.0)
    return (weights.onehot * onehot + weights.entropy * negative_entropy
            + weights.activation * activation + weights.adversarial * adversarial)


def dfad_generator_loss(teacher_logits: Tensor, teacher_features: Tensor,
                        student_logits: Tensor, weights: GeneratorLossWeights) -> Tensor:
    del teacher_features, weights  # DFAD uses the disagreement alone
    return -F.l1_loss(student_logits, teacher_logits)


GeneratorLoss = Callable[[Tensor, Tensor, Tensor, GeneratorLossWeights], Tensor]
GENERATOR_LOSSES: dict[str, GeneratorLoss] = {
    "pre-dfkd": pre_dfkd_generator_loss,
    "dfad": dfad_generator_loss,
}


def generator_loss(name: str) -> GeneratorLoss:
    if name not in GENERATOR_LOSSES:
        raise LrwaError(f"unknown generator loss '{name}' (choose from: "
                        f"{', '.join(GENERATOR_LOSSES)})")
    return GENERATOR_LOSSES[name]


def agreement(logits: Tensor, labels: Tensor) -> Tensor:
    """Number of correct top-1 predictions."""
    return (logits.argmax(dim=1) == labels).sum()

