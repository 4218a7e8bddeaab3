"""Feature Distillation (Liu et al., "Feature Distillation: DNN-Oriented JPEG Compression Against Adversarial Examples", CVPR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robench.defense import Defense

BLOCK = 8


def dct_matrix(n: int = BLOCK, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``n x n``): ``D @ v`` is ``scipy.fft.dct(v, norm="ortho")``."""
    k = torch.arange(n, dtype=dtype, device=device)[:, None]
    i = torch.arange(n, dtype=dtype, device=device)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    matrix[0] = math.sqrt(1 / n)
    return matrix


class FeatureDistillation(Defense):
    """DNN-oriented JPEG of Liu et al. 2019: quantise each channel's 8x8 block DCT and invert it.

    Recipe of the released code (``utils/feature_distillation.py`` of
    zihaoliu123/Feature-Distillation-DNN-Oriented-JPEG-Compression-Against-Adversarial-Examples):
    pixels scaled to [0, 255]; each channel on its own (RGB, no YCbCr conversion, no -128 level
    shift); orthonormal 2-D DCT of every 8x8 block; ``round(c / q) * q`` with ``q = low_q`` (25)
    on the top-left ``low_size x low_size`` (4x4) coefficients and ``q = high_q`` (30) elsewhere;
    inverse DCT; back to [0, 1]; clipped to [0, 1]. No entropy coding (it is lossless) and no
    8-bit rounding of the output, as in the released code.

    Choices and deviations:

    * The released loop starts at batch index 1, so the first image of every batch comes back
      all zeros. That is a bug; here every image is purified.
    * The released code needs sides that are multiples of 8. Other sizes (299 on ImageNet) are
      padded on the bottom and right by *replicating* the edge pixels, then cropped back, so no
      artificial zero edge adds ringing to the border blocks.
    * All blocks of the batch are transformed at once as two matrix products, in float64 (float32
      on devices without float64) so that rounding ties agree with a float64 reference.
    * Rounding has zero gradient almost everywhere: ``differentiable = False``, attacks see the
      identity (BPDA), as in the DIR/RDP evaluations.

    Args:
        low_q: quantisation step of the low-frequency coefficients (> 0; 25 in the paper).
        high_q: quantisation step of the other coefficients (> 0; 30 in the paper).
        low_size: side of the top-left low-frequency square (1..8; 4 in the paper).
    """

    differentiable = False

    def __init__(self, *, low_q: float = 25, high_q: float = 30, low_size: int = 4):
        super().__init__()
        for name, value in (("low_q", low_q), ("high_q", high_q)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a positive number (a quantisation step in 0-255 units), got {value!r}")
        if isinstance(low_size, bool) or not isinstance(low_size, int) or not 0 <= low_size <= BLOCK:
            raise ValueError(f"low_size must be an integer in [0, {BLOCK}], got {low_size!r}")
        self.low_q, self.high_q, self.low_size = float(low_q), float(high_q), low_size

    def quantisation_table(self, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """The 8x8 table of quantisation steps (``low_q`` top-left, ``high_q`` elsewhere)."""
        table = torch.full((BLOCK, BLOCK), self.high_q, dtype=dtype, device=device)
        table[: self.low_size, : self.low_size] = self.low_q
        return table

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        dtype = torch.float32 if x.device.type == "mps" else torch.float64
        pad_h, pad_w = -height % BLOCK, -width % BLOCK
        pixels = x.detach().to(dtype) * 255
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
        rows, cols = pixels.shape[-2] // BLOCK, pixels.shape[-1] // BLOCK
        blocks = pixels.reshape(batch, channels, rows, BLOCK, cols, BLOCK).transpose(3, 4)
        dct = dct_matrix(dtype=dtype, device=x.device)
        table = self.quantisation_table(dtype=dtype, device=x.device)
        coefficients = dct @ blocks @ dct.T
        coefficients = torch.round(coefficients / table) * table
        blocks = dct.T @ coefficients @ dct
        pixels = blocks.transpose(3, 4).reshape(batch, channels, rows * BLOCK, cols * BLOCK)
        out = (pixels[..., :height, :width] / 255).clamp(0, 1)
        return out.to(x.dtype).contiguous()
