"""CIFAR pre-activation ResNet-18 (He et al. 2016, identity mappings) in the key layout of the CIFAR AT codebases.

Written by hand because no library ships the CIFAR variant (3x3 stem, no max-pool) with the
key names that checkpoints of Rice et al. 2020 / fast_adversarial and RobustBench's
``PreActResNet18`` use (``conv1``, ``layerN.M.{bn1,conv1,bn2,conv2,shortcut.0}``, ``bn``, ``linear``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PreActBlock(nn.Module):
    """BN-ReLU-conv twice; a projecting shortcut takes the shared pre-activation (He et al. 2016, Fig. 4e)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """3x3 stem, four stages at 64/128/256/512 channels, final BN-ReLU, global average pool, ``linear``."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        in_planes = 64
        for index, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
            stride = 1 if index == 1 else 2
            layers = []
            for block in range(count):
                layers.append(PreActBlock(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def preact_resnet18(num_classes: int = 10) -> PreActResNet:
    """Pre-activation ResNet-18 for 32x32 inputs (He et al. 2016, identity mappings), 11,172,170 parameters for 10 classes."""
    return PreActResNet((2, 2, 2, 2), num_classes)
