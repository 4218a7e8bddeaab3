"""Analytic class templates shared by the ``tiny`` test model and the ``synthetic`` dataset."""

from __future__ import annotations

import torch
from torch import nn

AMPLITUDE = 0.04
"""Half-width of the template pixel range around 0.5: templates lie in [0.5 - a, 0.5 + a]."""


def class_templates(num_classes: int, channels: int, size: int) -> torch.Tensor:
    """Fixed random templates ``0.5 + a * U(-1, 1)`` of shape (num_classes, channels, size, size), seed 0 (robench)."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand((num_classes, channels, size, size), generator=generator) * 2 - 1
    return 0.5 + AMPLITUDE * noise


class NearestTemplate(nn.Module):
    """Logits ``x . t_c - |t_c|^2 / 2`` as one linear layer, so the argmax is the nearest template (robench)."""

    def __init__(self, templates: torch.Tensor):
        super().__init__()
        flat = templates.flatten(1)
        self.linear = nn.Linear(flat.shape[1], flat.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(flat)
            self.linear.bias.copy_(-0.5 * flat.pow(2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))
