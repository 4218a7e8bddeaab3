"""``robench train ape-gan``: APE-GAN's adversarial training of its generator in front of a fixed target (specs A5).

Every batch: x' crafted against the frozen target (FGSM, as the original work, or PGD-5, as DIR
retrains APE-GAN on CIFAR-10), then one Adam step of D on ``BCE(D(x), 1) + BCE(D(G(x')), 0)`` and
two of G on ``0.3 BCE(D(G(x')), 1) + 0.7 RMSE(G(x'), x)``, all in the generator's [-1, 1] range.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from robench.defenses.ape_gan.defense import APEGAN
from robench.defenses.ape_gan.networks import Discriminator
from robench.hyper import check_positive, check_positive_int
from robench.spec import Spec, parse_eps
from robench.threat import ThreatModel
from robench.train.inner import evaluating, perturb
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.self_supervised import check_weights
from robench.train.trainer import DefenseTrainer, Phase

ATTACKS = ("fgsm", "pgd")


def rmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Square root of the mean squared error over the batch (APE-GAN's reconstruction term)."""
    return F.mse_loss(x, y).sqrt()


class APEGANRecipe(Recipe):
    """APE-GAN's objective and training adversaries, built from ``ape-gan:KEY=VALUE,...`` (specs A5).

    Args:
        attack: ``fgsm`` (the original work's, one step of ``eps``) or ``pgd`` (``steps`` steps
            of ``step_size`` from a uniform random start: DIR's retraining on CIFAR-10).
        eps: Linf budget of the training adversaries (8/255, DIR's threat model; the original
            work's FGSM budget is not recorded in the spec).
        steps, step_size: PGD's iterations and step (5, 2/255: DIR's training attack).
        adversarial: weight of G's BCE term (0.3).
        reconstruction: weight of G's RMSE term (0.7).
        generator_updates: G's optimiser steps per batch (2, the official code: "to make sure
            that d_loss does not go to zero"); robench takes D's step and G's first one on the
            same forward pass, where the official code recomputes G's loss after D's step.
        discriminator_width: channels of D's first convolution (64).
    """

    name = "ape-gan"
    # Adam lr 2e-4, beta1 0.5, batch 64, 2 epochs: the official code's defaults (specs A5).
    schedule = Schedule(epochs=2, batch_size=64, lr=2e-4, weight_decay=0.0, milestones=(), optimizer="adam",
                        betas=(0.5, 0.999))

    def __init__(self, *, attack: str = "fgsm", eps: float = 8 / 255, steps: int = 5, step_size: float = 2 / 255,
                 adversarial: float = 0.3, reconstruction: float = 0.7, generator_updates: int = 2,
                 discriminator_width: int = 64):
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {', '.join(ATTACKS)}, got {attack!r}")
        self.attack = attack
        self.eps = parse_eps(eps)
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        check_weights(adversarial=adversarial, reconstruction=reconstruction)
        check_positive_int("generator_updates", generator_updates)
        check_positive_int("discriminator_width", discriminator_width)
        self.steps = steps
        self.step_size = float(step_size)
        self.adversarial = float(adversarial)
        self.reconstruction = float(reconstruction)
        self.generator_updates = generator_updates
        self.discriminator_width = discriminator_width

    def adversarial_examples(self, target: nn.Module, x: torch.Tensor, y: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
        """x': FGSM or PGD on the target's cross-entropy, the target in eval mode."""
        threat = ThreatModel("Linf", self.eps)
        fgsm = self.attack == "fgsm"
        with evaluating(target):
            return perturb(target, x, lambda logits: F.cross_entropy(logits.float(), y), threat,
                           step_size=self.eps if fgsm else self.step_size, steps=1 if fgsm else self.steps,
                           start="none" if fgsm else "uniform", generator=generator)

    def losses(self, generator_net: nn.Module, discriminator: nn.Module, x: torch.Tensor,
               x_adv: torch.Tensor) -> dict[str, torch.Tensor]:
        """G's and D's losses on one batch of clean ``x`` and adversarial ``x_adv`` in [0, 1] (specs A5)."""
        clean, restored = x * 2 - 1, generator_net(x_adv * 2 - 1)
        real, fake = discriminator(clean), discriminator(restored.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        fooled = discriminator(restored)
        g_loss = (self.adversarial * F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
                  + self.reconstruction * rmse(restored, clean))
        return {"generator": g_loss, "discriminator": d_loss}


class APEGANTraining(DefenseTrainer):
    """A checked ``robench train ape-gan`` run: G and D on adversarial examples of the fixed ``--target``."""

    trains = APEGAN
    recipe_class = APEGANRecipe

    @classmethod
    def check_data(cls, data, dataset_spec: Spec) -> None:
        h, w = data.image_shape[1:]
        if h % 4 or w % 4:
            raise TrainingError(f"APE-GAN's networks take sides that are multiples of 4 (28, 32); "
                                f"{str(dataset_spec)!r} images are {h}x{w}")

    @cached_property
    def discriminator(self) -> Discriminator:
        """D, built once from the run's seed for the images' size and channels."""
        channels, side = self.train.x.shape[1], self.train.x.shape[-1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return Discriminator(channels=channels, width=self.recipe.discriminator_width, side=side)

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch: x' against the target, then D's and G's losses; G's again after the update."""
        x_adv = self.recipe.adversarial_examples(self.target, x, y, generator)
        net, discriminator = self.module.generator, self.discriminator
        return StepResult(self.recipe.losses(net, discriminator, x, x_adv),
                          recompute=lambda: self.recipe.losses(net, discriminator, x, x_adv))

    def phases(self) -> list[Phase]:
        """One phase over the schedule's epochs; G updated ``generator_updates`` times per batch."""
        return [Phase("main", self.schedule, self.step, seed=self.seed, config={"recipe": str(self.recipe.spec)},
                      networks={"generator": self.module, "discriminator": self.discriminator},
                      updates={"generator": self.recipe.generator_updates})]
