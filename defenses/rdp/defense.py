"""The ``rdp`` defense: RDP's purification branch P, static or dynamic (Bai et al., specs A2)."""

from __future__ import annotations

import torch

from robench.checkpoint import load_weights
from robench.defense import Defense, seeded_init
from robench.defenses.gaussian_noise import GaussianNoise
from robench.defenses.rdp.networks import PurifierNet
from robench.models.weights import state_dict_from


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"RDP's {name} must be an integer >= 1, got {value!r}")
    return value


class RDP(Defense):
    """RDP's purification branch P in front of the classifier; only P is used at test time.

    P is an encoder-decoder of BN-free residual blocks with no global skip, fully convolutional
    (any input size: 32, 128, 224, 299). Its output is clamped to [0, 1], as NRP's bypass script
    does before the classifier and as the Defense contract requires.

    * Static RDP (default): deterministic and differentiable, attacked directly through P.
    * Dynamic RDP (``noise=0.05``): one Gaussian layer ``x + N(0, noise^2)`` before P, so the
      defense is declared stochastic (EOT applies). ``project_eps`` adds NRP's projection of the
      noisy image into the Linf ball around the input (16/255 in NRP); RDP does not mention it,
      so it is off by default (specs A2).

    Untrained unless ``weights`` is given: the randomly initialised P is the starting point of
    ``robench train rdp``, and evaluating it is meaningless.

    Args:
        width: channels of every residual block (64; not stated by the paper, specs A2's choice).
        blocks: residual blocks in P's encoder and in its decoder each (8; specs A2's choice).
        noise: standard deviation of the dynamic mode's Gaussian layer in [0, 1] pixel units
            (0.05 in the paper), or ``None`` (default) for static RDP.
        project_eps: NRP's projection radius for the dynamic mode, or ``None`` (default).
        init_seed: seed of the random initialisation, so a spec always builds the same module (0).
        weights: path of the defense's state dict (``rdp.state_dict()``, P's weights under
            ``purifier.``) as written by ``robench train rdp``, optionally under a ``"state_dict"`` key; loaded with ``weights_only=True``, its sha256 recorded in
            :attr:`checkpoints` (and so in every cell key).
    """

    differentiable = True
    needs_training = True
    version = "1"
    # ``robench train rdp`` runs this trainer: Algorithm 1 with the reconstruction branch and discriminator.
    trainer = "robench.defenses.rdp.trainer:RDPTraining"

    def __init__(self, *, width: int = 64, blocks: int = 8, noise: "float | None" = None,
                 project_eps: "float | None" = None, init_seed: int = 0, weights: "str | None" = None):
        super().__init__()
        self.width = _positive_int("width", width)
        self.blocks = _positive_int("blocks", blocks)
        if noise is not None and (isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 < noise <= 1):
            raise ValueError(f"RDP's noise must be None (static RDP) or a standard deviation in (0, 1], e.g. 0.05; "
                             f"got {noise!r}")
        if project_eps is not None and noise is None:
            raise ValueError("RDP's project_eps belongs to the dynamic mode: give noise=0.05 as well")
        self.noise = noise
        self.noise_layer = None if noise is None else GaussianNoise(sigma=noise, project_eps=project_eps)
        self.stochastic = noise is not None
        with seeded_init("RDP", init_seed):
            self.purifier = PurifierNet(width=width, blocks=blocks)
        self.weights = None if weights is None else str(weights)
        self._checkpoints = {} if weights is None else load_weights(self, weights, state_dict_from)


    def purify(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise_layer is not None:
            x = self.noise_layer(x)
        dtype = next(self.purifier.parameters()).dtype
        return self.purifier(x.to(dtype)).clamp(0, 1).to(x.dtype)
