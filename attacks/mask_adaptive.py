"""DIR's mask-adaptive attack (Zhou et al., ICML 2023, Eq. 8): PGD against the defense's own masks."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.hyper import check_positive, check_positive_int
from robench.defense import BPDA
from robench.device_options import AUTO, TakesDeviceOptions
from robench.masks import MaskedDefense, fixed_mask_view
from robench.pgd_kernel import ascend
from robench.target import Pipeline, split_eot
from robench.threat import ThreatModel


class MaskAdaptive(TakesDeviceOptions, Attack):
    """Draw the defense's masks once per image, fix them, and run PGD through the fixed-mask pipeline.

    "This adaptive attack had access to the masks used in our defense and crafted adversarial
    noise for each mask" (DIR §4.4). Reading chosen by robench (specs D9): PGD with 40 steps of
    2/255 and a random start (:func:`robench.pgd_kernel.ascend`, torchattacks' PGD / PGDL2
    iterates) through ``model(defense_with_fixed_masks(x))`` (BPDA where the defense is not
    differentiable), projected around ``x``. The runner then scores the real
    defense, which draws fresh masks; the attack works for any :class:`MaskedDefense`.

    Args:
        steps, step_size, random_start: the PGD loop's.
        early_stop: keep each example's first iterate that the fixed-mask pipeline misclassifies
            and drop it (with its masks) from the batch. Under autocast a float32 pass must agree.
        autocast, channels_last, compile: the device options of :mod:`robench.device_options`
            (``auto``: bf16 and channels_last on CUDA, all off on CPU).
    """

    norms = ("Linf", "L2")
    averages_draws = True  # one fixed mask draw per image, never an EOT view

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

    def unsupported(self, setting: str, defense: nn.Module) -> str | None:
        if setting != "adaptive":
            return f"it attacks the defended pipeline itself, so it needs the adaptive setting, not {setting!r}"
        if not isinstance(defense, MaskedDefense):
            return f"{type(defense).__name__} draws no masks (it is not a robench.masks.MaskedDefense)"
        return None

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        pipeline, _ = split_eot(model)
        defense = pipeline.defense.defense if isinstance(pipeline.defense, BPDA) else pipeline.defense
        masks = defense.sample_masks(x)
        options = self.device_options(x.device)

        def view(masks: torch.Tensor):
            return options.wrap(Pipeline(pipeline.model, fixed_mask_view(defense, masks)).eval())

        start = "uniform" if self.random_start else "none"
        if not self.early_stop:
            forward = view(masks)
            return ascend(lambda x_adv: F.cross_entropy(forward(x_adv), y), x, threat, steps=self.steps,
                          step_size=self.step_size, start=start)
        current = {}  # the view of the rows asked for, rebuilt only when they change (examples leave)

        def loss_of(x_adv: torch.Tensor, rows: torch.Tensor):
            if current.get("rows") is not rows:
                current.update(rows=rows, forward=view(masks[rows]))
            logits = current["forward"](x_adv)
            loss = F.cross_entropy(logits, y[rows], reduction="sum") / len(x)
            return loss, logits.detach().argmax(dim=1) != y[rows]

        return ascend(loss_of, x, threat, steps=self.steps, step_size=self.step_size, start=start,
                      early_stop=True, confirm=options.autocast is not None)

    def passes(self, n: int, eot: int = 1) -> Passes:
        return gradient_steps(n, self.steps)  # one mask draw, fixed: no EOT
