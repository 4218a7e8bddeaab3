"""HGD's denoising U-Net, DUNET (Liao et al., "Defense against Adversarial Attacks Using High-Level
Representation Guided Denoiser", CVPR 2018; specs A3).

Module and parameter names follow the released ``Denoise`` class (``lfz/Guided-Denoise``,
``Exps/sample/inception.py``: ``fwd``, ``back``, ``upsample``, ``final``, blocks of ``conv``/``bn``),
so a released denoiser's tensors load key for key once their prefix is removed (see
:mod:`robench.defenses.hgd.defense`). The module is reusable on its own: any denoiser built on
HGD's architecture (e.g. JATP, specs A6) takes it with its input size and width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

FORWARD_BLOCKS = (2, 3, 3, 3, 3)  # the sample config's num_fwd
BACKWARD_BLOCKS = (2, 3, 3, 3)  # num_back
FORWARD_WIDTHS = (1, 2, 4, 4, 4)  # fwd_out = [64, 128, 256, 256, 256] at width 64
BACKWARD_WIDTHS = (1, 2, 4, 4)  # back_out = [64, 128, 256, 256]


class Conv(nn.Module):
    """HGD's block: 3x3 convolution (no bias, optional stride) -> BatchNorm -> ReLU."""

    def __init__(self, n_in: int, n_out: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(n_in, n_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(n_out)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def stage_sizes(input_size: int, stages: int = len(FORWARD_BLOCKS)) -> list[int]:
    """Spatial side of every forward stage: ceil-halving from the input (299, 150, 75, 38, 19; 32, 16, 8, 4, 2)."""
    sizes = [input_size]
    for _ in range(stages - 1):
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


class DUNET(nn.Module):
    """HGD's denoiser: ``x + correction(x)`` for square images of side ``input_size`` (11.0 M parameters at width 64).

    Forward path: five stages of :class:`Conv` blocks ([2, 3, 3, 3, 3]; widths ``width`` x [1, 2, 4, 4, 4]),
    the first block of stages 2-5 with stride 2. Backward path: four stages ([2, 3, 3, 3]; widths
    ``width`` x [1, 2, 4, 4]), each a bilinear upsampling to the matching forward stage's size,
    concatenated with that stage's output, then the blocks; the deepest one starts from the last
    two forward stages. A final 1x1 convolution (no bias) predicts the correction, added to the input.

    The upsampling layers have fixed output sizes derived from ``input_size`` (as the released
    ``nn.Upsample(size=...)``), so a DUNET takes only images of that side. They align corners:
    the released weights were trained with PyTorch < 0.4, whose bilinear upsampling did (PyTorch's
    default has not since 0.4).

    Args:
        input_size: side of the square input images (299 for ImageNet, 32 for CIFAR-10).
        width: channels of the first stage (64, the paper's); every stage scales with it.
        channels: image channels (3).
    """

    def __init__(self, *, input_size: int = 299, width: int = 64, channels: int = 3):
        super().__init__()
        for name, value in (("input_size", input_size), ("width", width), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DUNET's {name} must be a positive integer, got {value!r}")
        self.input_size = input_size
        sizes = stage_sizes(input_size)
        fwd_out = [width * k for k in FORWARD_WIDTHS]
        back_out = [width * k for k in BACKWARD_WIDTHS]
        fwd, n_in = [], channels
        for i, (blocks, n_out) in enumerate(zip(FORWARD_BLOCKS, fwd_out)):
            first = Conv(n_in, n_out, stride=1 if i == 0 else 2)
            fwd.append(nn.Sequential(first, *(Conv(n_out, n_out) for _ in range(blocks - 1))))
            n_in = n_out
        self.fwd = nn.ModuleList(fwd)
        upsample, back = [], []
        n_in = fwd_out[-2] + fwd_out[-1]
        for i in reversed(range(len(BACKWARD_BLOCKS))):
            upsample.insert(0, nn.Upsample(size=(sizes[i], sizes[i]), mode="bilinear", align_corners=True))
            n_out = back_out[i]
            back.insert(0, nn.Sequential(Conv(n_in, n_out), *(Conv(n_out, n_out) for _ in range(BACKWARD_BLOCKS[i] - 1))))
            if i:
                n_in = n_out + fwd_out[i - 1]
        self.upsample = nn.ModuleList(upsample)
        self.back = nn.ModuleList(back)
        self.final = nn.Conv2d(back_out[0], channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x`` (B, C, input_size, input_size) in the scale it was trained on: ``x + correction(x)``."""
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            raise ValueError(f"this DUNET was built for {self.input_size}x{self.input_size} images, got "
                             f"{x.shape[-2]}x{x.shape[-1]}; build it with input_size={x.shape[-1]} "
                             "(its upsampling sizes are fixed at construction)")
        out, laterals = x, []
        for stage in self.fwd:
            out = stage(out)
            laterals.append(out)
        for i in reversed(range(len(self.back))):
            out = self.back[i](torch.cat((self.upsample[i](out), laterals[i]), 1))
        return x + self.final(out)
