"""The ``hgd`` defense: HGD's guided denoiser (Liao et al., CVPR 2018; specs A3)."""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch

from robench.checkpoint import CheckpointError, load_weights
from robench.defense import Defense, seeded_init
from robench.defenses.hgd.networks import DUNET
from robench.models.weights import state_dict_from

OWN_PREFIX = "denoiser."
RELEASED_MARKER = "fwd.0.0.conv.weight"  # the first tensor of a DUNET, whatever the prefix before it


class HGD(Defense):
    """HGD's denoiser DUNET in front of the classifier: ``x + correction(x)``, clamped to [0, 1].

    The denoiser sees images scaled to [-1, 1], as the released Inception-guided denoisers were
    trained (the authors' data pipeline), and its output is mapped back to [0, 1]. Deterministic
    (BatchNorm in eval mode) and differentiable: attacks go through it directly. The DUNET is
    size-specific (its upsampling sizes are fixed at construction): ``input_size=299`` for the
    ImageNet / NIPS 2017 images, ``input_size=32`` for CIFAR-10 and SVHN (DIR's retrained HGD).

    Untrained unless ``weights`` is given: a checkpoint of ``robench train hgd`` (FGD / LGD / CGD /
    pixel-guided training, see its trainer), or the authors' released file for the Inception-v3
    guide (``denoise_incepv3_012.ckpt`` from the README's link: a ``{'state_dict': ...}`` of the
    whole guided model, whose ``net.denoise.*`` tensors load into the DUNET; the guide classifier's
    tensors are not used, the classifier is the cell's model). ``denoise_inres_014.ckpt`` loads the
    same way if its denoiser has the sample's architecture (not verified). The released denoisers
    of ResNet guides take ImageNet mean/std-normalised inputs and are not supported. Evaluating an
    untrained HGD is meaningless.

    Deviation: the output is clamped to [0, 1], as the Defense contract requires; the released code
    passes the unclamped denoised image to the classifier.

    Args:
        input_size: side of the square images the DUNET takes (299).
        width: channels of its first stage (64, the paper's; 11.0 M parameters at 299).
        init_seed: seed of the random initialisation (0).
        weights: path of a checkpoint (loaded with ``weights_only=True``, its sha256 in the cell key).
    """

    differentiable = True
    needs_training = True
    version = "1"
    trainer = "robench.defenses.hgd.trainer:HGDTraining"

    def __init__(self, *, input_size: int = 299, width: int = 64, init_seed: int = 0, weights: "str | None" = None):
        super().__init__()
        with seeded_init("HGD", init_seed):
            self.denoiser = DUNET(input_size=input_size, width=width)
        self.input_size, self.width, self.init_seed = input_size, width, init_seed
        self.weights = None if weights is None else str(weights)
        if weights is None:
            self._checkpoints = {}
        else:
            with _released_arguments():
                self._checkpoints = load_weights(self, weights, _state_dict)

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The DUNET's output for ``x`` in [0, 1], back in [0, 1] units and unclamped (what HGD's training guides)."""
        dtype = next(self.denoiser.parameters()).dtype
        return ((self.denoiser(x.to(dtype) * 2 - 1) + 1) / 2).to(x.dtype)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoise(x).clamp(0, 1)


def _released_arguments():
    """Allow ``argparse.Namespace`` in a checkpoint: the released files store the training script's arguments."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # PyTorch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals is not None else nullcontext()


def _state_dict(obj, source: str) -> dict:
    """The defense's state dict in a checkpoint: robench's own, or the DUNET inside a released guided model."""
    state = state_dict_from(obj, source)
    if any(key.startswith(OWN_PREFIX) for key in state):
        return state
    return released_state_dict(state, source)


def released_state_dict(state: dict, source: str) -> dict:
    """The ``denoiser.*`` tensors of a released HGD state dict (keys ``net.denoise.fwd.0.0.conv.weight``, ...).

    The DUNET's tensors are found by their own names under whatever prefix the file uses; the
    guide classifier's tensors are left out. Files written by PyTorch < 0.4 have no BatchNorm
    ``num_batches_tracked`` counters; they are added as 0 (unused: BatchNorm's momentum is fixed).
    """
    prefixes = sorted({key[: -len(RELEASED_MARKER)] for key in state if key.endswith(RELEASED_MARKER)})
    if len(prefixes) != 1:
        found = f"{len(prefixes)} ({', '.join(map(repr, prefixes))})" if prefixes else "none"
        raise CheckpointError(f"{source} is not an HGD checkpoint: it should hold one DUNET (a tensor named "
                              f"'...{RELEASED_MARKER}'), found {found}")
    prefix = prefixes[0]
    denoiser = {OWN_PREFIX + key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    for key in [k for k in denoiser if k.endswith(".bn.running_mean")]:
        denoiser.setdefault(key.replace("running_mean", "num_batches_tracked"), torch.tensor(0))
    return denoiser
