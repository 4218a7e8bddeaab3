"""Training augmentation on whole batches, drawn from a ``torch.Generator`` so a resumed run replays it.

torchvision's transforms draw from the global RNG (and the tensor versions draw one crop for a
whole batch); kornia's per-image augmentations also use the global RNG. Neither can replay a
run from a saved generator state, so the two standard CIFAR augmentations are written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("crop-flip", "crop", "none")
# Random crop (pad 4) + flip for CIFAR; crop only for SVHN, where flipping changes digits; none for MNIST.
BY_DATASET = {"cifar10": "crop-flip", "cifar100": "crop-flip", "svhn": "crop", "mnist": "none"}
PADDING = 4


def default_augmentation(dataset: str) -> str:
    """The usual augmentation for a dataset plugin name (``none`` when robench knows no convention)."""
    return BY_DATASET.get(dataset, "none")


def random_crop(x: torch.Tensor, generator: torch.Generator, padding: int = PADDING) -> torch.Tensor:
    """Crop each zero-padded image of ``x`` (B, C, H, W) back to H x W at its own random offset (He et al. 2016)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * padding)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of ``x`` (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Apply augmentation ``kind`` (one of :data:`AUGMENTATIONS`) to a batch in [0, 1]."""
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if kind == "none":
        return x
    x = random_crop(x, generator)
    return random_flip(x, generator) if kind == "crop-flip" else x
