"""Random resizing and padding (Xie et al., "Mitigating Adversarial Effects Through Randomization", ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.defense import Defense


class RandomResizePad(Defense):
    """R&P: nearest-neighbour resize to a random ``s x s``, zero-pad at a random offset to ``pad_to``.

    Paper version (one pass): ``s`` is uniform in ``[min_size, pad_to)`` (299..330 on ImageNet),
    the image is resized to ``s x s`` by nearest neighbour (``floor(i * in / s)``, the convention
    of TF1 and ``F.interpolate(mode="nearest")``), then placed at a uniform random offset
    ``top, left in [0, pad_to - s]`` on a ``pad_to x pad_to`` canvas of zeros. Every image of a
    batch draws its own ``s``, ``top``, ``left`` (and flip) from torch's global generator, which
    the runner seeds per batch; all images are transformed at once by one gather.

    Choices and deviations:

    * Classifier input size: a defense must return the shape it was given, so with
      ``resize_back=True`` (default) the ``pad_to`` canvas is resized back to the input's
      ``H x W`` (bilinear, antialiased). In the paper the Inception backbone takes the 331 canvas
      directly; with ``resize_back=False`` the output is ``pad_to x pad_to`` as in the paper, which
      only a model that accepts that size can classify (robench's runner expects the input size).
    * ImageNet defaults (299 -> [299, 331) -> 331). For 32x32 CIFAR-10 use
      ``random-resize-pad:min_size=32,pad_to=36`` (s in 32..35, canvas 36: the paper's ratio
      331/299 ~ 1.11 rounded up). The 30-pass competition variant (s in [310, 331), random
      horizontal flip) is ``min_size=310,flip=true`` with 30 scoring draws; its softmax
      averaging over passes is not done here (the runner scores every draw).
    * ``stochastic = True`` (EOT over the random parameters) and ``differentiable = True``: for
      fixed parameters the map is a selection of pixels (plus a linear resize), so gradients flow
      to the pixels each output copies.

    Args:
        min_size: smallest resized side ``s``, an integer >= 1 (299 in the paper).
        pad_to: side of the zero-padded canvas, an integer > ``min_size`` (331 in the paper);
            ``s`` is drawn below it.
        resize_back: resize the canvas back to the input's size (default ``True``).
        flip: also flip each image horizontally with probability 1/2 (competition code; default off).
    """

    stochastic = True

    def __init__(self, *, min_size: int = 299, pad_to: int = 331, resize_back: bool = True, flip: bool = False):
        super().__init__()
        if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
            raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
        if isinstance(pad_to, bool) or not isinstance(pad_to, int) or not min_size < pad_to <= 4096:
            raise ValueError(
                f"pad_to must be an integer in ({min_size}, 4096] (the resized side is drawn in [min_size, pad_to)), got {pad_to!r}"
            )
        for name, value in (("resize_back", resize_back), ("flip", flip)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        self.min_size, self.pad_to, self.resize_back, self.flip = min_size, pad_to, resize_back, flip

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        device = x.device
        sizes = torch.randint(self.min_size, self.pad_to, (batch,), device=device)
        free = self.pad_to - sizes + 1  # offsets 0 .. pad_to - s
        tops = (torch.rand(batch, device=device) * free).long().minimum(free - 1)
        lefts = (torch.rand(batch, device=device) * free).long().minimum(free - 1)
        flips = torch.rand(batch, device=device) < 0.5 if self.flip else None
        canvas = resize_pad(x, sizes, tops, lefts, self.pad_to, flips=flips)
        if not self.resize_back or (height, width) == (self.pad_to, self.pad_to):
            return canvas
        out = F.interpolate(canvas, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp(0, 1)


def resize_pad(
    x: torch.Tensor, sizes: torch.Tensor, tops: torch.Tensor, lefts: torch.Tensor, pad_to: int,
    *, flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image ``b`` resized (nearest) to ``sizes[b]`` squared, at ``(tops[b], lefts[b])`` on a zero ``pad_to`` canvas."""
    batch, _, height, width = x.shape
    grid = torch.arange(pad_to, device=x.device)
    scale_h = height / sizes.float()  # float32 as in F.interpolate's nearest kernel
    scale_w = width / sizes.float()
    rel_r = grid[None] - tops[:, None]  # (B, P)
    rel_c = grid[None] - lefts[:, None]
    in_r = (rel_r >= 0) & (rel_r < sizes[:, None])
    in_c = (rel_c >= 0) & (rel_c < sizes[:, None])
    src_r = (rel_r.clamp(min=0).float() * scale_h[:, None]).floor().long().clamp(max=height - 1)
    src_c = (rel_c.clamp(min=0).float() * scale_w[:, None]).floor().long().clamp(max=width - 1)
    if flips is not None:
        src_c = torch.where(flips[:, None], width - 1 - src_c, src_c)
    rows = torch.arange(batch, device=x.device)[:, None, None]
    picked = x[rows, :, src_r[:, :, None], src_c[:, None, :]]  # (B, P, P, C)
    mask = (in_r[:, :, None] & in_c[:, None, :]).unsqueeze(1)
    return picked.permute(0, 3, 1, 2) * mask.to(x.dtype)
