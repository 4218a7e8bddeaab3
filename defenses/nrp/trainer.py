"""``robench train nrp``: NRP's self-supervised training (Naseer et al., CVPR 2020; specs A4).

Every batch: random crops x, x' by the ``ssp`` attack on the frozen feature extractor F, then one
Adam step of the purifier on ``feature * |F(P(x')) - F(x)| + pixel * |P(x') - x| + adversarial *
L_RaGAN`` and one of the discriminator on its relativistic loss. The released code has no training
script: the structure (feature, pixel and relativistic GAN losses on SSP examples, eps <= 16)
is the README's and RDP's description; every weight is an option whose default is ESRGAN's
(NRP is built on BasicSR's ESRGAN): feature 1, pixel 1e-2, adversarial 5e-3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.nrp.defense import NRP
from robench.features import VGG16
from robench.train.gan import discriminator_loss, generator_loss
from robench.train.loop import Schedule, StepResult
from robench.train.self_supervised import SelfSupervisedRecipe, SelfSupervisedTraining, check_weights
from robench.train.trainer import Phase


class NRPRecipe(SelfSupervisedRecipe):
    """NRP's training objective, built from ``nrp:KEY=VALUE,...`` (weights unverified: specs A4 marks them [MEM]).

    Args:
        feature: weight of the L1 feature loss on F (1).
        pixel: weight of the L1 pixel loss (1e-2, ESRGAN's).
        adversarial: weight of the relativistic GAN loss (5e-3, ESRGAN's).
        features, eps, ssp_steps, ssp_step_size, crop, discriminator_width: as
            :class:`~robench.train.self_supervised.SelfSupervisedRecipe`.
    """

    name = "nrp"
    # [CHOICE] Adam (0.9, 0.999), lr 1e-4, batch 16, 20 epochs: ESRGAN's optimiser; the schedule is not released.
    schedule = Schedule(epochs=20, batch_size=16, lr=1e-4, weight_decay=0.0, milestones=(), optimizer="adam")

    def __init__(self, *, features: str = VGG16, eps: float = 16 / 255, ssp_steps: int = 10,
                 ssp_step_size: float = 0.01, crop: int = 128, feature: float = 1.0, pixel: float = 1e-2,
                 adversarial: float = 5e-3, discriminator_width: int = 64):
        super().__init__(features=features, eps=eps, ssp_steps=ssp_steps, ssp_step_size=ssp_step_size, crop=crop,
                         discriminator_width=discriminator_width)
        check_weights(feature=feature, pixel=pixel, adversarial=adversarial)
        self.feature = float(feature)
        self.pixel = float(pixel)
        self.adversarial = float(adversarial)

    def loss(self, features: nn.Module, purifier: nn.Module, discriminator: nn.Module, x: torch.Tensor,
             x_adv: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The purifier's loss terms and their weighted total, and P(x') (unclamped)."""
        purified = purifier(x_adv)
        with torch.no_grad():
            clean_features = features(x)
        terms = {"feature": F.l1_loss(features(purified), clean_features), "pixel": F.l1_loss(purified, x),
                 "adversarial": generator_loss(discriminator, x, purified)}
        terms["total"] = (self.feature * terms["feature"] + self.pixel * terms["pixel"]
                          + self.adversarial * terms["adversarial"])
        return terms, purified


class NRPTraining(SelfSupervisedTraining):
    """A checked ``robench train nrp`` run: the purifier and D, self-supervised (``--target`` optional)."""

    trains = NRP
    recipe_class = NRPRecipe

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch: the purifier's loss and D's, each minimised by its own optimiser."""
        x, x_adv = self.adversarial_batch(x, y, generator)
        discriminator = self.auxiliary["discriminator"]
        terms, purified = self.recipe.loss(self.features(x.device), self.module.generator, discriminator, x, x_adv)
        return StepResult({"purifier": terms["total"], "discriminator": discriminator_loss(discriminator, x, purified)})

    def phases(self) -> list[Phase]:
        """One phase over the schedule's epochs."""
        self.check_crop()
        return [Phase("main", self.schedule, self.step, seed=self.seed, config={"recipe": str(self.recipe.spec)},
                      networks={"purifier": self.module, **self.auxiliary})]
