"""ComDefend's two networks (Jia et al., CVPR 2019; specs A7) and the official script's 32x32 tiling.

ComCNN and RecCNN are each nine 3x3 convolutions (stride 1, padding 1, bias) with ELU between
them; the channel lists are those of the official scripts, with the image and code channels
free so that the Fashion-MNIST release (1 input channel, 4-channel code) fits too.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robench.checkpoint import CheckpointError

# specs A7 (compression_imagenet.py, Train_comdefend_Torch.py): image 3 -> code 12 -> image 3
ENCODER_CHANNELS = (3, 16, 32, 64, 128, 256, 128, 64, 32, 12)
DECODER_CHANNELS = (12, 32, 64, 128, 256, 128, 64, 32, 16, 3)
LAYERS = len(ENCODER_CHANNELS) - 1


def encoder_channels(in_channels: int, code_channels: int) -> tuple[int, ...]:
    """ComCNN's channel list of specs A7 for ``in_channels`` image channels and a ``code_channels`` code."""
    return (in_channels, *ENCODER_CHANNELS[1:-1], code_channels)


def decoder_channels(in_channels: int, code_channels: int) -> tuple[int, ...]:
    """RecCNN's channel list of specs A7, from the code back to ``in_channels`` image channels."""
    return (code_channels, *DECODER_CHANNELS[1:-1], in_channels)


class ConvStack(nn.Module):
    """3x3 convolutions through ``channels`` (padding 1, bias), ELU after every one but the last."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.channels = tuple(channels)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        *hidden, last = self.convs
        for conv in hidden:
            x = F.elu(conv(x))
        return last(x)


class ComCNN(ConvStack):
    """The compression network: image in [0, 1] -> linear code (before noise and sigmoid); input shifted by -0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x - 0.5)


class RecCNN(ConvStack):
    """The reconstruction network: (binary) code -> image in [0, 1] through a final sigmoid."""

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(code))


def stack_channels(state: dict, source: str) -> tuple[int, ...]:
    """The channel list of a :class:`ConvStack` state dict (keys ``convs.<i>.weight``), read from its shapes."""
    kernels = [state.get(f"convs.{i}.weight") for i in range(LAYERS)]
    if any(not isinstance(k, torch.Tensor) or k.dim() != 4 for k in kernels):
        raise CheckpointError(f"{source} lacks ComDefend's {LAYERS} convolution kernels convs.0.weight ... "
                         f"convs.{LAYERS - 1}.weight")
    return (kernels[0].shape[1], *(k.shape[0] for k in kernels))


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int) -> torch.Tensor:
    """``fn`` applied to every ``tile`` x ``tile`` tile of ``x`` (B, C, H, W) independently, re-assembled.

    The official ImageNet script cuts 224x224 images into 7x7 tiles of 32x32. When a side is not
    a multiple of ``tile``, the remainder (e.g. 11 pixels of 299) forms a last row / column of
    smaller tiles. Tiles of one shape run as one batch.
    """
    h, w = x.shape[-2:]
    rows = [(0, h - h % tile, tile), (h - h % tile, h, h % tile)]
    cols = [(0, w - w % tile, tile), (w - w % tile, w, w % tile)]
    bands = []
    for top, bottom, th in rows:
        if bottom > top:
            pieces = [_per_tile(fn, x[..., top:bottom, left:right], th, tw) for left, right, tw in cols if right > left]
            bands.append(torch.cat(pieces, dim=-1))
    return torch.cat(bands, dim=-2)


def _per_tile(fn, part: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    b, c, h, w = part.shape
    nh, nw = h // th, w // tw
    tiles = part.reshape(b, c, nh, th, nw, tw).permute(0, 2, 4, 1, 3, 5).reshape(b * nh * nw, c, th, tw)
    out = fn(tiles)
    return out.reshape(b, nh, nw, out.shape[1], th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, out.shape[1], h, w)
