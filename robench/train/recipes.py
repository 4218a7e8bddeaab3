"""Target-model training recipes of specs Part B: standard, Madry AT (B1), TRADES (B2), MART (B3).

A recipe is built from a spec (``trades:beta=6,steps=10``) like every robench plugin: its
loss hyperparameters are keyword-only with the defaults of specs Part B, and it carries the
optimiser schedule the reference scripts use, which ``robench train`` options override.
"""

from __future__ import annotations

import difflib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from robench.hyper import check_positive, check_positive_int
from robench.spec import Spec, SpecError, parse_eps, parse_spec
from robench.threat import ThreatModel
from robench.train.inner import evaluating, perturb
from robench.train.loop import Schedule, StepResult, TrainingError

# MART's reference code (YisenWang/MART, mart.py) keeps logarithms and weights finite with these.
MART_LOG_EPS = 1e-12
MART_MARGIN = 1.0001
MART_WEIGHT_MARGIN = 1.0000001


class Recipe:
    """A classifier's training objective: hyperparameters, a per-batch :meth:`loss` and a default :class:`Schedule`."""

    name: str = ""
    schedule: Schedule = Schedule(epochs=100)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """Loss of one mini-batch ``x`` (B, C, H, W) in [0, 1], ``y`` (B,); ``model`` arrives in train mode."""
        raise NotImplementedError

    @property
    def hyperparameters(self) -> dict:
        """The constructor's keyword arguments with their values."""
        return {name: getattr(self, name) for name in inspect.signature(type(self)).parameters}

    @property
    def spec(self) -> Spec:
        """The canonical spec naming this recipe and all its hyperparameters."""
        return Spec.of(self.name, **self.hyperparameters)


class _Adversarial(Recipe):
    """Shared Linf inner-attack hyperparameters (eps, step size, steps) of the adversarial recipes."""

    def __init__(self, *, eps: float, step_size: float, steps: int):
        self.eps = parse_eps(eps)
        check_positive("step_size", step_size)
        check_positive_int("steps", steps)
        self.step_size = float(step_size)
        self.steps = steps

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel("Linf", self.eps)


class Standard(Recipe):
    """Natural training: cross-entropy on the clean images (the naturally trained target of DIR Table 4)."""

    name = "standard"
    # [CHOICE] no paper fixes it; the outer schedule of AT (specs B1), so the two compare directly.
    schedule = Schedule(epochs=100, milestones=(75, 90))

    def loss(self, model, x, y, generator):
        logits = model(x)
        return StepResult(F.cross_entropy(logits.float(), y), logits)


class MadryAT(_Adversarial):
    """Madry et al. (2018) adversarial training, DIR's setting (specs B1): train on PGD examples only.

    Inner PGD on the cross-entropy, uniform random start in the eps-ball, signed steps projected
    onto the ball and [0, 1], with the model in eval mode (as torchattacks' PGD, which DIR's code
    uses); the outer step is the cross-entropy of the adversarial batch in train mode.

    Args:
        eps: Linf budget (DIR: 8/255).
        step_size: PGD step (DIR: 2/255).
        steps: PGD iterations (DIR: 5).
    """

    name = "at"
    # [CHOICE] specs B1: SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, lr x0.1 at 75 and 90 (100 epochs).
    schedule = Schedule(epochs=100, milestones=(75, 90))

    def __init__(self, *, eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 5):
        super().__init__(eps=eps, step_size=step_size, steps=steps)

    def loss(self, model, x, y, generator):
        with evaluating(model):
            x_adv = perturb(model, x, lambda logits: F.cross_entropy(logits.float(), y), self.threat,
                            step_size=self.step_size, steps=self.steps, start="uniform", generator=generator)
        logits = model(x_adv)
        return StepResult(F.cross_entropy(logits.float(), y), logits)


def trades_loss(logits_natural: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """TRADES' outer loss ``CE(f(x), y) + beta * KL(p(x) || p(x'))``, KL summed and divided by B (Zhang et al. 2019)."""
    natural = F.cross_entropy(logits_natural, y)
    robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_natural, dim=1), reduction="sum")
    return natural + beta * robust / len(y)


class TRADES(_Adversarial):
    """TRADES (Zhang et al. 2019; yaodongyu/TRADES trades.py), specs B2.

    x' maximises ``KL(p(x) || p(x'))`` from ``x + 0.001 N(0, I)`` by signed steps, projected
    onto the eps-ball and [0, 1] each step, with the model in eval mode; then the model, in
    train mode, minimises :func:`trades_loss`. The reference code runs the natural batch through
    the model twice in train mode (once for the cross-entropy, once for the KL target); here
    once, which gives the same loss and gradient and updates BatchNorm's running averages once.

    Args:
        beta: weight of the KL term (the paper's CIFAR-10 value 6 = 1/lambda; the first script default was 1).
        eps: Linf budget ([CHOICE] DIR's 8/255; the TRADES script uses 0.031).
        step_size: step ([CHOICE] 2/255 as DIR; the script uses 0.007).
        steps: iterations (the script's 10; DIR does not state its TRADES settings).
    """

    name = "trades"
    # The CIFAR-10 script: SGD lr 0.1, momentum 0.9, wd 2e-4, batch 128, lr x0.1 at 75, 90 and 100.
    schedule = Schedule(epochs=100, milestones=(75, 90, 100))

    def __init__(self, *, beta: float = 6.0, eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10):
        super().__init__(eps=eps, step_size=step_size, steps=steps)
        check_positive("beta", beta)
        self.beta = float(beta)

    def loss(self, model, x, y, generator):
        with evaluating(model):
            with torch.no_grad():
                p_natural = F.softmax(model(x).float(), dim=1)
            x_adv = perturb(
                model, x,
                lambda logits: F.kl_div(F.log_softmax(logits.float(), dim=1), p_natural, reduction="sum"),
                self.threat, step_size=self.step_size, steps=self.steps, start="normal", generator=generator,
            )
        logits_natural = model(x)
        logits_adv = model(x_adv)
        return StepResult(trades_loss(logits_natural.float(), logits_adv.float(), y, self.beta), logits_adv)


def mart_loss(logits_natural: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART's outer loss: boosted CE on x' plus ``beta * KL(p(x) || p(x')) * (1 - p_y(x))`` (Wang et al. 2020)."""
    adv_probs = F.softmax(logits_adv, dim=1)
    top_two = adv_probs.argsort(dim=1)[:, -2:]
    wrong = torch.where(top_two[:, -1] == y, top_two[:, -2], top_two[:, -1])
    boosted = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(MART_MARGIN - adv_probs + MART_LOG_EPS), wrong)
    natural_probs = F.softmax(logits_natural, dim=1)
    true_probs = natural_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + MART_LOG_EPS), natural_probs, reduction="none").sum(dim=1)
    return boosted + beta * (kl * (MART_WEIGHT_MARGIN - true_probs)).sum() / len(y)


class MART(_Adversarial):
    """MART (Wang et al. 2020; YisenWang/MART mart.py), specs B3.

    x' from PGD on the cross-entropy started at ``x + 0.001 N(0, I)``, projected onto the
    eps-ball and [0, 1] each step, model in eval mode; then, in train mode, :func:`mart_loss`.

    Args:
        beta: weight of the misclassification-aware KL term (5 in the ResNet-18 script; 6 for WRN).
        eps: Linf budget ([CHOICE] DIR's 8/255; the script uses 0.031).
        step_size: step ([CHOICE] 2/255; the script uses 0.007).
        steps: iterations (the script's 10).
    """

    name = "mart"
    # train_resnet.py: SGD lr 0.01, momentum 0.9, wd 3.5e-3, batch 128, 120 epochs, lr x0.1 at 75, 90, 100.
    schedule = Schedule(epochs=120, lr=0.01, weight_decay=3.5e-3, milestones=(75, 90, 100))

    def __init__(self, *, beta: float = 5.0, eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10):
        super().__init__(eps=eps, step_size=step_size, steps=steps)
        check_positive("beta", beta)
        self.beta = float(beta)

    def loss(self, model, x, y, generator):
        with evaluating(model):
            x_adv = perturb(model, x, lambda logits: F.cross_entropy(logits.float(), y), self.threat,
                            step_size=self.step_size, steps=self.steps, start="normal", generator=generator)
        logits_natural = model(x)
        logits_adv = model(x_adv)
        return StepResult(mart_loss(logits_natural.float(), logits_adv.float(), y, self.beta), logits_adv)


RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (Standard, MadryAT, TRADES, MART)}


def build_recipe(spec: "str | Spec", *, recipes: "dict[str, type] | None" = None):
    """The recipe a spec names (``at``, ``trades:beta=6``) among ``recipes`` (default :data:`RECIPES`); helpful errors."""
    recipes = RECIPES if recipes is None else recipes
    try:
        spec = parse_spec(spec)
    except SpecError as err:
        raise TrainingError(str(err)) from None
    if spec.name not in recipes:
        close = difflib.get_close_matches(spec.name, list(recipes), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise TrainingError(f"unknown training recipe {spec.name!r}{hint} (recipes: {', '.join(recipes)})")
    cls = recipes[spec.name]
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        takes = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
        loop = [f"--{k.replace('_', '-')}" for k in unknown if k in Schedule.__dataclass_fields__]
        hint = f" (the schedule is set with {', '.join(loop)})" if loop else ""
        raise TrainingError(f"recipe {spec.name!r} has no option {', '.join(map(repr, unknown))}; {takes}{hint}")
    try:
        return cls(**spec.options)
    except (TypeError, ValueError) as err:
        raise TrainingError(f"cannot build recipe {str(spec)!r}: {err}") from None
