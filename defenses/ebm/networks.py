"""The convergent EBM's energy network (Nijkamp et al. 2020, as used by Hill et al. 2021; specs A15)."""

from __future__ import annotations

import torch
from torch import nn


class EnergyNet(nn.Module):
    """``U(x)``: conv3x3(32) and three stride-2 conv4x4 (64, 128, 256), LeakyReLU 0.05, conv4x4 to one energy.

    Takes 32x32 images in [-1, 1] and returns one scalar energy per image, shape (B,). The
    submodule is named ``f`` as in ``point0bar1/ebm-defense``'s ``nets.EBM``, so its released
    ``ebm.pth`` loads key for key. ``width`` is ``n_f`` (32; 693,569 parameters).
    """

    def __init__(self, *, channels: int = 3, width: int = 32, leak: float = 0.05):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(channels, width, 3, 1, 1), nn.LeakyReLU(leak),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(leak),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.LeakyReLU(leak),
            nn.Conv2d(4 * width, 8 * width, 4, 2, 1), nn.LeakyReLU(leak),
            nn.Conv2d(8 * width, 1, 4, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"the EBM takes 32x32 images, got {x.shape[-2]}x{x.shape[-1]}")
        return self.f(x).flatten()


def langevin(energy: nn.Module, x: torch.Tensor, *, steps: int, noise: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``steps`` Langevin updates ``x <- x - grad U(x) + noise * N(0, I)`` (Hill et al. 2021, ebm-defense's ``purify``).

    The step size is absorbed into the energy, as in the released code (and its training loss,
    scaled by ``2 / noise**2``). ``x`` in [-1, 1] units; no clamping between steps. Every chain
    of the batch runs at once; gradients flow to ``x`` only. Returns the last state, detached.
    """
    x = x.detach()
    with torch.enable_grad():
        for _ in range(steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(energy(x).sum(), x)
            draw = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = (x - grad + noise * draw).detach()
    return x
