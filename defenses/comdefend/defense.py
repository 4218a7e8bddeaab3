"""The ``comdefend`` defense: ComCNN -> noisy binary code -> RecCNN (Jia et al., CVPR 2019; specs A7)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from robench.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from robench.defense import Defense, DefenseInputError, seeded_init
from robench.defenses.comdefend.networks import (
    ComCNN, RecCNN, decoder_channels, encoder_channels, stack_channels, tiled,
)
from robench.defenses.comdefend.official import decoder_path_for, is_official, read_official
from robench.models.weights import state_dict_from

THRESHOLD = 0.5  # the official scripts binarise the noisy sigmoid code at 0.5


def _optional_positive_int(name: str, value) -> "int | None":
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"ComDefend's {name} must be None (from the weights) or an integer >= 1, got {value!r}")
    return value


class ComDefend(Defense):
    """ComDefend (Jia et al., "ComDefend: An Efficient Image Compression Model to Defend Adversarial
    Examples", CVPR 2019): ComCNN compresses the image to a binary code, RecCNN reconstructs it.

    At test time, as both official scripts do, the code is ``sigmoid(ComCNN(x - 0.5) - sigma * N(0, 1))``
    thresholded at 0.5, so the defense is stochastic (``sigma > 0``) and not differentiable: the
    runner attacks it with BPDA through :meth:`surrogate`, a straight-through estimator that
    forwards the binarised code and back-propagates through the sigmoid code, and with EOT over the
    noise. With ``sigma=0`` it is deterministic.

    Where robench differs from the released code (specs A7):

    * the input is shifted by -0.5 before ComCNN always, as the TF scripts whose weights load here
      do; the PyTorch trainer feeds [0, 1] directly (``robench train comdefend`` shifts too);
    * the binarisation is ``> 0.5`` (TF) rather than ``round`` (PyTorch): they differ only at 0.5;
    * ``tile=32`` cuts images into 32x32 tiles compressed independently, as the official ImageNet
      script does for 224x224 images; sides that are not multiples of 32 (299) end in a row and a
      column of smaller tiles (11 pixels wide at 299), which the script never meets. Images of at
      most 32x32 (CIFAR-10, MNIST) are one tile. It is the default because it is the released
      behaviour; ``tile=0`` runs the fully convolutional networks on the whole image (8 NIPS17 DEV
      images at 299: median PSNR 29.2 dB tiled, 29.6 dB whole, mean absolute difference 0.011);
    * the reconstruction is returned as floats; the script writes it as an 8-bit PNG in between.

    Args:
        weights: ComCNN's official file (``enc20_0.0001.npy`` for ImageNet, ``enc_mnist.npy`` for
            Fashion-MNIST: npz archives read without unpickling code, :mod:`.official`), or a
            state dict of both networks as ``robench train comdefend`` writes it (``weights_only``).
            None: randomly initialised from ``init_seed``, the starting point of training.
        decoder: RecCNN's official file; by default the file beside ``weights`` with ``enc``
            replaced by ``dec`` in its name (``dec20_0.0001.npy``). Only with official files.
        sigma: standard deviation of the Gaussian noise subtracted from the code at test time
            (1.0, the official TF scripts' ``code_noise``; the PyTorch trainer tests with its
            training value 20); 0 makes the defense deterministic.
        tile: side of the square tiles processed independently (32, the official script's), or
            0 / None for the whole image.
        in_channels: image channels; None: from the weights, else 3.
        code_channels: code channels; None: from the weights, else 12 (the ImageNet release;
            the Fashion-MNIST release has 4).
        init_seed: seed of the random initialisation when no weights are given (0).
    """

    stochastic = True
    differentiable = False
    needs_training = True
    version = "1"
    # ``robench train comdefend`` runs this trainer: MSE reconstruction with a noisy sigmoid code (specs A7).
    trainer = "robench.defenses.comdefend.trainer:ComDefendTraining"

    def __init__(self, *, weights: "str | None" = None, decoder: "str | None" = None, sigma: float = 1.0,
                 tile: "int | None" = 32, in_channels: "int | None" = None, code_channels: "int | None" = None,
                 init_seed: int = 0):
        super().__init__()
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise ValueError(f"ComDefend's sigma must be a number >= 0 (1.0 in the official scripts), got {sigma!r}")
        if tile is not None and (isinstance(tile, bool) or not isinstance(tile, int) or tile < 0):
            raise ValueError(f"ComDefend's tile must be a tile side >= 1 (32, the official script's) or 0 / None "
                             f"for the whole image, got {tile!r}")
        if decoder is not None and weights is None:
            raise ValueError("ComDefend's decoder=PATH names RecCNN's official file; give ComCNN's as weights=PATH too")
        self.weights = None if weights is None else str(weights)
        self.decoder = None if decoder is None else str(decoder)
        self.sigma = sigma
        self.tile = tile
        self.in_channels = _optional_positive_int("in_channels", in_channels)
        self.code_channels = _optional_positive_int("code_channels", code_channels)
        self.init_seed = init_seed
        self.stochastic = sigma > 0
        states, self._checkpoints = ({}, {}) if weights is None else self._read(Path(weights).expanduser())
        if states:
            self._check_channels(states)
            encoder, decoder = states["comcnn"]["channels"], states["reccnn"]["channels"]
        else:
            encoder = encoder_channels(in_channels or 3, code_channels or 12)
            decoder = decoder_channels(in_channels or 3, code_channels or 12)
        with seeded_init("ComDefend", init_seed):
            self.comcnn, self.reccnn = ComCNN(encoder), RecCNN(decoder)
        for name, entry in states.items():
            load_state_dict_strict(getattr(self, name), entry["state"], source=entry["source"])


    def noisy_code(self, x: torch.Tensor, sigma: float | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """The code before thresholding, ``sigmoid(ComCNN(x) - sigma * N(0, 1))`` in (0, 1) (``sigma`` default: the defense's)."""
        sigma = self.sigma if sigma is None else sigma
        linear = self.comcnn(x)
        if sigma:
            noise = torch.randn(linear.shape, generator=generator, device=linear.device, dtype=linear.dtype)
            linear = linear - sigma * noise
        return torch.sigmoid(linear)

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        def reconstruct(tiles: torch.Tensor) -> torch.Tensor:
            return self.reccnn((self.noisy_code(tiles) > THRESHOLD).to(tiles.dtype))

        return self._tiled(reconstruct, x)

    def surrogate(self, x: torch.Tensor) -> torch.Tensor:
        """Straight-through BPDA: RecCNN of the binarised code, differentiated as if it were the sigmoid code."""
        def reconstruct(tiles: torch.Tensor) -> torch.Tensor:
            soft = self.noisy_code(tiles)
            hard = (soft > THRESHOLD).to(soft.dtype)
            return self.reccnn(soft + (hard - soft).detach())

        return self._tiled(reconstruct, x)

    def _tiled(self, reconstruct, x: torch.Tensor) -> torch.Tensor:
        expected = self.comcnn.channels[0]
        if x.dim() != 4 or x.shape[1] != expected:
            raise DefenseInputError(f"ComDefend's networks take {expected}-channel images (B, {expected}, H, W); "
                                    f"got shape {tuple(x.shape)}")
        dtype = self.comcnn.convs[0].weight.dtype
        inputs = x.to(dtype)
        out = tiled(reconstruct, inputs, self.tile) if self.tile else reconstruct(inputs)
        return out.to(x.dtype)

    def _read(self, path: Path) -> tuple[dict, dict[str, str]]:
        """``{"comcnn"|"reccnn": {"state", "channels", "source"}}`` and the checkpoints, from the official files or a state dict."""
        if not path.is_file():
            raise CheckpointError(f"ComDefend weight file {str(path)!r} does not exist")
        if is_official(path):
            decoder = Path(self.decoder).expanduser() if self.decoder else decoder_path_for(path)
            if decoder is None:
                raise ValueError(f"cannot tell RecCNN's file from {path.name!r} (no 'enc' in the name to replace "
                                 "by 'dec'); give it as decoder=PATH")
            states, checkpoints = {}, {}
            for name, file in (("comcnn", path), ("reccnn", decoder)):
                state, digest = read_official(file)
                states[name] = {"state": state, "channels": stack_channels(state, str(file)), "source": str(file)}
                checkpoints[file.name] = digest
            return states, checkpoints
        if self.decoder is not None:
            raise ValueError(f"decoder=PATH belongs to the official files; {path.name!r} is a robench state dict "
                             "that holds both networks")
        obj, digest = load_checkpoint(path)
        state = state_dict_from(obj, str(path))
        states = {}
        for name in ("comcnn", "reccnn"):
            part = {k.removeprefix(f"{name}."): v for k, v in state.items() if k.startswith(f"{name}.")}
            states[name] = {"state": part, "channels": stack_channels(part, f"{path} ({name}.*)"), "source": str(path)}
        unexpected = [k for k in state if not k.startswith(("comcnn.", "reccnn."))]
        if unexpected:
            raise CheckpointError(f"{path} does not fit ComDefend: unexpected keys (first: {unexpected[:3]})")
        return states, {path.name: digest}

    def _check_channels(self, states: dict) -> None:
        """The loaded networks' channels must chain (image -> code -> image) and match the options given."""
        encoder, decoder = states["comcnn"]["channels"], states["reccnn"]["channels"]
        if decoder[0] != encoder[-1] or decoder[-1] != encoder[0]:
            raise CheckpointError(f"ComCNN maps {encoder[0]} -> {encoder[-1]} channels but RecCNN maps {decoder[0]} "
                                  f"-> {decoder[-1]}; the two files are not one ComDefend model")
        for name, given, found in (("in_channels", self.in_channels, encoder[0]),
                                   ("code_channels", self.code_channels, encoder[-1])):
            if given is not None and given != found:
                raise CheckpointError(f"{name}={given}, but the weights have {found}; drop the option or fix it")
