"""EDSR (Lim et al., "Enhanced Deep Residual Networks for Single Image Super-Resolution", CVPRW 2017), x2.

Module names follow EDSR-PyTorch's ``src/model/edsr.py`` and ``common.py`` so its released state
dicts load key for key: ``sub_mean.*``, ``head.0.*``, ``body.N.body.{0,2}.*`` (N < n_resblocks),
``body.<n_resblocks>.*`` (the body's last conv), ``tail.0.0.*`` (the x2 upsampler's conv, before
a pixel shuffle), ``tail.1.*``, ``add_mean.*``. Inputs and outputs are in [0, 255] (``rgb_range``
255), as in EDSR-PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SCALE = 2
RGB_RANGE = 255.0
DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # EDSR-PyTorch's MeanShift default: DIV2K's RGB mean in [0, 1]
BASELINE = {"n_resblocks": 16, "n_feats": 64, "res_scale": 1.0}  # EDSR baseline (r16f64)
PAPER = {"n_resblocks": 32, "n_feats": 256, "res_scale": 0.1}  # the paper's EDSR (r32f256)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


class MeanShift(nn.Module):
    """Adds ``sign * rgb_range * DIV2K_MEAN`` per channel: a fixed 1x1 convolution (buffers ``weight``, ``bias``)."""

    def __init__(self, sign: int):
        super().__init__()
        self.register_buffer("weight", torch.eye(3).view(3, 3, 1, 1))
        self.register_buffer("bias", sign * RGB_RANGE * torch.tensor(DIV2K_MEAN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias)


class ResBlock(nn.Module):
    """conv-ReLU-conv, scaled by ``res_scale`` and added to the input (no batch norm; EDSR Fig. 2)."""

    def __init__(self, n_feats: int, res_scale: float):
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats), nn.ReLU(), _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x)


class EDSR(nn.Module):
    """EDSR x2 on RGB images in [0, 255]: (B, 3, H, W) -> (B, 3, 2H, 2W).

    Args:
        n_resblocks: residual blocks (16 for EDSR baseline, 32 for the paper's EDSR).
        n_feats: feature channels (64 baseline, 256 paper).
        res_scale: residual scaling (1 baseline, 0.1 paper).
    """

    def __init__(self, *, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.sub_mean, self.add_mean = MeanShift(-1), MeanShift(+1)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body = nn.Sequential(*(ResBlock(n_feats, res_scale) for _ in range(n_resblocks)), _conv(n_feats, n_feats))
        upsampler = nn.Sequential(_conv(n_feats, SCALE * SCALE * n_feats), nn.PixelShuffle(SCALE))
        self.tail = nn.Sequential(upsampler, _conv(n_feats, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.sub_mean(x))
        return self.add_mean(self.tail(features + self.body(features)))
