"""PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)."""

import torch
import torchattacks
from torch import nn

from robench.attack import Attack
from robench.threat import ThreatModel


class PGD(Attack):
    """Projected gradient ascent on the cross-entropy, through torchattacks.PGD (Linf) / PGDL2 (L2).

    Args:
        steps: iterations (DIR evaluates with 20, trains with 5; torchattacks' default is 10).
        step_size: per-step size; None means 2/255 for Linf (DIR, torchattacks) and eps/5 for L2
            (torchattacks' PGDL2 ratio).
        random_start: start uniformly in the eps-ball (Madry et al.; torchattacks' default).
    """

    def __init__(self, *, steps: int = 10, step_size: float | None = None, random_start: bool = True):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        if threat.norm == "Linf":
            alpha = 2 / 255 if self.step_size is None else self.step_size
            attack = torchattacks.PGD(model, eps=threat.eps, alpha=alpha, steps=self.steps, random_start=self.random_start)
        else:
            alpha = threat.eps / 5 if self.step_size is None else self.step_size
            attack = torchattacks.PGDL2(model, eps=threat.eps, alpha=alpha, steps=self.steps, random_start=self.random_start)
        return attack(x, y)
