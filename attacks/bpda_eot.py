"""BPDA + EOT PGD (Athalye et al., "Obfuscated Gradients Give a False Sense of Security", ICML 2018)."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.device_options import AUTO, TakesDeviceOptions
from robench.hyper import check_positive, check_positive_int
from robench.pgd_kernel import ascend
from robench.target import split_eot
from robench.threat import ThreatModel


class BPDAEOT(TakesDeviceOptions, Attack):
    """PGD whose every step follows the mean of the per-draw loss gradients (EOT) through BPDA.

    The runner hands adaptive attacks the core's views: BPDA where the defense is not
    differentiable, and an EOT view with the cell's ``eot`` draws where it is stochastic. This
    attack unwraps the EOT view and averages the cross-entropy of the draws, which gives exactly
    the mean of their gradients (Athalye et al.'s EOT), rather than the gradient of the mean
    logits; all draws run as one batch. Written here because torchattacks' EOTPGD runs the draws
    one after another. Defaults follow DIR Table 3 with robench's choices for what it leaves
    unstated (specs D11): 40 steps, step 2/255, random start; each iteration is
    :mod:`robench.pgd_kernel`'s (torchattacks' update rule).

    Args:
        steps, step_size, random_start: the PGD loop's.
        early_stop: keep each example's first iterate whose mean logits over the step's draws
            misclassify it, and drop it from the batch (later steps cost less). The runner's
            scoring with fresh draws decides robustness. Under autocast a float32 pass (fresh
            draws) must agree before an example leaves.
        autocast, channels_last, compile: the device options of :mod:`robench.device_options`
            (``auto``: bf16 and channels_last on CUDA, all off on CPU).
    """

    norms = ("Linf", "L2")
    version = "2"  # 2: robench.pgd_kernel's start and L2 step (torchattacks' PGDL2 draw and guard)

    def __init__(self, *, steps: int = 40, step_size: float = 2 / 255, random_start: bool = True,
                 early_stop: bool = False, autocast: str | None = AUTO, channels_last: bool | str = AUTO,
                 compile: bool | str = False):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        self.set_device_options(autocast=autocast, channels_last=channels_last, compile=compile)
        self.early_stop = bool(early_stop)
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        pipeline, draws = split_eot(model)
        options = self.device_options(x.device)
        forward = options.wrap(pipeline)

        def loss_of(x_adv: torch.Tensor, rows: torch.Tensor | None = None):
            labels = y if rows is None else y[rows]
            batch = x_adv.repeat(draws, *([1] * (x.dim() - 1)))
            logits = forward(batch)
            loss = F.cross_entropy(logits, labels.repeat(draws), reduction="sum") / draws
            if rows is None:
                return loss
            mean = logits.detach().view(draws, len(x_adv), -1).mean(dim=0)
            return loss, mean.argmax(dim=1) != labels

        return ascend(loss_of, x, threat, steps=self.steps, step_size=self.step_size,
                      start="uniform" if self.random_start else "none", early_stop=self.early_stop,
                      confirm=self.early_stop and options.autocast is not None)

    def passes(self, n: int, eot: int = 1) -> Passes:
        return gradient_steps(n * eot, self.steps)  # an upper bound with early stop; its float32 checks are few
