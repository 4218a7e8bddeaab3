"""Pixel clamping: an example third-party defense for robench."""

import torch

from robench.defense import Defense


class MyDefense(Defense):
    """Clamp every pixel to ``[low, high]`` (default ``[0.1, 0.9]``); deterministic and differentiable."""

    version = "1"

    def __init__(self, *, low: float = 0.1, high: float = 0.9):
        super().__init__()
        if not 0 <= low < high <= 1:
            raise ValueError(f"need 0 <= low < high <= 1, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.low, self.high)
