"""``robench train sr``: EDSR x2 trained with the L1 loss on bicubic pairs, as EDSR-PyTorch trains it (Lim et al. 2017).

Every batch: a random ``patch`` x ``patch`` window of each training image (the high-resolution
target HR; EDSR's ``--patch_size 192``), a random horizontal flip, vertical flip and 90-degree
rotation each with probability 1/2 (EDSR's augmentation), the low-resolution input LR = HR
downscaled x2 by antialiased bicubic interpolation (a = -0.5, as MATLAB's ``imresize`` that makes
DIV2K's LR images) rounded to 8 bits, and one Adam step on ``L1(EDSR(LR), HR)`` in [0, 255] units.
EDSR-PyTorch's schedule: Adam (0.9, 0.999), lr 1e-4 halved after epoch 200 of 300, batch 16; its
epochs are 1,000 batches, robench's are passes over the dataset. The wavelet step has nothing to
learn; the checkpoint (EDSR's weights) loads as ``sr:weights=PATH``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.defenses.sr.defense import SR
from robench.defenses.sr.edsr import RGB_RANGE, SCALE
from robench.hyper import check_positive_int
from robench.train.augment import random_flip
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase


def random_patches(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A ``size`` x ``size`` window of every image of ``x`` (B, C, H, W), each at its own random offset."""
    b, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    top = torch.randint(0, h - size + 1, (b,), generator=generator, device=x.device)
    left = torch.randint(0, w - size + 1, (b,), generator=generator, device=x.device)
    span = torch.arange(size, device=x.device)
    rows = (top[:, None] + span)[:, None, :, None].expand(b, c, size, w)
    cols = (left[:, None] + span)[:, None, None, :].expand(b, c, size, size)
    return x.gather(2, rows).gather(3, cols)


def flips_and_rotations(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """EDSR's augmentation of square patches: left-right flip, up-down flip, transpose, each with probability 1/2."""
    x = random_flip(x, generator)
    x = random_flip(x.transpose(2, 3), generator).transpose(2, 3)  # up-down
    transpose = torch.rand(len(x), generator=generator, device=x.device) < 0.5
    return torch.where(transpose[:, None, None, None], x.transpose(2, 3), x)


def downscale(hr: torch.Tensor) -> torch.Tensor:
    """The x2 low-resolution image: antialiased bicubic, rounded to 8 bits (DIV2K's LR images)."""
    lr = F.interpolate(hr, scale_factor=1 / SCALE, mode="bicubic", align_corners=False, antialias=True)
    return (lr.clamp(0, 1) * 255).round() / 255


class SRRecipe(Recipe):
    """EDSR's training objective (Lim et al. 2017, EDSR-PyTorch's defaults), built from ``sr:patch=N``.

    Args:
        patch: side of the high-resolution training patches, even (192, EDSR's; at most the images' side).
    """

    name = "sr"
    schedule = Schedule(epochs=300, batch_size=16, lr=1e-4, weight_decay=0.0, milestones=(200,), gamma=0.5,
                        optimizer="adam")

    def __init__(self, *, patch: int = 192):
        check_positive_int("patch", patch)
        if patch % SCALE:
            raise ValueError(f"patch must be even (x{SCALE} pairs), got {patch}")
        self.patch = patch

    def pairs(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(LR, HR) training pairs from a batch of images in [0, 1]."""
        hr = flips_and_rotations(random_patches(x, self.patch, generator), generator)
        return downscale(hr), hr

    def loss(self, model: SR, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """``L1(EDSR(LR), HR)`` in [0, 255] units, as EDSR-PyTorch's ``1*L1`` loss with ``rgb_range`` 255."""
        lr, hr = self.pairs(x, generator)
        return StepResult(F.l1_loss(model.edsr(lr * RGB_RANGE).float(), hr.float() * RGB_RANGE))


class SRTraining(DefenseTrainer):
    """A checked ``robench train sr`` run: EDSR x2 on any registered dataset, no classifier (``--target`` optional)."""

    trains = SR
    recipe_class = SRRecipe
    needs_target = False

    @classmethod
    def plan(cls, recipe, *, augment: "str | None" = None, **options) -> "SRTraining":
        """As :meth:`DefenseTrainer.plan`; the recipe augments (patches, flips, rotations), so ``augment`` is none."""
        if augment not in (None, "none"):
            raise TrainingError(f"robench train sr augments as EDSR does (random patches, flips, rotations); "
                                f"--augment {augment} would add zero-padded crops: leave it out")
        run = super().plan(recipe, augment="none", **options)
        run.check_images()
        return run

    def check_images(self) -> None:
        """Refuse training images that are not RGB or smaller than the recipe's patch."""
        shape = tuple(self.train.x.shape[1:])
        if shape[0] != 3 or min(shape[1:]) < self.recipe.patch:
            raise TrainingError(f"{str(self.dataset_spec)!r} has images {shape}; EDSR trains on RGB images of at "
                                f"least the patch side {self.recipe.patch}: train sr:patch=N with an even N <= "
                                f"{min(shape[1:])}")

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One batch's L1 loss."""
        return self.recipe.loss(self.module, x, y, generator)

    def phases(self) -> list[Phase]:
        """One phase: the L1 loss over the schedule's epochs."""
        return [Phase("main", self.schedule, self.step, seed=self.seed, config={"recipe": str(self.recipe.spec)})]
