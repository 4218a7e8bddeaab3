"""Classifier factories registered under ``robench.models``; normalisation lives inside the model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from robench.archs.cifar_resnet import resnet18
from robench.archs.resnet_akamaster import resnet_cifar
from robench.archs.small_cnn import cifar_small_cnn, mnist_small_cnn
from robench.archs.templates import NearestTemplate, class_templates
from robench.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from robench.data import DATA_ENV, OFFLINE_ENV, data_root


class Classifier(nn.Module):
    """A classifier on images in [0, 1]: normalises inside, declares its input shape and classes.

    Args:
        net: the network, fed normalised images.
        num_classes: number of logits.
        input_shape: ``(C, H, W)`` the network expects.
        mean, std: per-channel normalisation applied before ``net`` (None: none).
        checkpoints: checkpoint name -> sha256 of every weight file loaded (enters cache keys).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        checkpoints: dict[str, str] | None = None,
    ):
        super().__init__()
        self.net = net
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.checkpoints = dict(checkpoints or {})
        channels = self.input_shape[0]
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.normalised = mean is not None
        mean_t = torch.tensor(mean if mean is not None else [0.0] * channels, dtype=torch.float32)
        std_t = torch.tensor(std if std is not None else [1.0] * channels, dtype=torch.float32)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{type(self.net).__name__} expects inputs shaped (B, {', '.join(map(str, self.input_shape))}); "
                f"got {tuple(x.shape)}"
            )
        if self.normalised:
            x = (x - self.mean) / self.std
        return self.net(x)


@dataclass(frozen=True)
class RegisteredWeights:
    """A known weight file: its name, sha256, and where it comes from (an installed package, or a URL)."""

    file: str
    sha256: str
    url: str | None = None
    package: str | None = None

    @property
    def name(self) -> str:
        """The name recorded in ``Classifier.checkpoints``."""
        return self.file if self.package is None else f"{self.package}/{self.file}"


PYAUTOATTACK_RESNET18 = RegisteredWeights(
    "examples/model_test.pt",
    "399f52da9f914c323fa5a6096d60f460a3449a59b64a6405200c1e629f8425a7",
    package="pyautoattack",
)
_AKAMASTER_URL = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
AKAMASTER = {
    depth: RegisteredWeights(f"akamaster_{stem}.th", sha256, url=f"{_AKAMASTER_URL}{stem}.th")
    for depth, stem, sha256 in (
        (20, "resnet20-12fca82f", "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
        (32, "resnet32-d509ac18", "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
        (44, "resnet44-014dd654", "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
        (56, "resnet56-4bfd9763", "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
    )
}
CONVEX_CIFAR_SMALL = RegisteredWeights(
    "convex_cifar_small_8px.pth",
    "f07c615f58616cbc7667974f146c4baa851bf0e71df8431a150abea8b7901f37",
    url="https://github.com/locuslab/convex_adversarial/raw/master/models_scaled/cifar_small_8px.pth",
)
MNIST_FAST_AT = {
    "pgd_madry": RegisteredWeights(
        "fast_adversarial_mnist_pgd_madry.pth", "877b74b1d2bf22a2ea958f7d8c892c02710e7c84627d14b44b1c67046fcd5a79"
    ),
    "fgsm": RegisteredWeights(
        "fast_adversarial_mnist_fgsm.pth", "07536ed24c714dac89507d38ffc0090f110de3cd70c40d02d8d56491e187905b"
    ),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def registered_path(entry: RegisteredWeights) -> Path:
    """Path of a registered file: in its package, else ``<data root>/weights/``, downloaded there if allowed."""
    if entry.package is not None:
        try:
            path = Path(str(resources.files(entry.package) / entry.file))
        except ModuleNotFoundError as err:
            raise CheckpointError(f"weights {entry.file} ship with {entry.package}, which is not installed") from err
        if not path.is_file():
            raise CheckpointError(f"the installed {entry.package} has no {entry.file}; reinstall it or pass weights=PATH")
        return path
    folder = data_root() / "weights"
    path = folder / entry.file
    if path.is_file():
        return path
    if entry.url is None or os.environ.get(OFFLINE_ENV):
        why = "it has no stable download URL" if entry.url is None else f"{OFFLINE_ENV} is set"
        raise CheckpointError(
            f"weights {entry.file} not found: expected {path} ({why}). Point {DATA_ENV} at a folder whose "
            f"weights/ holds it (the offline copies: {DATA_ENV}=../shared/data), or pass weights=PATH"
        )
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, str(path), hash_prefix=entry.sha256, progress=False)
    except Exception as err:  # network errors and hash mismatches come in many types
        raise CheckpointError(
            f"weights {entry.file} not found in {folder} and the download from {entry.url} failed: {err}. "
            f"Set {DATA_ENV} to a folder whose weights/ holds it (e.g. {DATA_ENV}=../shared/data)"
        ) from err
    return path


def _state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint: unwraps ``{'state_dict': ...}``, takes stage 0 of a cascade, strips ``module.``."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_weights(net: nn.Module, weights: "str | Path | None", entry: RegisteredWeights) -> dict[str, str]:
    """Load ``weights`` (unchecked) or the registered file (sha256-checked) into ``net``; returns {name: sha256}."""
    if weights is None:
        path, expected, name = registered_path(entry), entry.sha256, entry.name
    else:
        path = Path(weights).expanduser()
        expected, name = None, path.name
    obj, digest = load_checkpoint(path, expected_sha256=expected)
    state = _state_dict(obj, str(path))
    # checkpoints saved before PyTorch 0.4.1 lack BatchNorm's step counters, which evaluation never reads
    for key, value in net.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    load_state_dict_strict(net, state, source=str(path))
    return {name: digest}


def tiny(*, channels: int = 3, size: int = 32, num_classes: int = 10) -> Classifier:
    """Nearest-template classifier over ``class_templates``: a weight-free test model (robench)."""
    net = NearestTemplate(class_templates(num_classes, channels, size))
    return Classifier(net.eval(), num_classes=num_classes, input_shape=(channels, size, size))


def resnet18_standard(*, weights: "str | Path | None" = None) -> Classifier:
    """Standard (non-robust) CIFAR-10 ResNet-18 shipped with pyautoattack (Croce & Hein 2020's example)."""
    net = resnet18()
    checkpoints = _load_weights(net, weights, PYAUTOATTACK_RESNET18)
    return Classifier(net.eval(), num_classes=10, input_shape=(3, 32, 32), checkpoints=checkpoints)


def resnet20_akamaster(*, weights: "str | Path | None" = None, depth: int = 20) -> Classifier:
    """Standard CIFAR-10 ResNet-20/32/44/56 of akamaster/pytorch_resnet_cifar10 (He et al. 2016)."""
    net = resnet_cifar(depth)
    checkpoints = _load_weights(net, weights, AKAMASTER[depth])
    return Classifier(
        net.eval(), num_classes=10, input_shape=(3, 32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        checkpoints=checkpoints,
    )


def convex_cifar_small(*, weights: "str | Path | None" = None) -> Classifier:
    """Provably Linf-robust (eps 8/255) small CIFAR-10 CNN, cascade stage 0 (Wong et al. 2018, convex_adversarial)."""
    net = cifar_small_cnn()
    checkpoints = _load_weights(net, weights, CONVEX_CIFAR_SMALL)
    return Classifier(
        net.eval(), num_classes=10, input_shape=(3, 32, 32), mean=IMAGENET_MEAN, std=(0.225,) * 3,
        checkpoints=checkpoints,
    )


def mnist_fast_at(*, weights: "str | Path | None" = None, variant: str = "pgd_madry") -> Classifier:
    """Adversarially trained (eps 0.3) MNIST CNN of fast_adversarial (Wong, Rice & Kolter 2020): PGD or FGSM training."""
    if variant not in MNIST_FAST_AT:
        raise ValueError(f"mnist_fast_at variant must be one of {sorted(MNIST_FAST_AT)}, got {variant!r}")
    net = mnist_small_cnn()
    checkpoints = _load_weights(net, weights, MNIST_FAST_AT[variant])
    return Classifier(net.eval(), num_classes=10, input_shape=(1, 28, 28), checkpoints=checkpoints)
