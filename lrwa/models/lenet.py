"""LeNet-5, the MNIST teacher of DAFL and DFAD, and its half-width student.

It has no BatchNorm on purpose: its gradients do not depend on the other samples in a
batch, which makes it the model for exact-gradient tests.
"""

from __future__ import annotations

from torch import Tensor, nn

from lrwa.models.base import Classifier, init_weights

FULL_WIDTHS = (6, 16, 120, 84)
HALF_WIDTHS = (3, 8, 60, 42)


class LeNet5(Classifier):
    """conv5-pool-conv5-pool, a conv spanning the whole remaining map, two linears.

    The third conv's kernel equals the side left after the two pools, so it acts as a
    fully connected layer whatever the input size (8, 28, 32, ...).
    """

    # Two 2x2 max-pools must leave at least one pixel.
    min_image_size = 4

    def __init__(
        self,
        channels: int,
        image_size: int,
        num_classes: int,
        widths: tuple[int, int, int, int] = FULL_WIDTHS,
    ) -> None:
        super().__init__(channels, image_size, num_classes)
        c1, c2, c3, hidden = widths
        remaining = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(channels, c1, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, kernel_size=remaining),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(c3, hidden),
            nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_classes)
        init_weights(self)

    def embed(self, x: Tensor) -> Tensor:
        return self.body(x)


def lenet5(channels: int, image_size: int, num_classes: int) -> LeNet5:
    return LeNet5(channels, image_size, num_classes, FULL_WIDTHS)


def lenet5_half(channels: int, image_size: int, num_classes: int) -> LeNet5:
    return LeNet5(channels, image_size, num_classes, HALF_WIDTHS)
