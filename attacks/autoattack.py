"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020): robench's early-stopping APGD components, or the
official code (the ``pyautoattack`` package) throughout."""

from __future__ import annotations

import logging

import pyautoattack
import torch
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.attacks.apgd import RECOMPUTE_BUDGET, Checkpoints, apgd, apgd_targeted
from robench.attacks.fab import fab_targeted
from robench.attacks.square import square_linf
from robench.hyper import check_positive_int
from robench.threat import ThreatModel

VARIANTS = ("standard", "plus", "rand")  # AutoAttack's own `version` argument
ENGINES = ("robench", "official")
APGD_COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t")
# What each component of the official code runs in the standard and rand versions (its _set_version):
TARGETS, QUERIES, RAND_EOT, FAB_ITER = 9, 5000, 20, 100
COMPONENTS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
# AutoAttack logs its own sanity warnings (randomised defense, gradient masking) here.
logging.getLogger("auto-attack").setLevel(logging.WARNING)


class AutoAttack(Attack):
    """AutoAttack with its published parameters, recorded in every result.

    ``variant`` is AutoAttack's ``version`` argument (renamed: ``version`` is a plugin's own
    version in robench). ``standard``: APGD-CE (100 iterations) -> APGD-T (9 targets) -> FAB-T (9 targets) -> Square
    (5000 queries), each on the points still robust; an example is robust only if it survives
    all four. ``rand``: APGD-CE and APGD-DLR with EOT over 20 draws, for stochastic defenses
    (the attack averages the draws itself, so the runner gives it the plain pipeline). ``plus``:
    the stronger six-attack version. Not torchattacks' AutoAttack, whose APGD runs 10 iterations
    from torchattacks 3.3.0 on (specs D3). With fewer than 10 classes the targeted attacks use
    every other class (the official code would fail).

    Args:
        engine: ``robench`` runs the APGD components with :mod:`robench.attacks.apgd`, the
            official algorithm where an example leaves the batch at its first successful iterate
            (same seed, same per-example outcomes as the official code on a deterministic model;
            the returned point is the first successful iterate instead of the last), FAB-T with
            :mod:`robench.attacks.fab` (its target classes side by side, an example leaving at
            its first misclassified iterate within eps; with early stop only), Linf Square with
            :mod:`robench.attacks.square` (the official points), and the rest through the
            official code, each on the examples still robust. ``official`` runs the official
            code throughout.
        n_iter: APGD iterations (AutoAttack: 100), with the checkpoint schedule the official
            constructor derives from it; both engines honour it. Fewer only for quick checks.
        early_stop: with ``engine=robench``, drop an example from APGD's and FAB-T's batch at
            its first successful iterate. False keeps every example for all iterations and
            returns the official code's points (the last successful iterate; FAB-T official). Default: True, except for
            ``variant=rand``: behind a stochastic defense "successful" means that one draw was
            fooled (as the official code judges it), the first such iterate is less optimised
            than the official last one, and a fresh draw may not be fooled by it, so early stop
            can report a higher robust accuracy than the official code there; pass True to trade
            that for speed (``benchmarks/perf/attacks.py`` measures both).
    """

    norms = ("Linf", "L2")
    version = "3"
    components: tuple[str, ...] | None = None

    def __init__(self, *, variant: str = "standard", engine: str = "robench", n_iter: int = 100,
                 early_stop: bool | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        check_positive_int("n_iter", n_iter)
        self.variant = variant
        self.engine = engine
        self.n_iter = n_iter
        self.early_stop = variant != "rand" if early_stop is None else bool(early_stop)
        self.averages_draws = variant == "rand"

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        attack = self._official(model, x, threat, seed)
        if self.engine == "official":
            return attack.run_standard_evaluation(x, y, batch_size=len(x))[0]
        return self._run_robench(attack, model, x, y, threat, seed)

    def _official(self, model: nn.Module, x: torch.Tensor, threat: ThreatModel, seed: int) -> pyautoattack.AutoAttack:
        """The official AutoAttack object of this variant: the parameters of both engines."""
        attack = pyautoattack.AutoAttack(
            model, norm=threat.norm, eps=threat.eps, version=self.variant, seed=seed, device=x.device
        )
        if self.components is not None:
            attack.attacks_to_run = list(self.components)
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        if classes <= attack.apgd_targeted.n_target_classes:  # the official code fails below 10 classes
            attack.apgd_targeted.n_target_classes = attack.fab.n_target_classes = classes - 1
        checkpoints = Checkpoints(self.n_iter)
        for component in (attack.apgd, attack.apgd_targeted):  # what the official constructor sets from n_iter
            component.n_iter = component.n_iter_orig = self.n_iter
            component.n_iter_2, component.n_iter_min = checkpoints.first, checkpoints.shortest
            component.size_decr = checkpoints.shrink
        return attack

    def _run_robench(self, official: pyautoattack.AutoAttack, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     threat: ThreatModel, seed: int) -> torch.Tensor:
        """The official evaluation loop (``run_standard_evaluation``): each component on the examples still robust."""
        with torch.no_grad():
            robust = model(x).argmax(1) == y
        x_adv = x.clone()
        for name in list(official.attacks_to_run):
            index = robust.nonzero().squeeze(1)
            if len(index) == 0:
                break
            found = self._component(name, official, model, x[index], y[index], threat, seed)
            with torch.no_grad():  # judged by a fresh forward pass, as the official loop judges
                broken = model(found).argmax(1) != y[index]
            robust[index[broken]] = False
            x_adv[index[broken]] = found[broken]
        return x_adv

    def _component(self, name: str, official: pyautoattack.AutoAttack, model, x, y, threat, seed: int) -> torch.Tensor:
        """One component on x: robench's APGD, FAB-T (with early stop) and Linf Square, else the official code."""
        if name in APGD_COMPONENTS:
            return self._apgd(name, official, model, x, y, threat, seed)
        if name == "fab-t" and self.early_stop:  # its points differ from the official ones, its outcomes do not
            fab = official.fab
            return fab_targeted(model, x, y, threat, n_targets=fab.n_target_classes, n_iter=fab.n_iter,
                                alpha_max=fab.alpha_max, eta=fab.eta, beta=fab.beta)
        square = official.square
        if name == "square" and threat.norm == "Linf" and square.loss == "margin" and square.n_restarts == 1:
            return square_linf(model, x, y, threat.eps, n_queries=square.n_queries, p_init=square.p_init,
                               rescale_schedule=square.rescale_schedule, seed=seed)  # the official points
        official.attacks_to_run = [name]
        return official.run_standard_evaluation(x, y, batch_size=len(x))[0]

    def _apgd(self, name: str, official: pyautoattack.AutoAttack, model, x, y, threat, seed: int) -> torch.Tensor:
        """robench's APGD component ``name`` with the official object's parameters."""
        if name == "apgd-t":
            params = official.apgd_targeted
            return apgd_targeted(model, x, y, threat, n_targets=params.n_target_classes, n_iter=params.n_iter,
                                 restarts=params.n_restarts, rho=params.thr_decr, eot_iter=params.eot_iter, seed=seed,
                                 early_stop=self.early_stop)
        params = official.apgd
        return apgd(model, x, y, threat, loss=name.removeprefix("apgd-"), n_iter=params.n_iter,
                    restarts=params.n_restarts, rho=params.thr_decr, eot_iter=params.eot_iter, seed=seed,
                    early_stop=self.early_stop)


    def passes(self, n: int, eot: int = 1) -> Passes | None:
        """An upper bound read from the official code: every component attacks all ``n`` examples.

        ``run_standard_evaluation``'s checks (5 forwards testing for randomness unless ``rand``,
        output range, dynamic graph) and clean pass, then each component as it runs per example:
        APGD 1 + (iterations + 1) gradient steps per restart (x 20 EOT draws in ``rand``) and 1
        check; APGD-T and FAB-T that for each of 9 target classes (FAB-T: a forward and a
        gradient per iteration, 3 forwards around); Square 5000 queries and 3 forwards around;
        then 1 check per component, and robench's probe of ``x[:1]`` for the class count. The
        components skip examples already broken, and with fewer than 10 classes fewer targets
        run, so a run spends at most this. FAB runs its own 100 iterations whatever ``n_iter``.
        With ``engine=robench`` and early stop, APGD-T's runs side by side may be computed again
        (:meth:`robench.attacks.apgd._Runner.attack_side_by_side`): at most ``RECOMPUTE_BUDGET``
        times its count. ``plus`` (untargeted FAB differentiates every logit) declares no cost model.
        """
        components = self.components or COMPONENTS.get(self.variant)
        if components is None:
            return None
        draws = RAND_EOT if self.variant == "rand" else 1
        apgd = gradient_steps(n * draws, self.n_iter + 1) + Passes(n)
        side_by_side = RECOMPUTE_BUDGET if self.engine == "robench" and self.early_stop else 1
        cost = {"apgd-ce": apgd + Passes(n), "apgd-dlr": apgd + Passes(n),
                "apgd-t": apgd * (TARGETS * side_by_side) + Passes(n),
                "fab-t": (gradient_steps(n, FAB_ITER) + Passes(n * (FAB_ITER + 3))) * TARGETS + Passes(n),
                "square": Passes(n * (QUERIES + 3))}
        checks = 3 if self.variant == "rand" else 8
        total = Passes(n * (checks + len(components)) + 1)
        for name in components:
            total = total + cost[name]
        return total * eot


class _Component(AutoAttack):
    """One attack of AutoAttack's standard version, with that version's parameters."""

    def __init__(self, *, engine: str = "robench", n_iter: int = 100, early_stop: bool = True):
        super().__init__(variant="standard", engine=engine, n_iter=n_iter, early_stop=early_stop)


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
