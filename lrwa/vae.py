"""The variational autoencoder behind generative replay, as PRE-DFKD and LRA build it.

The encoder is theirs: the input L2-normalised along dim 2 (image rows, as their code
does), conv -> BN(eps 0.8) -> LeakyReLU twice, a 0.5x resize, a stride-2 conv -> BN,
another 0.5x resize, then linear heads for the mean and log-variance of a Gaussian over
the latent code. The decoder is LRA's MemoryGenerator: the pseudo-sample `Generator`'s
shape without spectral norm, so decoded samples land in the same normalised input space
as the fresh ones. Both are initialised uniform(-0.08, 0.08), biases 0.

Widths follow the generator's: at its width w the encoder has w/2, w, w channels, which
at w = 128 is the authors' 64, 128, 128. For image sides divisible by 8 the flattened
encoding is theirs exactly; their code fails on other sides (MNIST's 28), lrwa flattens
whatever the resizes leave. All sampling noise comes from a `torch.Generator` the caller
passes in, never the global RNG, so that a resumed run draws the same codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lrwa.errors import LrwaError
from lrwa.generator import AUTHORS_BATCHNORM_EPS, Generator, uniform_init


def _encoded_side(image_size: int) -> int:
    """The side left by 0.5x resize, stride-2 conv (k3, p1), 0.5x resize: floor at each."""
    return ((image_size // 2 - 1) // 2 + 1) // 2


class Encoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 128) -> None:
        super().__init__()
        side = _encoded_side(image_size)
        if side < 1:
            raise LrwaError(f"the VAE's encoder needs images of at least 8 pixels, got {image_size}")
        self.body = nn.Sequential(
            nn.Conv2d(channels, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2, eps=AUTHORS_BATCHNORM_EPS),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, width, 3, padding=1),
            nn.BatchNorm2d(width, eps=AUTHORS_BATCHNORM_EPS),
            nn.LeakyReLU(0.2),
        )
        self.reduce = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1),
                                    nn.BatchNorm2d(width))
        self.to_mu = nn.Linear(width * side**2, latent_dim)
        self.to_logvar = nn.Linear(width * side**2, latent_dim)
        uniform_init(self)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.body(F.normalize(images, p=2, dim=2))
        hidden = self.reduce(F.interpolate(hidden, scale_factor=0.5))
        hidden = F.interpolate(hidden, scale_factor=0.5).flatten(1)
        return self.to_mu(hidden), self.to_logvar(hidden)


class VAE(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 128) -> None:
        super().__init__()
        if latent_dim < 1:
            raise LrwaError(f"the VAE needs a latent dimension of at least 1, got {latent_dim}")
        if channels < 1:
            raise LrwaError(f"the VAE needs at least 1 input channel, got {channels}")
        if image_size < 8 or image_size % 4:
            # The decoder's two x2 upsamplings, and the encoder's three halvings.
            raise LrwaError(f"the VAE needs an image size divisible by 4 and at least 8, "
                            f"got {image_size}")
        self.latent_dim = latent_dim
        self.channels = channels
        self.image_size = image_size
        self.encoder = Encoder(latent_dim, channels, image_size, width)
        self.decoder = Generator(latent_dim, channels, image_size, width, style="pre-dfkd",
                                 spectral=False)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def reparameterise(self, mu: Tensor, logvar: Tensor, rng: torch.Generator) -> Tensor:
        """z = mu + sigma * eps, with eps from `rng` (on mu's device) so the draw is replayable."""
        noise = torch.randn(mu.shape, generator=rng, device=mu.device, dtype=mu.dtype)
        return mu + torch.exp(0.5 * logvar) * noise

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, rng: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterise(mu, logvar, rng)), mu, logvar


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over the latent, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
