"""APE-GAN's generator and discriminator, the official TF1 variant (Shen et al. 2017 / Jin et al. 2019; specs A5).

The official code (``shenqixiaojiang/APE-GAN``, on DCGAN-tensorflow) uses 5x5 kernels of stride 2
with TF's ``SAME`` padding, which pads one pixel before and two after an even side; PyTorch's
symmetric ``padding=2`` would shift every feature map by half a pixel, so both directions are
padded (convolution) or cropped (transposed convolution) as TF does. Weights are initialised from
N(0, 0.02) as DCGAN's ``conv2d`` / ``deconv2d`` / ``linear`` ops; biases start at zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KERNEL = 5
STRIDE = 2


def same_padding(size: int) -> tuple[int, int]:
    """TF's ``SAME`` padding (before, after) of one side for a 5x5, stride-2 convolution."""
    out = -(-size // STRIDE)
    total = max((out - 1) * STRIDE + KERNEL - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """A 5x5 stride-2 convolution padded as TF's ``SAME``: output side ``ceil(side / 2)``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, KERNEL, stride=STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2])
        left, right = same_padding(x.shape[-1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


class SameDeconv(nn.ConvTranspose2d):
    """TF's ``conv2d_transpose`` with ``SAME`` padding to twice the side: the transpose of :class:`SameConv`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, KERNEL, stride=STRIDE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = 2 * x.shape[-2], 2 * x.shape[-1]
        (top, _), (left, _) = same_padding(h), same_padding(w)
        return super().forward(x)[..., top : top + h, left : left + w]


def dcgan_init(module: nn.Module) -> None:
    """DCGAN-tensorflow's initialisation: weights N(0, 0.02), biases 0, batch norm scale 1."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """TF ``batch_norm`` of DCGAN's ops: epsilon 1e-5, moving-average decay 0.9 (PyTorch momentum 0.1)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)


class Generator(nn.Module):
    """G: conv(64) BN LReLU, conv(128) BN LReLU, deconv(64) BN ReLU, deconv(C) tanh; [-1, 1] in and out.

    Sides must be multiples of 4 (28 for MNIST, 32 for CIFAR-10, the two sizes the official code
    builds); the output has the input's shape.
    """

    def __init__(self, *, channels: int = 3, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            SameConv(channels, width), batch_norm(width), nn.LeakyReLU(0.2),
            SameConv(width, 2 * width), batch_norm(2 * width), nn.LeakyReLU(0.2),
            SameDeconv(2 * width, width), batch_norm(width), nn.ReLU(),
            SameDeconv(width, channels), nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % 4 or x.shape[-1] % 4:
            raise ValueError(f"APE-GAN's generator takes sides that are multiples of 4 (28, 32), got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        return self.net(x)


class Discriminator(nn.Module):
    """D: conv(64) LReLU, conv(128) BN LReLU, conv(256) BN LReLU, linear(1); returns the logit (sigmoid in the loss)."""

    def __init__(self, *, channels: int = 3, width: int = 64, side: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            SameConv(channels, width), nn.LeakyReLU(0.2),
            SameConv(width, 2 * width), batch_norm(2 * width), nn.LeakyReLU(0.2),
            SameConv(2 * width, 4 * width), batch_norm(4 * width), nn.LeakyReLU(0.2),
        )
        for _ in range(3):
            side = -(-side // STRIDE)  # each SAME convolution: ceil(side / 2)
        self.score = nn.Linear(4 * width * side * side, 1)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x).flatten(1)).squeeze(1)
