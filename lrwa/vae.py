"""The variational autoencoder behind generative replay (PRE-DFKD, METHOD.md).

A small convolutional encoder maps an image to the mean and log-variance of a
Gaussian over the latent code; the decoder is the pseudo-sample `Generator`
itself (PRE-DFKD's "generator-shaped decoder"), so decoded samples land in the
same normalised input space as the fresh pseudo samples. All sampling noise
comes from a `torch.Generator` the caller passes in, never the global RNG, so
that a resumed run draws the same codes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lrwa.errors import LrwaError
from lrwa.generator import Generator


class VAE(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise LrwaError(f"the VAE needs a latent dimension of at least 1, got {latent_dim}")
        if channels < 1:
            raise LrwaError(f"the VAE needs at least 1 input channel, got {channels}")
        if image_size < 4 or image_size % 4:
            # Two stride-2 convolutions down, and the decoder's two x2 upsamplings back.
            raise LrwaError(f"the VAE needs an image size divisible by 4, got {image_size}")
        self.latent_dim = latent_dim
        self.channels = channels
        self.image_size = image_size
        reduced = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 64, 4, stride=2, padding=1),
            nn.BatchNorm2d(64),
            nn.LeakyReLU(0.2),
            nn.Conv2d(64, 128, 4, stride=2, padding=1),
            nn.BatchNorm2d(128),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_mu = nn.Linear(128 * reduced**2, latent_dim)
        self.to_logvar = nn.Linear(128 * reduced**2, latent_dim)
        self.decoder = Generator(latent_dim, channels, image_size)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.encoder(x)
        return self.to_mu(hidden), self.to_logvar(hidden)

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
