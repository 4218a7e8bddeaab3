"""RDP's networks (Bai et al., "Adversarial Purification through Representation Disentanglement"):
the purification branch P and the reconstruction branch R of specs A2 (its discriminator D is
:class:`robench.train.gan.Discriminator`).

No official code exists, so every size below the paper's description is a documented option:
P and R are "a convolutional layer and multiple basic blocks" adopted from EDVR/DeblurGAN with
the global skip removed (as in NRP); the basic block is EDVR's BN-free residual block
conv3x3-ReLU-conv3x3 + identity, the very block of NRP_resG (Kaiming init scaled by 0.1).
"""

from __future__ import annotations

import torch
from torch import nn

from robench.defenses.nrp.networks import ResidualBlockNoBN  # EDVR's BN-free block, the same as NRP_resG's


def _blocks(width: int, count: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlockNoBN(width) for _ in range(count)))


class Encoder(nn.Module):
    """conv3x3(channels -> width) followed by ``blocks`` residual blocks; keeps the spatial size."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        self.head = nn.Conv2d(channels, width, 3, padding=1)
        self.body = _blocks(width, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(x))


class Decoder(nn.Module):
    """``blocks`` residual blocks followed by conv3x3(width -> channels); no skip from the image."""

    def __init__(self, channels: int, width: int, blocks: int):
        super().__init__()
        self.body = _blocks(width, blocks)
        self.tail = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(latent))


class PurifierNet(nn.Module):
    """RDP's purification branch P: encoder -> latent ``V`` -> decoder, fully convolutional (specs A2)."""

    def __init__(self, *, width: int = 64, blocks: int = 8, channels: int = 3):
        super().__init__()
        self.encoder = Encoder(channels, width, blocks)
        self.decoder = Decoder(channels, width, blocks)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """P_enc(x): the latent that Eq. 4 compares and R receives."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class ReconstructionNet(nn.Module):
    """RDP's reconstruction branch R: re-creates ``x'`` from its own latent and P's (Eq. 7-9, specs A2).

    R's decoder input is concat(P_enc(x'), R_enc(x')) mapped back to ``width`` channels by a 1x1
    convolution (a choice of specs A2).
    """

    def __init__(self, *, width: int = 64, blocks: int = 8, channels: int = 3):
        super().__init__()
        self.encoder = Encoder(channels, width, blocks)
        self.fuse = nn.Conv2d(2 * width, width, 1)
        self.decoder = Decoder(channels, width, blocks)

    def forward(self, x_adv: torch.Tensor, purifier_latent: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([purifier_latent, self.encoder(x_adv)], dim=1))
        return self.decoder(fused)
