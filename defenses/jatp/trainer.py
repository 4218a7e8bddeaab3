"""``robench train jatp``: JATP's joint adversarial training of the pre-processor in front of a frozen target.

Reconstructed from the abstract (specs A6): per batch, x' = PGD against the whole pre-processed
model ``h(g(x))`` ("full adversarial examples"), then the pre-processor alone minimises
``MSE(g(x'), x) + feature * d(phi(g(x')), phi(x))``, phi the target's penultimate features, d a
feature distance, optionally weighted per example by ``1 - p_y(x)`` (misclassification-aware).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.hgd.trainer import HGDRecipe
from robench.defenses.jatp.defense import JATP
from robench.hyper import check_positive, check_positive_int
from robench.spec import parse_eps
from robench.target import Pipeline
from robench.threat import ThreatModel
from robench.train.inner import evaluating, perturb
from robench.train.loop import StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase

DISTANCES = ("l2", "cosine")


def penultimate(model: nn.Module) -> nn.Module:
    """The model's last ``nn.Linear``: its input is the penultimate feature vector phi(x)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise TrainingError("jatp's feature risk needs the target's penultimate features, the input of its last "
                            "linear layer, and the target has none")
    return linears[-1]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """phi(x), the input of the model's last linear layer, and the logits, from one forward pass."""
    captured = []
    handle = penultimate(model).register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    try:
        logits = model(x)
    finally:
        handle.remove()
    return captured[-1].flatten(1), logits


def feature_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example distance of feature vectors (B, D): mean squared difference (``l2``) or ``1 - cosine``."""
    if kind == "l2":
        return (a - b).pow(2).mean(1)
    return 1 - F.cosine_similarity(a, b, dim=1)


class JATPRecipe(Recipe):
    """JATP's objective, reconstructed (specs A6: every element below is unverified), from ``jatp:KEY=VALUE,...``.

    Args:
        feature: weight lambda of the feature risk (1.0).
        distance: ``l2`` (mean squared difference, default) or ``cosine`` (1 - cosine similarity).
        misclassification_aware: weight each example's feature risk by ``1 - p_y(x)``, the target's
            probability of the true class on the clean image (False).
        eps, step_size, steps: the full adversarial examples' PGD against h(g(.)) (8/255, 2/255, 5: DIR's
            training attack; the authors are DIR's).
    """

    name = "jatp"
    # [CHOICE] JATP's schedule is not public: HGD's (the DUNET's own; Adam lr 0.01, 100 epochs).
    schedule = HGDRecipe.schedule

    def __init__(self, *, feature: float = 1.0, distance: str = "l2", misclassification_aware: bool = False,
                 eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 5):
        if isinstance(feature, bool) or not isinstance(feature, (int, float)) or not feature >= 0:
            raise ValueError(f"feature must be a number >= 0, got {feature!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if not isinstance(misclassification_aware, bool):
            raise ValueError(f"misclassification_aware must be true or false, got {misclassification_aware!r}")
        self.eps = parse_eps(eps)
        check_positive("step_size", step_size)
        check_positive_int("steps", steps)
        self.feature, self.distance = float(feature), distance
        self.misclassification_aware = misclassification_aware
        self.step_size, self.steps = float(step_size), steps

    def full_adversarial(self, pipeline: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         generator: torch.Generator) -> torch.Tensor:
        """x': PGD on the cross-entropy of ``h(g(x))``, through the pre-processor, everything in eval mode."""
        with evaluating(pipeline):
            return perturb(pipeline, x, lambda logits: F.cross_entropy(logits.float(), y),
                           ThreatModel("Linf", self.eps), step_size=self.step_size, steps=self.steps,
                           start="uniform", generator=generator)

    def loss(self, preprocessor: JATP, target: nn.Module, x: torch.Tensor, x_adv: torch.Tensor,
             y: torch.Tensor) -> StepResult:
        """``MSE(g(x'), x) + feature * mean_i w_i d(phi(g(x'_i)), phi(x_i))`` and h(g(x'))'s logits."""
        restored = preprocessor(x_adv)
        with torch.no_grad():
            clean_features, clean_logits = features_and_logits(target, x)
        features, logits = features_and_logits(target, restored)
        risk = feature_distance(features.float(), clean_features.float(), self.distance)
        if self.misclassification_aware:
            risk = risk * (1 - F.softmax(clean_logits.float(), dim=1).gather(1, y[:, None]).squeeze(1))
        return StepResult(F.mse_loss(restored.float(), x.float()) + self.feature * risk.mean(), logits)


class JATPTraining(DefenseTrainer):
    """A checked ``robench train jatp`` run: the pre-processor on full adversarial examples of ``--target`` behind it."""

    trains = JATP
    recipe_class = JATPRecipe

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch: x' against h(g(.)), then the pre-processor's loss."""
        x_adv = self.recipe.full_adversarial(Pipeline(self.target, self.module), x, y, generator)
        return self.recipe.loss(self.module, self.target, x, x_adv, y)

    def phases(self) -> list[Phase]:
        """One phase over the schedule's epochs (the target's penultimate layer checked first)."""
        size, expected = tuple(self.train.x.shape[-2:]), self.module.input_size
        if size != (expected, expected):
            raise TrainingError(f"{str(self.dataset_spec)!r} images are {size[0]}x{size[1]}, but this DUNET takes "
                                f"{expected}x{expected}; train jatp:input_size={size[-1]}")
        penultimate(self.target)
        return [Phase("main", self.schedule, self.step, seed=self.seed, config={"recipe": str(self.recipe.spec)})]
