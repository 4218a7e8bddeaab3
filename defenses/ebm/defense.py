"""The ``ebm`` defense: long-run Langevin purification with a convergent EBM (Hill et al., ICLR 2021; specs A15)."""

from __future__ import annotations

import torch

from robench.checkpoint import load_weights
from robench.defense import Defense, seeded_init
from robench.defenses.ebm.networks import EnergyNet, langevin
from robench.hyper import check_positive, check_positive_int
from robench.models.weights import state_dict_under


class EBMPurification(Defense):
    """EBM purification (Hill et al., "Stochastic Security: Adversarial Defense Using Long-Run Dynamics
    of Energy-Based Models", ICLR 2021): ``steps`` Langevin steps from the input on a convergent EBM.

    The input is mapped to [-1, 1], updated by ``x <- x - grad U(x) + noise * N(0, I)`` (the
    released ``purify``), mapped back and clamped to [0, 1] ([CHOICE]: the released code feeds
    its [-1, 1] classifier the unclamped chain). Stochastic (fresh noise in every call) and, as
    its authors attack it, not differentiated through: attacks use BPDA (identity) with EOT. A
    batch runs all its chains at once, so the EOT view's draws are parallel chains.

    Where robench differs: the paper classifies by the logits averaged over 150 chains; robench
    scores each draw (one chain) separately, with ``draws`` and ``eot`` from the benchmark file.

    Untrained unless ``weights`` is given: a checkpoint of ``robench train ebm`` or the released
    ``ebm.pth`` (keys ``f.*``, loaded unchanged).

    Args:
        steps: Langevin steps (1500, the released purification).
        noise: standard deviation of each step's noise in [-1, 1] units (0.01, ``langevin_eps``).
        width: channels of the energy network's first convolution (32).
        init_seed: seed of the random initialisation (0).
        weights: path of a state dict (loaded with ``weights_only=True``, its sha256 in the cell key).
    """

    stochastic = True
    differentiable = False
    needs_training = True
    version = "1"
    trainer = "robench.defenses.ebm.trainer:EBMTraining"

    def __init__(self, *, steps: int = 1500, noise: float = 0.01, width: int = 32, init_seed: int = 0,
                 weights: "str | None" = None):
        super().__init__()
        check_positive_int("steps", steps)
        check_positive("noise", noise)
        check_positive_int("width", width)
        self.steps, self.noise = steps, float(noise)
        with seeded_init("the EBM", init_seed):
            self.energy = EnergyNet(width=width)
        self.weights = None if weights is None else str(weights)
        self._checkpoints = {} if weights is None else load_weights(self, weights, state_dict_under("energy."))

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.energy.parameters()).dtype
        chains = langevin(self.energy, x.to(dtype) * 2 - 1, steps=self.steps, noise=self.noise)
        return ((chains + 1) / 2).clamp(0, 1).to(x.dtype)

