"""BPDA + EOT PGD (Athalye et al., "Obfuscated Gradients Give a False Sense of Security", ICML 2018)."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.hyper import check_positive, check_positive_int
from robench.pgd_kernel import ascend
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
    unstated (specs D11): 40 steps, step 2/255, random start; each iteration is
    :mod:`robench.pgd_kernel`'s (torchattacks' update rule).
    """

    norms = ("Linf", "L2")
    version = "2"  # 2: robench.pgd_kernel's start and L2 step (torchattacks' PGDL2 draw and guard)

    def __init__(self, *, steps: int = 40, step_size: float = 2 / 255, random_start: bool = True):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        pipeline, draws = split_eot(model)
        labels = y.repeat(draws)

        def loss_of(x_adv: torch.Tensor) -> torch.Tensor:
            batch = x_adv.repeat(draws, *([1] * (x.dim() - 1)))
            return F.cross_entropy(pipeline(batch), labels, reduction="sum") / draws

        return ascend(loss_of, x, threat, steps=self.steps, step_size=self.step_size,
                      start="uniform" if self.random_start else "none")

    def passes(self, n: int, eot: int = 1) -> Passes:
        return gradient_steps(n * eot, self.steps)
