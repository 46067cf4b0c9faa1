"""The model zoo: every teacher and student architecture, looked up by name.

Each model maps images (B, C, H, W) to logits (B, classes) and also offers
`forward_with_features`, which returns the penultimate features as well.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from lrwa.errors import LrwaError
from lrwa.models.base import Classifier, count_parameters
from lrwa.models.lenet import lenet5, lenet5_half
from lrwa.models.resnet import resnet18, resnet34
from lrwa.models.wide_resnet import wrn_16_2, wrn_40_2

# Ordered from smallest to largest; each builder takes (channels, image_size, num_classes).
MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": lenet5,
    "lenet5-half": lenet5_half,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "wrn-16-2": wrn_16_2,
    "wrn-40-2": wrn_40_2,
}

__all__ = ["MODELS", "Classifier", "build_model", "count_parameters", "model_names"]


def model_names() -> list[str]:
    """Registered architecture names, in registry order."""
    return list(MODELS)


def build_model(arch: str, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """Build architecture `arch` for images of `channels` x `image_size` x `image_size`.

    Raises `LrwaError` for an unknown name or an input the architecture cannot take.
    """
    try:
        builder = MODELS[arch]
    except KeyError:
        choices = ", ".join(model_names())
        raise LrwaError(f"unknown architecture {arch!r} (choose from: {choices})") from None
    return builder(channels, image_size, num_classes)
