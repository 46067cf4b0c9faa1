"""Wide ResNets (Zagoruyko & Komodakis, 2016): WRN-16-2 and WRN-40-2, the CIFAR
teacher/student pair of most data-free distillation benchmarks.

A WRN-d-k has three groups of (d - 4) / 6 pre-activation blocks with widths 16k, 32k
and 64k after a 16-channel stem conv.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lrwa.errors import LrwaError
from lrwa.models.base import Classifier, init_weights


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus the input."""

    def __init__(self, in_width: int, out_width: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_width)
        self.conv1 = nn.Conv2d(in_width, out_width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_width)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, padding=1, bias=False)
        self.dropout = dropout
        self.projection: nn.Conv2d | None = None
        if stride != 1 or in_width != out_width:
            self.projection = nn.Conv2d(in_width, out_width, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn1(x))
        out = self.conv1(activated)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        # As in the reference code, a projected shortcut reads the pre-activated input,
        # so the first BN-ReLU is shared by both branches.
        shortcut = x if self.projection is None else self.projection(activated)
        return out + shortcut


class WideResNet(Classifier):
    """Stem conv, three groups of pre-activation blocks, a final BN-ReLU, global average
    pooling, linear head."""

    # Each of the two stride-2 groups should receive a map at least 2 pixels wide.
    min_image_size = 4

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int,
        depth: int,
        widen_factor: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(channels, image_size, num_classes)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise LrwaError(f"Wide ResNet depth must be 6n + 4 with n >= 1, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise LrwaError(f"dropout must be in [0, 1), got {dropout}")
        blocks = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = nn.Conv2d(channels, 16, 3, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_width = 16
        for index, width in enumerate(widths):
            first_stride = 1 if index == 0 else 2
            layers = []
            for block in range(blocks):
                stride = first_stride if block == 0 else 1
                layers.append(PreActBlock(in_width, width, stride, dropout))
                in_width = width
            groups.append(nn.Sequential(*layers))
        self.groups = nn.Sequential(*groups)
        # Pre-activation blocks end on a conv, so the last activation happens here.
        self.final = nn.Sequential(
            nn.BatchNorm2d(in_width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(in_width, num_classes)
        init_weights(self)

    def embed(self, x: Tensor) -> Tensor:
        return self.final(self.groups(self.stem(x)))


def wrn_16_2(channels: int, image_size: int, num_classes: int, dropout: float = 0.0) -> WideResNet:
    return WideResNet(channels, image_size, num_classes, depth=16, widen_factor=2, dropout=dropout)


def wrn_40_2(channels: int, image_size: int, num_classes: int, dropout: float = 0.0) -> WideResNet:
    return WideResNet(channels, image_size, num_classes, depth=40, widen_factor=2, dropout=dropout)
