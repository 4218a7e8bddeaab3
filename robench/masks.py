"""Defenses whose randomness is a mask (ME-Net, DIR): draw masks, or purify with given masks.

Mask-aware attacks (DIR's mask-adaptive attack, Eq. 8) fix the masks a defense will use and
attack that deterministic function; everything else sees an ordinary stochastic defense.
"""

from __future__ import annotations

import torch
from torch import nn

from robench.defense import BPDA, Defense, check_images


class MaskedDefense(Defense):
    """A stochastic defense whose only randomness is a mask drawn by :meth:`sample_masks`.

    Subclasses implement :meth:`sample_masks` (masks for a batch; any tensor whose first
    dimension is the batch) and :meth:`purify_with_masks`; :meth:`purify` draws fresh masks.
    """

    stochastic = True

    def sample_masks(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def purify_with_masks(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.purify_with_masks(x, self.sample_masks(x))


class FixedMasks(Defense):
    """A masked defense with its masks fixed: a deterministic defense for mask-aware attacks.

    ``masks`` belong to the batch the view is called with (same order and size).
    """

    def __init__(self, defense: MaskedDefense, masks: torch.Tensor):
        super().__init__()
        self.defense = defense
        self.masks = masks
        self.differentiable = defense.differentiable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x, who=type(self.defense).__name__)
        if len(x) != len(self.masks):
            raise ValueError(f"{len(self.masks)} fixed masks for a batch of {len(x)} images")
        return self.defense.purify_with_masks(x, self.masks)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense.surrogate(x)


def fixed_mask_view(defense: MaskedDefense, masks: torch.Tensor) -> nn.Module:
    """The defense with fixed masks as attacks differentiate it (BPDA when not differentiable)."""
    view = FixedMasks(defense, masks)
    return view if view.differentiable else BPDA(view)
