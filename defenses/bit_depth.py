"""Bit-depth reduction (Xu et al., "Feature Squeezing", NDSS 2018)."""

import torch

from robench.defense import Defense


class BitDepth(Defense):
    """Quantise each pixel to ``2**bits`` levels: ``round(x * (2**bits - 1)) / (2**bits - 1)``.

    Xu et al. 2018 recommend 5 bits on ImageNet; the transfer-attack literature often uses 3-4.
    The default 4 is robench's choice (the RDP paper does not state it). Rounding has no useful
    gradient, so attacks see the identity (BPDA / straight-through).
    """

    differentiable = False

    def __init__(self, *, bits: int = 4):
        super().__init__()
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ValueError(f"bits must be an integer in [1, 8], got {bits!r}")
        self.bits = bits

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels
