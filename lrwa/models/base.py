"""What every classifier in the zoo shares.

Distillation needs both the logits and the penultimate activations (the generator's
"activation" loss reads them), so each model only defines how to embed an image;
the linear head and the two forward methods live here, once.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from lrwa.errors import LrwaError


class Classifier(nn.Module):
    """An embedding network followed by one linear layer.

    Subclasses set `min_image_size`, build `self.head` (the final `nn.Linear`) and
    implement `embed`. `feature_dim` is the width of the features fed to the head.
    """

    min_image_size: ClassVar[int] = 1
    head: nn.Linear

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        name = type(self).__name__
        if channels < 1:
            raise LrwaError(f"{name} needs at least 1 input channel, got {channels}")
        if num_classes < 1:
            raise LrwaError(f"{name} needs at least 1 class, got {num_classes}")
        if image_size < self.min_image_size:
            raise LrwaError(
                f"image size {image_size} is too small for {name} "
                f"(needs at least {self.min_image_size}x{self.min_image_size} pixels)"
            )

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    def embed(self, x: Tensor) -> Tensor:
        """Map images (B, C, H, W) to penultimate features (B, feature_dim)."""
        raise NotImplementedError

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.embed(x)
        return self.head(features), features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_features(x)[0]


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions, identity BatchNorm; linear layers keep torch's default."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # fan_out keeps the backward signal's scale steady through ReLU stacks.
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
