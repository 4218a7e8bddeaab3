"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020) through the official code (the ``pyautoattack`` package)."""

import logging

import pyautoattack
import torch
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.threat import ThreatModel

VARIANTS = ("standard", "plus", "rand")  # AutoAttack's own `version` argument
# What each component of the official code runs in the standard and rand versions (its _set_version):
ITERATIONS, TARGETS, QUERIES, RAND_EOT = 100, 9, 5000, 20
COMPONENTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
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


    def passes(self, n: int, eot: int = 1) -> Passes | None:
        """An upper bound read from the official code: every component attacks all ``n`` examples.

        ``run_standard_evaluation``'s checks (5 forwards testing for randomness unless ``rand``,
        output range, dynamic graph) and clean pass, then each component as it runs per example:
        APGD 1 + (iterations + 1) gradient steps per restart (x 20 EOT draws in ``rand``) and 1
        check; APGD-T and FAB-T that for each of 9 target classes (FAB-T: a forward and a
        gradient per iteration, 3 forwards around); Square 5000 queries and 3 forwards around;
        then 1 check per component, and robench's probe of ``x[:1]`` for the class count. The
        components skip examples already broken, and with fewer than 10 classes fewer targets
        run, so a run spends at most this. ``plus`` (untargeted FAB differentiates every logit)
        declares no cost model.
        """
        components = self.components or COMPONENTS.get(self.variant)
        if components is None:
            return None
        draws = RAND_EOT if self.variant == "rand" else 1
        apgd = gradient_steps(n * draws, ITERATIONS + 1) + Passes(n)
        cost = {"apgd-ce": apgd + Passes(n), "apgd-dlr": apgd + Passes(n), "apgd-t": apgd * TARGETS + Passes(n),
                "fab-t": (gradient_steps(n, ITERATIONS) + Passes(n * (ITERATIONS + 3))) * TARGETS + Passes(n),
                "square": Passes(n * (QUERIES + 3))}
        checks = 3 if self.variant == "rand" else 8
        total = Passes(n * (checks + len(components)) + 1)
        for name in components:
            total = total + cost[name]
        return total * eot


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
