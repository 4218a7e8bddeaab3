"""The ``ape-gan`` defense: APE-GAN's generator in front of the classifier (Shen et al. 2017 / Jin et al. 2019; specs A5)."""

from __future__ import annotations

import torch

from robench.checkpoint import load_weights
from robench.defense import Defense, seeded_init
from robench.defenses.ape_gan.networks import Generator
from robench.hyper import check_positive_int
from robench.models.weights import state_dict_from


class APEGAN(Defense):
    """APE-GAN (Jin et al., "APE-GAN: Adversarial Perturbation Elimination with GAN", ICASSP 2019):
    a generator trained to map adversarial images to clean ones.

    The official TF1 variant (specs A5): 5x5 stride-2 convolutions with TF's SAME padding, batch
    norm, LeakyReLU 0.2, tanh output, for 28x28 (MNIST) and 32x32 (CIFAR-10) images. The
    generator works in [-1, 1], as the official code; the defense maps robench's [0, 1] images
    there and back, so its output is in [0, 1]. Deterministic and fully differentiable.

    Untrained unless ``weights`` is given (a checkpoint of ``robench train ape-gan``). The
    official TF checkpoints are not read.

    Args:
        channels: image channels (3; 1 for MNIST).
        width: channels of the generator's first convolution (64, the official code's).
        init_seed: seed of the random initialisation (0).
        weights: path of a state dict (loaded with ``weights_only=True``, its sha256 in the cell key).
    """

    differentiable = True
    needs_training = True
    version = "1"
    trainer = "robench.defenses.ape_gan.trainer:APEGANTraining"

    def __init__(self, *, channels: int = 3, width: int = 64, init_seed: int = 0, weights: "str | None" = None):
        super().__init__()
        check_positive_int("channels", channels)
        check_positive_int("width", width)
        with seeded_init("APE-GAN", init_seed):
            self.generator = Generator(channels=channels, width=width)
        self.weights = None if weights is None else str(weights)
        self._checkpoints = {} if weights is None else load_weights(self, weights, state_dict_from)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.generator.parameters()).dtype
        return ((self.generator(x.to(dtype) * 2 - 1) + 1) / 2).to(x.dtype)
