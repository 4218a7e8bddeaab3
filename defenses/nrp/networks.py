"""NRP's generators (Naseer et al., "A Self-supervised Approach for Adversarial Robustness", CVPR 2020).

Module and parameter names follow the released ``networks.py`` (``Muzammal-Naseer/NRP``), so the
authors' ``NRP.pth`` and ``NRP_resG.pth`` state dicts load key for key (specs A4).
"""

from __future__ import annotations

import torch
from torch import nn

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling inside and around every dense block
INIT_SCALE = 0.1  # BasicSR's initialisation of BN-free residual blocks: Kaiming normal scaled by 0.1


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions (growth ``gc``), LeakyReLU 0.2, output scaled by 0.2 plus the input."""

    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        return self.conv5(torch.cat(features, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, output scaled by 0.2 plus the input."""

    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * RESIDUAL_SCALE + x


class RRDBGenerator(nn.Module):
    """NRP: conv3x3(3 -> nf), ``nb`` RRDBs, conv3x3(nf -> 3); no global skip, no upsampling (16.55 M at 64/23/32)."""

    def __init__(self, *, nf: int = 64, nb: int = 23, gc: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.trunk_conv = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_conv(self.RRDB_trunk(self.conv_first(x)))


class ResidualBlockNoBN(nn.Module):
    """``x + conv2(relu(conv1(x)))``, BN-free, initialised as BasicSR's (Kaiming normal x 0.1, zero bias)."""

    def __init__(self, nf: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf, nf, 3, 1, 1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_in")
            conv.weight.data.mul_(INIT_SCALE)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


class ResGenerator(nn.Module):
    """NRP_resG: conv3x3(3 -> nf) + LeakyReLU 0.1, ``nb`` BN-free residual blocks, conv3x3(nf -> 3); no global skip."""

    def __init__(self, *, nf: int = 64, nb: int = 23):
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.recon_trunk = nn.Sequential(*(ResidualBlockNoBN(nf) for _ in range(nb)))
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.recon_trunk(self.lrelu(self.conv_first(x))))
