"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020) through the official code (the ``pyautoattack`` package)."""

import logging

import pyautoattack
import torch
from torch import nn

from robench.attack import Attack
from robench.threat import ThreatModel

VARIANTS = ("standard", "plus", "rand")  # AutoAttack's own `version` argument
# AutoAttack logs its own sanity warnings (randomised defense, gradient masking) here.
logging.getLogger("auto-attack").setLevel(logging.WARNING)


class AutoAttack(Attack):
    """The official AutoAttack with its published parameters, recorded in every result.

    ``variant`` is AutoAttack's ``version`` argument (renamed: ``version`` is a plugin's own
    version in robench). ``standard``: APGD-CE (100 iterations) -> APGD-T (9 targets) -> FAB-T (9 targets) -> Square
    (5000 queries), each on the points still robust; an example is robust only if it survives
    all four. ``rand``: APGD-CE and APGD-DLR with EOT over 20 draws, for stochastic defenses
    (the attack averages the draws itself, so the runner gives it the plain pipeline). ``plus``:
    the stronger six-attack version. Not torchattacks' AutoAttack, whose APGD runs 10 iterations
    from torchattacks 3.3.0 on (specs D3). With fewer than 10 classes the targeted attacks use
    every other class (the official code would fail).
    """

    norms = ("Linf", "L2")
    components: tuple[str, ...] | None = None

    def __init__(self, *, variant: str = "standard"):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.averages_draws = variant == "rand"

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        attack = pyautoattack.AutoAttack(
            model, norm=threat.norm, eps=threat.eps, version=self.variant, seed=seed, device=x.device
        )
        if self.components is not None:
            attack.attacks_to_run = list(self.components)
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        if classes <= attack.apgd_targeted.n_target_classes:  # the official code fails below 10 classes
            attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = classes - 1
        x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv


class _Component(AutoAttack):
    """One attack of AutoAttack's standard version, with that version's parameters."""

    def __init__(self):
        super().__init__(variant="standard")


class APGDCE(_Component):
    """APGD on the cross-entropy, 100 iterations, 1 restart (AutoAttack standard, first stage)."""

    components = ("apgd-ce",)


class APGDT(_Component):
    """Targeted APGD on the DLR loss, 9 target classes (AutoAttack standard, second stage)."""

    components = ("apgd-t",)


class FABT(_Component):
    """Targeted FAB, 9 target classes (Croce & Hein 2020; AutoAttack standard, third stage)."""

    components = ("fab-t",)


class Square(_Component):
    """Square Attack, 5000 queries, p_init 0.8 (Andriushchenko et al. 2020; AutoAttack standard, last stage)."""

    kind = "black-box"
    components = ("square",)
