"""The ``nrp`` defense: NRP's purifier, static or dynamic (Naseer et al., CVPR 2020; specs A4)."""

from __future__ import annotations


import torch

from robench.checkpoint import load_weights
from robench.defense import Defense, seeded_init
from robench.defenses.gaussian_noise import GaussianNoise
from robench.defenses.nrp.networks import ResGenerator, RRDBGenerator
from robench.models.weights import state_dict_under

ARCHS = ("rrdb", "resg")
DYNAMIC_SIGMA = 0.05  # purify.py --dynamic: x + 0.05 N(0, I)
DYNAMIC_EPS = 16 / 255  # ... projected into the 16/255 ball around the input, clamped to [0, 1]


class NRP(Defense):
    """NRP's purifier in front of the classifier; its output is clamped to [0, 1] as NRP's scripts do.

    ``arch="rrdb"`` (default) is the released ``NRP`` (23 RRDB blocks, 16.55 M parameters),
    ``arch="resg"`` the released ``NRP_resG`` (23 BN-free residual blocks, 1.70 M); neither has a
    global skip from the image to the output. ``dynamic=True`` is ``purify.py --dynamic``: Gaussian
    noise (sigma 0.05) projected into the 16/255 ball around the input and clamped, before the
    purifier; the defense is then declared stochastic (EOT applies). Fully differentiable.

    Untrained unless ``weights`` is given (the authors' ``NRP.pth`` / ``NRP_resG.pth``, whose keys
    load unchanged, or a checkpoint of ``robench train nrp``); evaluating it untrained is meaningless.

    Args:
        arch: ``"rrdb"`` or ``"resg"``.
        nf: feature channels (64).
        nb: blocks (23).
        gc: growth channels of the dense blocks (32; ``rrdb`` only).
        dynamic: NRP's dynamic inference (False).
        init_seed: seed of the random initialisation (0).
        weights: path of a state dict (loaded with ``weights_only=True``, its sha256 in the cell key).
    """

    differentiable = True
    needs_training = True
    version = "1"
    trainer = "robench.defenses.nrp.trainer:NRPTraining"

    def __init__(self, *, arch: str = "rrdb", nf: int = 64, nb: int = 23, gc: int = 32, dynamic: bool = False,
                 init_seed: int = 0, weights: "str | None" = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"NRP's arch must be one of {', '.join(ARCHS)}, got {arch!r}")
        for name, value in (("nf", nf), ("nb", nb), ("gc", gc)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NRP's {name} must be a positive integer, got {value!r}")
        if not isinstance(dynamic, bool):
            raise ValueError(f"NRP's dynamic must be true or false, got {dynamic!r}")
        self.arch, self.dynamic = arch, dynamic
        self.stochastic = dynamic
        self.noise = GaussianNoise(sigma=DYNAMIC_SIGMA, project_eps=DYNAMIC_EPS) if dynamic else None
        with seeded_init("NRP", init_seed):
            self.generator = RRDBGenerator(nf=nf, nb=nb, gc=gc) if arch == "rrdb" else ResGenerator(nf=nf, nb=nb)
        self.weights = None if weights is None else str(weights)
        self._checkpoints = {} if weights is None else load_weights(self, weights, state_dict_under("generator."))


    def purify(self, x: torch.Tensor) -> torch.Tensor:
        if self.noise is not None:
            x = self.noise(x)
        dtype = next(self.generator.parameters()).dtype
        return self.generator(x.to(dtype)).clamp(0, 1).to(x.dtype)

