"""FGSM (Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015)."""

import torch
import torchattacks
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.threat import ThreatModel


class FGSM(Attack):
    """One signed-gradient step of size eps on the cross-entropy, no random start (torchattacks.FGSM)."""

    norms = ("Linf",)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        return torchattacks.FGSM(model, eps=threat.eps)(x, y)

    def passes(self, n: int, eot: int = 1) -> Passes:
        return gradient_steps(n * eot, 1)
