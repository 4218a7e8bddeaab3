"""CIFAR WideResNet (Zagoruyko & Komodakis 2016) in the key layout of the TRADES and MART repositories.

Written by hand because no library ships it with the key names that TRADES / MART / RobustBench
checkpoints use (``conv1``, ``blockN.layer.M.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class WideBlock(nn.Module):
    """Pre-activation basic block; when the width changes, the 1x1 ``convShortcut`` sees the activated input."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.convShortcut: nn.Module | None = None
        if in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class WideStage(nn.Module):
    """``n`` WideBlocks held as ``layer`` (TRADES's ``NetworkBlock``)."""

    def __init__(self, count: int, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *(WideBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1) for i in range(count))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-width: 3x3 stem at 16, three stages at 16k/32k/64k, BN-ReLU, global average pool, ``fc``.

    ``sub_block1`` adds the unused first-stage copy that the TRADES and MART repositories build,
    so their checkpoints load; it never enters the forward pass.
    """

    def __init__(self, depth: int = 34, width: int = 10, num_classes: int = 10, sub_block1: bool = False):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (e.g. 28, 34), got {depth}")
        count = (depth - 4) // 6
        channels = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = nn.Conv2d(3, channels[0], 3, stride=1, padding=1, bias=False)
        self.block1 = WideStage(count, channels[0], channels[1], 1)
        if sub_block1:
            self.sub_block1 = WideStage(count, channels[0], channels[1], 1)
        self.block2 = WideStage(count, channels[1], channels[2], 2)
        self.block3 = WideStage(count, channels[2], channels[3], 2)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        for module in self.modules():  # He init of the conv layers, as the reference code does
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def wrn_34_10(num_classes: int = 10, sub_block1: bool = False) -> WideResNet:
    """WideResNet-34-10 (Zagoruyko & Komodakis 2016) as trained by TRADES and MART, 46,160,474 parameters for 10 classes."""
    return WideResNet(34, 10, num_classes, sub_block1)
