"""Weights of the target models: registered files (sha256-checked), user checkpoints, and their model cards."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robench.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from robench.env import DATA_ENV, OFFLINE_ENV, data_root, offline
from robench.models.classifier import Classifier


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
    if entry.url is None or offline():
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


def state_dict_from(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint: unwraps ``{'state_dict': ...}``, takes stage 0 of a cascade, strips ``module.``."""
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if isinstance(obj, list) and obj:
        obj = obj[0]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{source} holds no state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def state_dict_under(prefix: str) -> Callable[[Any, str], dict[str, torch.Tensor]]:
    """A reader of a defense's checkpoint that also takes its bare network's (the authors' files): keys get ``prefix``."""

    def read(obj: Any, source: str) -> dict[str, torch.Tensor]:
        state = state_dict_from(obj, source)
        if any(key.startswith(prefix) for key in state):
            return state
        return {f"{prefix}{key}": value for key, value in state.items()}

    return read


def load_weights(net: nn.Module, weights: "str | Path | None", entry: RegisteredWeights | None) -> dict[str, str]:
    """Load ``weights`` (unchecked) or the registered file (sha256-checked) into ``net``; returns {name: sha256}.

    With neither (``weights=None`` and no registered file) ``net`` keeps its fresh initialisation.
    """
    if weights is None and entry is None:
        return {}
    if weights is None:
        path, expected, name = registered_path(entry), entry.sha256, entry.name
    else:
        path = Path(weights).expanduser()
        expected, name = None, path.name
    obj, digest = load_checkpoint(path, expected_sha256=expected)
    state = state_dict_from(obj, str(path))
    own_keys = net.state_dict().keys()
    if state and all(k.startswith("net.") for k in state) and not any(k.startswith("net.") for k in own_keys):
        state = {k[len("net."):]: v for k, v in state.items()}  # saved from the Classifier wrapper itself
    # checkpoints saved before PyTorch 0.4.1 lack BatchNorm's step counters, which evaluation never reads
    for key, value in net.state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    load_state_dict_strict(net, state, source=str(path))
    return {name: digest}


def card_path(weights: "str | Path") -> Path:
    """Where the model card of a checkpoint lives: ``<checkpoint stem>.json`` beside it."""
    return Path(weights).expanduser().with_suffix(".json")


def read_card(weights: "str | Path | None") -> dict[str, Any] | None:
    """The model card (JSON object) beside a checkpoint, or None when there is none."""
    if weights is None or not card_path(weights).is_file():
        return None
    path = card_path(weights)
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"model card {str(path)!r} is not valid JSON ({err}); fix it or move it away") from err
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {str(path)!r} holds a {type(card).__name__}, not a JSON object")
    return card


def weights_digest(net: nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes, bytes): identifies weights that came without a file."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def wrap(net: nn.Module, weights: "str | Path | None", entry: RegisteredWeights | None = None, **options) -> Classifier:
    """Load the weights into ``net`` (see :func:`load_weights`) and wrap it, with the model card beside the file."""
    checkpoints = load_weights(net, weights, entry)
    return Classifier(net.eval(), checkpoints=checkpoints, card=read_card(weights), **options)
