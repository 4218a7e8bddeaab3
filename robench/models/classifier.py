"""The wrapper every model factory returns: images in [0, 1] in, logits out, preprocessing inside."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F


class Classifier(nn.Module):
    """A classifier on images in [0, 1]: resizes and normalises inside, declares its input shape and classes.

    Args:
        net: the network, fed resized and normalised images.
        num_classes: number of logits.
        input_shape: ``(C, H, W)`` of the images the classifier accepts (the resolver checks it
            against the dataset before anything runs).
        mean, std: per-channel normalisation applied before ``net`` (None: none).
        resize_to: ``(H, W)`` that ``net`` is fed when it differs from the accepted size; the
            resize is bilinear and antialiased, so gradients flow through it (None: no resize).
        checkpoints: checkpoint name -> sha256 of every weight file loaded (enters cache keys).
        card: the model card (JSON) found next to the checkpoint, or None.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        resize_to: Sequence[int] | None = None,
        checkpoints: dict[str, str] | None = None,
        card: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.checkpoints = dict(checkpoints or {})
        self.card = card
        size = None if resize_to is None else tuple(int(s) for s in resize_to)
        self.resize_to = None if size == self.input_shape[1:] else size
        channels = self.input_shape[0]
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.normalised = mean is not None
        mean_t = torch.tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{type(self.net).__name__} expects inputs shaped (B, {', '.join(map(str, self.input_shape))}); "
                f"got {tuple(x.shape)}"
            )
        if self.resize_to is not None:
            x = F.interpolate(x, size=self.resize_to, mode="bilinear", align_corners=False, antialias=True)
        if self.normalised:
            x = (x - self.mean) / self.std
        return self.net(x)
