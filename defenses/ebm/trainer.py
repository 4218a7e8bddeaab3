"""``robench train ebm``: maximum-likelihood training of the convergent EBM with persistent short-run chains.

Hill et al. 2021 train the EBM of Nijkamp et al. 2020 (``point0bar1/ebm-defense``'s
``train_ebm.py``, specs A15) on clean images only: per batch, positives are the images plus
N(0, 0.02^2) noise, negatives are 100 Langevin steps from a bank of persistent chains (one per
training image, started from uniform noise), written back to the bank; the loss is
``(U(x+) - U(x-)) / (noise^2 / 2)``; Adam lr 1e-4 for the first half of the updates, then SGD.
"""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from robench.defenses.ebm.defense import EBMPurification
from robench.defenses.ebm.networks import langevin
from robench.hyper import check_positive, check_positive_int
from robench.spec import Spec
from robench.train.loop import Schedule, StepResult, TrainingError
from robench.train.recipes import Recipe
from robench.train.trainer import DefenseTrainer, Phase


class ChainBank(nn.Module):
    """The persistent Langevin chains: ``size`` states in [-1, 1] units, started from uniform noise."""

    def __init__(self, size: int, shape: tuple[int, ...], generator: torch.Generator):
        super().__init__()
        self.register_buffer("states", torch.rand((size, *shape), generator=generator) * 2 - 1)

    def draw(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of ``batch`` distinct chains, drawn at random (the released ``sample_image_set``)."""
        return torch.randperm(len(self.states), generator=generator, device=generator.device)[:batch]


class EBMRecipe(Recipe):
    """The EBM's training objective and sampler, built from ``ebm:KEY=VALUE,...`` (specs A15; the released config).

    Args:
        noise: Langevin noise of the negative chains, in [-1, 1] units (0.01, ``epsilon``).
        data_noise: standard deviation of the noise added to the positives (0.02, ``data_epsilon``).
        chain_steps: Langevin steps per update (100, ``num_shortrun_steps``).
        chains: persistent chains in the bank (0: one per training image, as released).
        sgd_epochs: epochs of the second, SGD phase (250: with batch 100 on CIFAR-10's 50,000
            images, 125,000 of the released 250,000 updates); 0 skips it.
        sgd_lr: its learning rate on the unscaled energy difference (5e-5, ``lr_sgd``; robench
            scales it by ``noise^2 / 2``, as the released code, because the loss is divided by it).
    """

    name = "ebm"
    # The released cifar10_ebm.json: Adam lr 1e-4 for the first 125,000 updates of batch 100
    # (250 epochs of CIFAR-10's 50,000 training images); no weight decay, no schedule.
    schedule = Schedule(epochs=250, batch_size=100, lr=1e-4, weight_decay=0.0, milestones=(), optimizer="adam")

    def __init__(self, *, noise: float = 0.01, data_noise: float = 0.02, chain_steps: int = 100, chains: int = 0,
                 sgd_epochs: int = 250, sgd_lr: float = 5e-5):
        check_positive("noise", noise)
        check_positive("data_noise", data_noise)
        check_positive_int("chain_steps", chain_steps)
        check_positive("sgd_lr", sgd_lr)
        for name, value in (("chains", chains), ("sgd_epochs", sgd_epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        self.noise, self.data_noise = float(noise), float(data_noise)
        self.chain_steps, self.chains = chain_steps, chains
        self.sgd_epochs, self.sgd_lr = sgd_epochs, float(sgd_lr)

    @property
    def scale(self) -> float:
        """The loss's divisor ``noise^2 / 2``: Langevin's step size, absorbed into the energy."""
        return self.noise ** 2 / 2

    def loss(self, energy: nn.Module, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """``(mean U(x+) - mean U(x-)) / (noise^2 / 2)``, the released maximum-likelihood gradient's loss."""
        return (energy(positives).mean() - energy(negatives).mean()) / self.scale


class EBMTraining(DefenseTrainer):
    """A checked ``robench train ebm`` run: the energy network on clean images (``--target`` optional)."""

    trains = EBMPurification
    recipe_class = EBMRecipe
    needs_target = False

    @classmethod
    def check_data(cls, data, dataset_spec: Spec) -> None:
        if tuple(data.image_shape) != (3, 32, 32):
            raise TrainingError(f"the EBM is built for 32x32 RGB images; {str(dataset_spec)!r} images are "
                                f"{'x'.join(map(str, data.image_shape))}")

    @cached_property
    def bank(self) -> ChainBank:
        """The persistent chains, drawn from the run's seed."""
        size = self.recipe.chains or len(self.train)
        return ChainBank(size, tuple(self.train.x.shape[1:]), torch.Generator().manual_seed(self.seed))

    def step(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> StepResult:
        """One update: noisy positives, negatives from the bank's chains (written back), the loss."""
        recipe, energy, states = self.recipe, self.module.energy, self.bank.states
        positives = x * 2 - 1 + recipe.data_noise * torch.randn(x.shape, generator=generator, device=x.device)
        chains = self.bank.draw(len(x), generator)
        negatives = langevin(energy, states[chains], steps=recipe.chain_steps, noise=recipe.noise,
                             generator=generator)
        states[chains] = negatives
        return StepResult({"energy": recipe.loss(energy, positives, negatives)})

    def phases(self) -> list[Phase]:
        """Adam for ``--epochs``, then SGD for ``sgd_epochs``, the bank carried through both."""
        recipe = self.recipe
        sgd = None if recipe.sgd_epochs == 0 else Schedule(
            epochs=recipe.sgd_epochs, batch_size=self.schedule.batch_size, lr=recipe.sgd_lr * recipe.scale,
            momentum=0.0, weight_decay=0.0, milestones=())
        config = {"recipe": str(recipe.spec)}
        networks, persistent = {"energy": self.module}, {"chains": self.bank}
        return [Phase("adam", self.schedule, self.step, seed=self.seed, config=config, networks=networks,
                      persistent=persistent),
                Phase("main", sgd, self.step, seed=self.seed + 1, config=config, networks=networks,
                      persistent=persistent)]
