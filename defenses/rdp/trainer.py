"""``robench train rdp``: RDP's self-supervised two-branch training (Bai et al., Algorithm 1; specs A2).

Every batch: random crops x, self-supervised adversarial examples x' by the ``ssp`` attack on the
frozen feature extractor F (Eq. 1), then one Adam step of the purifier P on L_P (Eq. 6), of the
reconstruction branch R on L_R (Eq. 9) and of the discriminator D on its relativistic loss, each
on its own loss (:func:`robench.train.fit` with three networks). Only P is saved: the checkpoint
loads as ``rdp:weights=PATH``; R and D live in the resume file.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robench.defenses.rdp.defense import RDP
from robench.defenses.rdp.losses import Weights, purifier_loss, reconstruction_loss
from robench.defenses.rdp.networks import ReconstructionNet
from robench.features import VGG16
from robench.train.gan import discriminator_loss
from robench.train.loop import Schedule, StepResult
from robench.train.self_supervised import SelfSupervisedRecipe, SelfSupervisedTraining, check_weights
from robench.train.trainer import Phase


class RDPRecipe(SelfSupervisedRecipe):
    """RDP's training objective (specs A2, "Losses" and "Training recipe"), built from ``rdp:KEY=VALUE,...``.

    Per batch: a random ``crop`` x ``crop`` crop of every image (the paper's 128), x' =
    :class:`~robench.attacks.ssp.SSP` on ``features`` within the Linf ``eps`` ball (Eq. 1; 16/255),
    then the losses of :mod:`robench.defenses.rdp.losses` with the paper's weights.

    Choices where the paper is silent (documented options, see
    :class:`~robench.train.self_supervised.SelfSupervisedRecipe`): ``features`` (default ``vgg16``,
    VGG-16 relu3_3 as NRP; a registered classifier's layer such as
    ``"convex-cifar-small:layer=net.3"`` trains offline and on CIFAR-10), ``ssp_steps`` (10),
    ``ssp_step_size`` (0.01), the discriminator's width (64); and the schedule: Adam (0.9, 0.999)
    at lr 1e-4 for P, R and D, batch 48 (the paper's), 20 epochs, no decay.

    Args:
        pixel: alpha1, weight of P's pixel loss (1e-2).
        latent: alpha2, weight of the latent loss (1e-1).
        adversarial: alpha3, weight of the relativistic GAN loss (1e-4).
        reconstruction_pixel: beta, weight of R's pixel loss (1e-4).
        features, eps, ssp_steps, ssp_step_size, crop, discriminator_width: as the base recipe.
    """

    name = "rdp"
    schedule = Schedule(epochs=20, batch_size=48, lr=1e-4, weight_decay=0.0, milestones=(), optimizer="adam")

    def __init__(self, *, features: str = VGG16, eps: float = 16 / 255, ssp_steps: int = 10,
                 ssp_step_size: float = 0.01, crop: int = 128, pixel: float = 1e-2, latent: float = 1e-1,
                 adversarial: float = 1e-4, reconstruction_pixel: float = 1e-4, discriminator_width: int = 64):
        super().__init__(features=features, eps=eps, ssp_steps=ssp_steps, ssp_step_size=ssp_step_size, crop=crop,
                         discriminator_width=discriminator_width)
        check_weights(pixel=pixel, latent=latent, adversarial=adversarial, reconstruction_pixel=reconstruction_pixel)
        self.pixel = float(pixel)
        self.latent = float(latent)
        self.adversarial = float(adversarial)
        self.reconstruction_pixel = float(reconstruction_pixel)

    @property
    def weights(self) -> Weights:
        return Weights(self.pixel, self.latent, self.adversarial, self.reconstruction_pixel)


class RDPTraining(SelfSupervisedTraining):
    """A checked ``robench train rdp`` run: P, R and D trained together, self-supervised (no target needed).

    ``--target`` is optional: given one, every epoch measures ``target(rdp(x))`` on held-out images
    (the card's accuracies). One phase, seeded with ``seed``; R and D are initialised from
    ``seed`` too, so a rerun of the same command resumes or reproduces the same weights.
    """

    trains = RDP
    recipe_class = RDPRecipe

    def auxiliary_networks(self) -> dict[str, Callable[[], nn.Module]]:
        """R (shaped like P), then D."""
        purifier = self.module.purifier
        return {"reconstruction": lambda: ReconstructionNet(width=purifier.encoder.head.out_channels,
                                                            blocks=len(purifier.encoder.body)),
                **super().auxiliary_networks()}

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch of Algorithm 1: the three losses, each minimised by its own network's optimiser."""
        recipe, features = self.recipe, self.features(x.device)
        x, x_adv = self.adversarial_batch(x, y, generator)
        reconstruction, discriminator = self.auxiliary["reconstruction"], self.auxiliary["discriminator"]
        terms, purified, latent = purifier_loss(features, discriminator, self.module.purifier, x, x_adv, recipe.weights)
        rebuilt = reconstruction_loss(features, reconstruction, x_adv, latent, recipe.weights)
        return StepResult({"purifier": terms["total"], "reconstruction": rebuilt["total"],
                           "discriminator": discriminator_loss(discriminator, x, purified)})

    def phases(self) -> list[Phase]:
        """One phase: Algorithm 1 over the schedule's epochs."""
        self.check_crop()
        networks: dict[str, nn.Module] = {"purifier": self.module, **self.auxiliary}
        return [Phase("main", self.schedule, self.step, seed=self.seed,
                      config={"recipe": str(self.recipe.spec)}, networks=networks)]
