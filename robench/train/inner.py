"""Inner maximisation of adversarial training: Linf PGD on a loss of the logits, seeded by a generator.

These are training losses, not benchmark attacks, and they follow the recipes' reference code
(specs Part B) rather than torchattacks: torchattacks draws random starts from the global RNG
(a resumed run could not replay them from the loop's generator) and has no autocast; its
KL attack ``TPGD`` clamps the ``x + 0.001 N(0, I)`` start into [0, 1], which TRADES' and MART's
reference code does not; and it has no PGD with that Gaussian start for MART.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from robench.pgd_kernel import ascend
from robench.threat import ThreatModel

STARTS = ("none", "uniform", "normal")


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block, then restore every submodule's own mode."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes.items():
            m.training = training


def perturb(
    model: nn.Module,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    threat: ThreatModel,
    *,
    step_size: float,
    steps: int,
    start: str,
    generator: torch.Generator,
    project: bool = True,
) -> torch.Tensor:
    """Ascend ``objective(model(x'))`` by signed-gradient steps inside ``threat`` around ``x`` (Madry et al. 2018).

    ``x`` (B, C, H, W) in [0, 1]; ``objective`` maps logits (B, K) to a scalar. ``start``:
    ``none`` (x itself: one step of ``eps`` is FGSM), ``uniform`` in the eps-ball, clamped to the bounds (Madry et al.; torchattacks' PGD), or
    ``normal``: ``x + 0.001 N(0, I)``, unclamped (TRADES, MART). Every step is projected onto
    the ball and the bounds unless ``project`` is False (DIR's released inner maximisation).
    The model's mode is the caller's choice. Returns x' detached (:func:`robench.pgd_kernel.ascend`).
    Inside a training step this runs under the loop's device options (``Runtime.options``:
    autocast, channels_last); ``objective`` gets the logits as the model returns them (bf16 under
    autocast), so recipes cast them to float32 first.
    """
    if threat.norm != "Linf":
        raise ValueError(f"training attacks take signed steps, so they need an Linf threat model, not {threat.norm}")
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; choose one of {', '.join(STARTS)}")
    return ascend(lambda x_adv: objective(model(x_adv)), x, threat, steps=steps, step_size=step_size,
                  start=start, generator=generator, project=project)
