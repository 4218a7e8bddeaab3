"""``robench train rdp``: RDP's self-supervised two-branch training (Bai et al., Algorithm 1; specs A2).

Every batch: random crops x, self-supervised adversarial examples x' by the ``ssp`` attack on the
frozen feature extractor F (Eq. 1), then one Adam step of the purifier P on L_P (Eq. 6), of the
reconstruction branch R on L_R (Eq. 9) and of the discriminator D on its relativistic loss, each
on its own loss (:func:`robench.train.fit` with three networks). Only P is saved: the checkpoint
loads as ``rdp:weights=PATH``; R and D live in the resume file.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from robench.defenses.rdp.defense import RDP
from robench.defenses.rdp.losses import Weights, discriminator_loss, purifier_loss, reconstruction_loss
from robench.defenses.rdp.networks import Discriminator, ReconstructionNet
from robench.features import VGG16
from robench.hyper import check_positive, check_positive_int
from robench.spec import Spec, SpecError, parse_eps
from robench.threat import ThreatModel
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase


class RDPRecipe(Recipe):
    """RDP's training objective (specs A2, "Losses" and "Training recipe"), built from ``rdp:KEY=VALUE,...``.

    Per batch: a random ``crop`` x ``crop`` crop of every image (its own offset; the paper's 128),
    x' = :class:`~robench.attacks.ssp.SSP` on ``features`` within the Linf ``eps`` ball (Eq. 1;
    16/255), then the losses of :mod:`robench.defenses.rdp.losses` with the paper's weights.

    Choices where the paper is silent (documented options): ``features`` (default ``vgg16``,
    VGG-16 relu3_3 as NRP; a registered classifier's layer such as
    ``"resnet18-standard:layer=net.layer2"`` trains offline and on CIFAR-10); ``ssp_steps`` (10)
    and ``ssp_step_size`` (0.01, NRP's step; NRP runs 100 steps offline, 10 keep on-the-fly
    generation affordable); the discriminator's width (64); and the schedule: Adam
    (0.9, 0.999) at lr 1e-4 for P, R and D, batch 48 (the paper's), 20 epochs, no decay.

    Args:
        features: spec of the frozen feature extractor F (:mod:`robench.features`).
        eps: Linf budget of the self-supervised attack (16/255).
        ssp_steps: its iterations (10).
        ssp_step_size: its step (0.01).
        crop: side of the random training crops (128); at most the images' side.
        pixel: alpha1, weight of P's pixel loss (1e-2).
        latent: alpha2, weight of the latent loss (1e-1).
        adversarial: alpha3, weight of the relativistic GAN loss (1e-4).
        reconstruction_pixel: beta, weight of R's pixel loss (1e-4).
        discriminator_width: channels of D's first stage (64).
    """

    name = "rdp"
    schedule = Schedule(epochs=20, batch_size=48, lr=1e-4, weight_decay=0.0, milestones=(), optimizer="adam")

    def __init__(self, *, features: str = VGG16, eps: float = 16 / 255, ssp_steps: int = 10,
                 ssp_step_size: float = 0.01, crop: int = 128, pixel: float = 1e-2, latent: float = 1e-1,
                 adversarial: float = 1e-4, reconstruction_pixel: float = 1e-4, discriminator_width: int = 64):
        self.features = str(features)
        self.eps = parse_eps(eps)
        check_positive_int("ssp_steps", ssp_steps)
        check_positive("ssp_step_size", ssp_step_size)
        check_positive_int("crop", crop)
        check_positive_int("discriminator_width", discriminator_width)
        for name, value in (("pixel", pixel), ("latent", latent), ("adversarial", adversarial),
                            ("reconstruction_pixel", reconstruction_pixel)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.ssp_steps = ssp_steps
        self.ssp_step_size = float(ssp_step_size)
        self.crop = crop
        self.pixel = float(pixel)
        self.latent = float(latent)
        self.adversarial = float(adversarial)
        self.reconstruction_pixel = float(reconstruction_pixel)
        self.discriminator_width = discriminator_width

    @property
    def weights(self) -> Weights:
        return Weights(self.pixel, self.latent, self.adversarial, self.reconstruction_pixel)

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel("Linf", self.eps)

    def random_crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A ``crop`` x ``crop`` window of every image of ``x`` (B, C, H, W), each at its own random offset."""
        b, c, h, w = x.shape
        if (h, w) == (self.crop, self.crop):
            return x
        top = torch.randint(0, h - self.crop + 1, (b,), generator=generator, device=x.device)
        left = torch.randint(0, w - self.crop + 1, (b,), generator=generator, device=x.device)
        span = torch.arange(self.crop, device=x.device)
        rows = (top[:, None] + span)[:, None, :, None].expand(b, c, self.crop, w)
        cols = (left[:, None] + span)[:, None, None, :].expand(b, c, self.crop, self.crop)
        return x.gather(2, rows).gather(3, cols)


class RDPTraining(DefenseTrainer):
    """A checked ``robench train rdp`` run: P, R and D trained together, self-supervised (no target needed).

    ``--target`` is optional: given one, every epoch measures ``target(rdp(x))`` on held-out images
    (the card's accuracies). One phase, seeded with ``seed``; R and D are initialised from
    ``seed`` too, so a rerun of the same command resumes or reproduces the same weights.
    """

    trains = RDP
    recipe_class = RDPRecipe
    needs_target = False

    @classmethod
    def check_data(cls, data, dataset_spec: Spec) -> None:
        channels, height, width = data.image_shape
        if channels != 3:
            raise TrainingError(f"RDP purifies RGB images; {str(dataset_spec)!r} images have {channels} channels")

    def features(self, device: torch.device) -> nn.Module:
        """The frozen feature extractor F of the losses: the self-supervised attack's own (one copy)."""
        try:
            return self.attack.features(device)
        except (SpecError, ValueError, OSError, LookupError) as err:
            raise TrainingError(f"rdp:features={self.recipe.features!r}: {err}") from None

    @cached_property
    def auxiliary(self) -> dict[str, nn.Module]:
        """R and D, initialised from the run's seed (trained with P, kept in the resume file, not saved)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            purifier = self.module.purifier
            width, blocks = purifier.encoder.head.out_channels, len(purifier.encoder.body)
            return {"reconstruction": ReconstructionNet(width=width, blocks=blocks),
                    "discriminator": Discriminator(width=self.recipe.discriminator_width)}

    @cached_property
    def attack(self):
        from robench.attacks.ssp import SSP

        return SSP(steps=self.recipe.ssp_steps, step_size=self.recipe.ssp_step_size, features=self.recipe.features)

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch of Algorithm 1: the three losses, each minimised by its own network's optimiser."""
        recipe, features = self.recipe, self.features(x.device)
        reconstruction, discriminator = self.auxiliary["reconstruction"], self.auxiliary["discriminator"]
        x = recipe.random_crop(x, generator)
        x_adv = self.attack(nn.Identity(), x, y, recipe.threat)
        purifier = self.module.purifier
        terms, purified, latent = purifier_loss(features, discriminator, purifier, x, x_adv, recipe.weights)
        rebuilt = reconstruction_loss(features, reconstruction, x_adv, latent, recipe.weights)
        return StepResult({"purifier": terms["total"], "reconstruction": rebuilt["total"],
                           "discriminator": discriminator_loss(discriminator, x, purified)})

    def phases(self) -> list[Phase]:
        """One phase: Algorithm 1 over the schedule's epochs."""
        images = self.train.x.shape[-2:]
        if min(images) < self.recipe.crop:
            raise TrainingError(
                f"RDP trains on random {self.recipe.crop}x{self.recipe.crop} crops, but the images are "
                f"{images[0]}x{images[1]}; pass a smaller crop, e.g. rdp:crop={min(images)}"
            )
        self.features(torch.device("cpu"))  # a bad features spec fails before any epoch
        networks = {"purifier": self.module, **self.auxiliary}
        return [Phase("main", self.schedule, self.step, seed=self.seed,
                      config={"recipe": str(self.recipe.spec)}, networks=networks)]
