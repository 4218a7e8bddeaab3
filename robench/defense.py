"""The Defense base class and the core-built BPDA view (Athalye et al., ICML 2018)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class DefenseInputError(ValueError):
    """A defense was given something other than a float image batch in [0, 1]."""


class Defense(nn.Module):
    """A purifier ``x -> x_purified``: same shape, values in [0, 1].

    Subclasses implement :meth:`purify` and declare what they are:

    * ``stochastic``: the output differs between two calls on the same input (EOT applies);
    * ``differentiable``: ``False`` makes attacks see the gradient of :meth:`surrogate` (BPDA);
    * ``version``: bump when outputs change, so cached results are recomputed;
    * ``needs_training``: a learned defense, meaningless without trained weights (``weights=``);
    * ``trainer``: how ``robench train NAME`` trains it: a
      :class:`~robench.train.trainer.DefenseTrainer` subclass, or its import path
      ``"module:Class"`` (so listing plugins imports no training code).
    """

    stochastic: bool = False
    differentiable: bool = True
    version: str = "1"
    needs_training: bool = False
    trainer: "type | str | None" = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Purify a batch ``(B, C, H, W)`` of images in [0, 1]."""
        check_images(x, who=type(self).__name__)
        return self.purify(x)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable approximation used for gradients when ``differentiable`` is False (identity)."""
        return x

    @property
    def checkpoints(self) -> dict[str, str]:
        """Checkpoint name -> sha256 for every weight file this defense loaded (its ``_checkpoints``; none by default)."""
        return dict(getattr(self, "_checkpoints", {}))


def check_images(x: torch.Tensor, *, who: str) -> None:
    """Raise :class:`DefenseInputError` unless ``x`` is a float batch ``(B, C, H, W)`` in [0, 1]."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DefenseInputError(f"{who} expects a batch of images shaped (B, C, H, W); got {shape}")
    if not x.is_floating_point():
        raise DefenseInputError(f"{who} expects float images in [0, 1]; got dtype {x.dtype} (divide uint8 by 255)")
    if torch.isnan(x).any():
        raise DefenseInputError(f"{who} got NaN pixels; images must be finite values in [0, 1]")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise DefenseInputError(
            f"{who} expects pixel values in [0, 1]; got [{x.min().item():.3g}, {x.max().item():.3g}] "
            "(normalisation belongs inside the model, not before the defense)"
        )


class _StraightThrough(torch.autograd.Function):
    """Forward the real defense's output, backward through the surrogate's graph."""

    @staticmethod
    def forward(ctx, approx: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return real

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class BPDA(nn.Module):
    """BPDA view of a defense: the real defense's value, the surrogate's gradient (Athalye et al. 2018)."""

    def __init__(self, defense: Defense):
        super().__init__()
        self.defense = defense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real = self.defense(x.detach())
        approx = self.defense.surrogate(x)
        if approx.shape != real.shape:
            raise RuntimeError(
                f"{type(self.defense).__name__}.surrogate returns shape {tuple(approx.shape)}, "
                f"the defense returns {tuple(real.shape)}; they must match for BPDA"
            )
        return _StraightThrough.apply(approx, real)


def gradient_view(defense: Defense) -> nn.Module:
    """The defense as attacks should differentiate it: itself, or its BPDA view when non-differentiable."""
    return defense if defense.differentiable else BPDA(defense)


@contextmanager
def seeded_init(owner: str, init_seed) -> Iterator[None]:
    """Build a learned defense's fresh networks from ``init_seed``, leaving the caller's random state as it was."""
    if isinstance(init_seed, bool) or not isinstance(init_seed, int) or init_seed < 0:
        raise ValueError(f"{owner}'s init_seed must be an integer >= 0, got {init_seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        yield
