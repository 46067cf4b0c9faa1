"""The pseudo-sample generator of the DAFL / PRE-DFKD lineage (docs/method.md).

z -> Linear -> 128 x (s/4)^2 -> BN -> up x2, conv 128->128, BN, LeakyReLU
-> up x2, conv 128->64, BN, LeakyReLU -> conv 64->C -> tanh -> BN(C, no affine).
The last BatchNorm standardises every batch, so the samples live in the
teacher's normalised input space whatever the data set's statistics.

Two styles, as the authors built them:
- "pre-dfkd" (PRE-DFKD and LRA): spectral norm on the convolutions, which keeps the
  adversarial game from blowing up; every conv and linear weight drawn from
  uniform(-0.08, 0.08) with zero biases; the two inner BatchNorms written
  BatchNorm2d(C, 0.8), whose second argument is eps, so those layers divide by
  sqrt(var + 0.8) (not a momentum of 0.8). The generative-replay VAE's decoder, LRA's
  MemoryGenerator, is this network without the spectral norm.
- "dfad" (DFAD's GeneratorA): no spectral norm, PyTorch's default initialisation and eps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from lrwa.errors import LrwaError

GENERATOR_STYLES = ("pre-dfkd", "dfad")
# The authors' BatchNorm2d(C, 0.8): eps, not momentum.
AUTHORS_BATCHNORM_EPS = 0.8
UNIFORM_INIT_BOUND = 0.08


def uniform_init(module: nn.Module) -> None:
    """PRE-DFKD's initialisation: conv and linear weights ~ U(-0.08, 0.08), biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.uniform_(layer.weight, -UNIFORM_INIT_BOUND, UNIFORM_INIT_BOUND)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 128,
                 style: str = "pre-dfkd", spectral: bool | None = None) -> None:
        """`spectral` overrides the style's spectral norm (the VAE decoder has none)."""
        super().__init__()
        if image_size % 4:
            raise LrwaError(f"the generator needs an image size divisible by 4, got {image_size}")
        if style not in GENERATOR_STYLES:
            raise LrwaError(f"unknown generator style '{style}' (choose from: "
                            f"{', '.join(GENERATOR_STYLES)})")
        self.latent_dim = latent_dim
        self.initial_size = image_size // 4
        self.width = width
        use_spectral = style == "pre-dfkd" if spectral is None else spectral
        inner_eps = AUTHORS_BATCHNORM_EPS if style == "pre-dfkd" else 1e-5
        convs = [nn.Conv2d(width, width, 3, padding=1),
                 nn.Conv2d(width, width // 2, 3, padding=1),
                 nn.Conv2d(width // 2, channels, 3, padding=1)]
        self.project = nn.Linear(latent_dim, width * self.initial_size**2)
        if style == "pre-dfkd":
            # Before the spectral norm wraps the convs, so its `original` holds these weights.
            for layer in (self.project, *convs):
                uniform_init(layer)
        if use_spectral:
            convs = [spectral_norm(conv) for conv in convs]
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            convs[0],
            nn.BatchNorm2d(width, eps=inner_eps),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            convs[1],
            nn.BatchNorm2d(width // 2, eps=inner_eps),
            nn.LeakyReLU(0.2),
            convs[2],
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: Tensor) -> Tensor:
        projected = self.project(z).view(-1, self.width, self.initial_size, self.initial_size)
        return self.body(projected)

    def sample_latent(self, count: int, rng: torch.Generator, device: torch.device) -> Tensor:
        """Noise drawn from the run's own generator, on the device, so resume is exact."""
        return torch.randn(count, self.latent_dim, generator=rng, device=device)
