"""CIFAR-style ResNet-18 and ResNet-34 (He et al., 2016), the usual teachers and students
of data-free distillation papers.

Unlike the ImageNet version, the stem is a single stride-1 3x3 conv with no max-pool, so
small images keep their resolution; adaptive pooling lets any image size reach the head.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lrwa.models.base import Classifier, init_weights

STAGE_WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection; a 1x1 conv matches shapes when needed."""

    def __init__(self, in_width: int, out_width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_width, out_width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_width)
        self.conv2 = nn.Conv2d(out_width, out_width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_width)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != out_width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_width, out_width, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_width),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(Classifier):
    """Stem conv, four stages of basic blocks (the last three halve the resolution),
    global average pooling, linear head."""

    # Each of the three stride-2 stages should receive a map at least 2 pixels wide.
    min_image_size = 8

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int,
        blocks_per_stage: tuple[int, int, int, int],
    ) -> None:
        super().__init__(channels, image_size, num_classes)
        self.stem = nn.Sequential(
            nn.Conv2d(channels, STAGE_WIDTHS[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(STAGE_WIDTHS[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_width = STAGE_WIDTHS[0]
        for index, (width, blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True)):
            first_stride = 1 if index == 0 else 2
            layers = []
            for block in range(blocks):
                layers.append(BasicBlock(in_width, width, first_stride if block == 0 else 1))
                in_width = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(in_width, num_classes)
        init_weights(self)

    def embed(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x)))


def resnet18(channels: int, image_size: int, num_classes: int) -> ResNet:
    return ResNet(channels, image_size, num_classes, (2, 2, 2, 2))


def resnet34(channels: int, image_size: int, num_classes: int) -> ResNet:
    return ResNet(channels, image_size, num_classes, (3, 4, 6, 3))
