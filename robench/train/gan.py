"""The adversarial part of a purifier's training: a VGG-style discriminator and the relativistic
average GAN losses (Jolicoeur-Martineau 2019) that ESRGAN, NRP and RDP use."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """VGG-style discriminator: five conv stages and one fully connected layer (RDP / NRP, specs A2, A4).

    Each stage is conv3x3 + LeakyReLU(0.2) + conv3x3 (stride 2) + BatchNorm + LeakyReLU(0.2),
    widths ``width * (1, 2, 4, 8, 8)``, batch norm after every convolution but the first, as
    ESRGAN's VGG-style discriminator; without it D's scores grow without bound and, through Adam,
    even a tiny-weighted GAN term takes over the purifier's updates. A global average pool makes
    it accept any input size; the FC layer gives one unnormalised score per image.
    """

    def __init__(self, *, width: int = 64, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        previous = channels
        for stage, factor in enumerate((1, 2, 4, 8, 8)):
            current = width * factor
            first = [nn.Conv2d(previous, current, 3, padding=1)] + ([nn.BatchNorm2d(current)] if stage else [])
            layers += [*first, nn.LeakyReLU(0.2),
                       nn.Conv2d(current, current, 3, stride=2, padding=1), nn.BatchNorm2d(current), nn.LeakyReLU(0.2)]
            previous = current
        self.features = nn.Sequential(*layers)
        self.score = nn.Linear(previous, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x).mean(dim=(2, 3))).squeeze(1)


def relativistic(winner: torch.Tensor, loser: torch.Tensor) -> torch.Tensor:
    """``-log sigmoid(winner - loser)`` averaged over the pairs: low when ``winner`` scores above ``loser``."""
    return F.softplus(loser - winner).mean()


def generator_loss(discriminator: Discriminator, clean: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
    """The purifier's GAN term ``-log sigmoid(D(P(x')) - D(x))`` (RDP Eq. 5), per pair; D's clean score is a constant."""
    with torch.no_grad():
        clean_score = discriminator(clean)
    return relativistic(winner=discriminator(purified), loser=clean_score)


def discriminator_loss(discriminator: Discriminator, clean: torch.Tensor, purified: torch.Tensor) -> torch.Tensor:
    """D's relativistic loss ``-log sigmoid(D(x) - D(P(x')))``: the clean image should score above the purified."""
    return relativistic(winner=discriminator(clean), loser=discriminator(purified.detach()))
