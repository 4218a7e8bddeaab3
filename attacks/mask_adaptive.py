"""DIR's mask-adaptive attack (Zhou et al., ICML 2023, Eq. 8): PGD against the defense's own masks."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.hyper import check_positive, check_positive_int
from robench.defense import BPDA
from robench.masks import MaskedDefense, fixed_mask_view
from robench.pgd_kernel import ascend
from robench.target import Pipeline, split_eot
from robench.threat import ThreatModel


class MaskAdaptive(Attack):
    """Draw the defense's masks once per image, fix them, and run PGD through the fixed-mask pipeline.

    "This adaptive attack had access to the masks used in our defense and crafted adversarial
    noise for each mask" (DIR §4.4). Reading chosen by robench (specs D9): PGD with 40 steps of
    2/255 and a random start (:func:`robench.pgd_kernel.ascend`, torchattacks' PGD / PGDL2
    iterates) through ``model(defense_with_fixed_masks(x))`` (BPDA where the defense is not
    differentiable), projected around ``x``. The runner then scores the real
    defense, which draws fresh masks; the attack works for any :class:`MaskedDefense`.
    """

    norms = ("Linf", "L2")
    averages_draws = True  # one fixed mask draw per image, never an EOT view

    def __init__(self, *, steps: int = 40, step_size: float = 2 / 255, random_start: bool = True):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start

    def unsupported(self, setting: str, defense: nn.Module) -> str | None:
        if setting != "adaptive":
            return f"it attacks the defended pipeline itself, so it needs the adaptive setting, not {setting!r}"
        if not isinstance(defense, MaskedDefense):
            return f"{type(defense).__name__} draws no masks (it is not a robench.masks.MaskedDefense)"
        return None

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        pipeline, _ = split_eot(model)
        defense = pipeline.defense.defense if isinstance(pipeline.defense, BPDA) else pipeline.defense
        view = Pipeline(pipeline.model, fixed_mask_view(defense, defense.sample_masks(x))).eval()
        return ascend(lambda x_adv: F.cross_entropy(view(x_adv), y), x, threat, steps=self.steps,
                      step_size=self.step_size, start="uniform" if self.random_start else "none")

    def passes(self, n: int, eot: int = 1) -> Passes:
        return gradient_steps(n, self.steps)  # one mask draw, fixed: no EOT
