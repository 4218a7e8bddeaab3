"""``robench train comdefend``: ComCNN and RecCNN trained together on clean images (Jia et al. 2019; specs A7).

Every batch: the noisy sigmoid code ``sigmoid(ComCNN(x - 0.5) - sigma * N(0, 1))`` with the training
noise (20, the PyTorch trainer's default, which drives the code towards binary values), RecCNN's
reconstruction of it, and the loss ``MSE(rec, x) + 1e-4 * mean(code^2)``; Adam lr 1e-2, betas
(0.5, 0.999), batch 128, 10 epochs (the trainer's defaults). No classifier is involved; the
checkpoint (both networks) loads as ``comdefend:weights=PATH``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from robench.defenses.comdefend.defense import ComDefend
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


class ComDefendRecipe(Recipe):
    """ComDefend's training objective (specs A7, ``Train_comdefend_Torch.py``), built from ``comdefend:KEY=VALUE,...``.

    Trained on whole images (the PyTorch trainer's 32x32 SVHN images), not on tiles.

    Args:
        sigma: standard deviation of the code noise while training (20.0, the PyTorch trainer's
            ``--std``; the test-time noise is the defense's own ``sigma``).
        code_weight: weight of ``mean(code^2)``, which pushes the code towards zeros (1e-4).
    """

    name = "comdefend"
    schedule = Schedule(epochs=10, batch_size=128, lr=1e-2, weight_decay=0.0, milestones=(), optimizer="adam",
                        betas=(0.5, 0.999))

    def __init__(self, *, sigma: float = 20.0, code_weight: float = 1e-4):
        self.sigma = _non_negative("sigma", sigma)
        self.code_weight = _non_negative("code_weight", code_weight)

    def loss(self, model: ComDefend, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """``MSE(RecCNN(code), x) + code_weight * mean(code^2)`` with the noisy sigmoid code of ``x``."""
        code = model.noisy_code(x, self.sigma, generator)
        reconstruction = model.reccnn(code)
        return StepResult(F.mse_loss(reconstruction.float(), x.float()) + self.code_weight * code.float().pow(2).mean())


class ComDefendTraining(DefenseTrainer):
    """A checked ``robench train comdefend`` run: self-supervised (``--target`` optional, for the card's accuracies).

    One phase seeded with ``seed``; the code noise is drawn from the run's generator, so a rerun
    of the same command resumes or reproduces the same weights.
    """

    trains = ComDefend
    recipe_class = ComDefendRecipe
    needs_target = False

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch's reconstruction loss."""
        return self.recipe.loss(self.module, x, y, generator)

    def phases(self) -> list[Phase]:
        """One phase: the reconstruction loss over the schedule's epochs."""
        channels, expected = self.train.x.shape[1], self.module.comcnn.channels[0]
        if channels != expected:
            raise TrainingError(f"{str(self.dataset_spec)!r} images have {channels} channels, but this ComCNN "
                                f"takes {expected}; train comdefend:in_channels={channels}")
        return [Phase("main", self.schedule, self.step, seed=self.seed, config={"recipe": str(self.recipe.spec)})]
