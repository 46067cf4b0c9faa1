"""The pseudo-sample generator of the DAFL / PRE-DFKD lineage (METHOD.md).

z -> Linear -> 128 x (s/4)^2 -> BN -> up x2, conv 128->128, BN, LeakyReLU
-> up x2, conv 128->64, BN, LeakyReLU -> conv 64->C -> tanh -> BN(C, no affine).
The last BatchNorm standardises every batch, so the samples live in the
teacher's normalised input space whatever the data set's statistics. Spectral
norm on the convolutions keeps the adversarial game from blowing up. The same
network is the decoder of the generative-replay VAE.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from lrwa.errors import LrwaError


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 128) -> None:
        super().__init__()
        if image_size % 4:
            raise LrwaError(f"the generator needs an image size divisible by 4, got {image_size}")
        self.latent_dim = latent_dim
        self.initial_size = image_size // 4
        self.width = width
        self.project = nn.Linear(latent_dim, width * self.initial_size**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            spectral_norm(nn.Conv2d(width, width, 3, padding=1)),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            spectral_norm(nn.Conv2d(width, width // 2, 3, padding=1)),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width // 2, channels, 3, padding=1)),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: Tensor) -> Tensor:
        projected = self.project(z).view(-1, self.width, self.initial_size, self.initial_size)
        return self.body(projected)

    def sample_latent(self, count: int, rng: torch.Generator, device: torch.device) -> Tensor:
        """Noise drawn from the run's own generator, on the device, so resume is exact."""
        return torch.randn(count, self.latent_dim, generator=rng, device=device)
