"""BPDA + EOT PGD (Athalye et al., "Obfuscated Gradients Give a False Sense of Security", ICML 2018)."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack
from robench.hyper import check_positive, check_positive_int
from robench.target import split_eot
from robench.threat import ThreatModel


class BPDAEOT(Attack):
    """PGD whose every step follows the mean of the per-draw loss gradients (EOT) through BPDA.

    The runner hands adaptive attacks the core's views: BPDA where the defense is not
    differentiable, and an EOT view with the cell's ``eot`` draws where it is stochastic. This
    attack unwraps the EOT view and averages the cross-entropy of the draws, which gives exactly
    the mean of their gradients (Athalye et al.'s EOT), rather than the gradient of the mean
    logits; all draws run as one batch. Written here because torchattacks' EOTPGD runs the draws
    one after another. Defaults follow DIR Table 3 with robench's choices for what it leaves
    unstated (specs D11): 40 steps, step 2/255, random start.
    """

    norms = ("Linf", "L2")

    def __init__(self, *, steps: int = 40, step_size: float = 2 / 255, random_start: bool = True):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        pipeline, draws = split_eot(model)
        labels = y.repeat(draws)
        x_adv = x.clone()
        if self.random_start:
            x_adv = threat.project(x + self._random_start(x, threat), x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            batch = x_adv.repeat(draws, *([1] * (x.dim() - 1)))
            loss = F.cross_entropy(pipeline(batch), labels, reduction="sum") / draws
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(x_adv.detach() + self.step_size * _direction(grad, threat.norm), x)
        return x_adv

    @staticmethod
    def _random_start(x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        if threat.norm == "Linf":
            return torch.empty_like(x).uniform_(-threat.eps, threat.eps)
        noise = torch.randn_like(x)
        radius = torch.rand(len(x), *([1] * (x.dim() - 1)), device=x.device) * threat.eps
        return noise / noise.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1))).clamp_min(1e-12) * radius


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size in the threat model's norm."""
    if norm == "Linf":
        return grad.sign()
    length = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
    return grad / length.view(-1, *([1] * (grad.dim() - 1)))
