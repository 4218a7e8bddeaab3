"""The shared part of the purifiers trained on self-supervised adversarial examples (NRP, Naseer et
al. CVPR 2020; RDP, Bai et al.): random crops, x' from the ``ssp`` attack on a frozen feature
extractor F (RDP Eq. 1), and a relativistic discriminator; each purifier adds its losses.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, ClassVar

import torch
from torch import nn

from robench.features import VGG16
from robench.hyper import check_positive, check_positive_int
from robench.spec import Spec, SpecError, parse_eps
from robench.threat import ThreatModel
from robench.train.gan import Discriminator
from robench.train.loop import TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer


def check_weights(**weights: float) -> None:
    """Refuse a loss weight that is not a number >= 0, naming it."""
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


class SelfSupervisedRecipe(Recipe):
    """The hyperparameters every SSP-trained purifier shares (a subclass adds its loss weights).

    Args:
        features: spec of the frozen feature extractor F (:mod:`robench.features`; ``vgg16``).
        eps: Linf budget of the self-supervised attack (16/255, NRP and RDP).
        ssp_steps: its iterations (10; NRP's ``ssp.py`` runs 100 offline, 10 keep on-the-fly
            generation affordable; RDP does not say).
        ssp_step_size: its step (0.01, NRP's).
        crop: side of the random training crops (128, RDP's); at most the images' side.
        discriminator_width: channels of D's first stage (64).
    """

    def __init__(self, *, features: str = VGG16, eps: float = 16 / 255, ssp_steps: int = 10,
                 ssp_step_size: float = 0.01, crop: int = 128, discriminator_width: int = 64):
        self.features = str(features)
        self.eps = parse_eps(eps)
        check_positive_int("ssp_steps", ssp_steps)
        check_positive("ssp_step_size", ssp_step_size)
        check_positive_int("crop", crop)
        check_positive_int("discriminator_width", discriminator_width)
        self.ssp_steps = ssp_steps
        self.ssp_step_size = float(ssp_step_size)
        self.crop = crop
        self.discriminator_width = discriminator_width

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


class SelfSupervisedTraining(DefenseTrainer):
    """A purifier trained without labels: ``--target`` is optional (it only scores each epoch).

    Gives a subclass :meth:`adversarial_batch` (crops and their SSP examples), :meth:`features`
    (F, the attack's own copy), :attr:`auxiliary` (the networks trained beside the purifier, D by
    default, built in order from the run's seed, resumed, not saved) and :meth:`check_crop`; the
    subclass writes its step and phases.
    """

    needs_target: ClassVar[bool] = False

    @classmethod
    def check_data(cls, data, dataset_spec: Spec) -> None:
        channels = data.image_shape[0]
        if channels != 3:
            raise TrainingError(f"{cls.trains.__name__} purifies RGB images; {str(dataset_spec)!r} images have "
                                f"{channels} channels")

    @cached_property
    def attack(self):
        """The ``ssp`` attack that makes x' (RDP Eq. 1)."""
        from robench.attacks.ssp import SSP

        return SSP(steps=self.recipe.ssp_steps, step_size=self.recipe.ssp_step_size, features=self.recipe.features)

    def features(self, device: torch.device) -> nn.Module:
        """The frozen feature extractor F of the losses: the self-supervised attack's own (one copy)."""
        try:
            return self.attack.features(device)
        except (SpecError, ValueError, OSError, LookupError) as err:
            raise TrainingError(f"{self.recipe.name}:features={self.recipe.features!r}: {err}") from None

    def auxiliary_networks(self) -> dict[str, Callable[[], nn.Module]]:
        """Factories of the networks trained beside the purifier, in the order they are initialised."""
        return {"discriminator": lambda: Discriminator(width=self.recipe.discriminator_width)}

    @cached_property
    def auxiliary(self) -> dict[str, nn.Module]:
        """The networks of :meth:`auxiliary_networks`, initialised one after the other from the run's seed."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return {name: make() for name, make in self.auxiliary_networks().items()}

    def check_crop(self) -> None:
        """Refuse crops larger than the images, and a bad F, before any epoch."""
        images = self.train.x.shape[-2:]
        crop = self.recipe.crop
        if min(images) < crop:
            raise TrainingError(f"{self.recipe.name} trains on random {crop}x{crop} crops, but the images are "
                                f"{images[0]}x{images[1]}; pass a smaller crop, e.g. {self.recipe.name}:crop={min(images)}")
        self.features(torch.device("cpu"))

    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """Random crops of ``x`` and their self-supervised adversarial examples x' (the attack ignores labels)."""
        x = self.recipe.random_crop(x, generator)
        return x, self.attack(nn.Identity(), x, y, self.recipe.threat)
