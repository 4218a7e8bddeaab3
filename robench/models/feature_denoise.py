"""AT-FD (Xie et al. 2019): the feature-denoising ResNet-152, fresh, trained by robench, or the authors' released npz.

``resnet152-fd`` is a classifier, not a defense: RDP Table 4 evaluates it alone (specs A16).
``weights=PATH`` takes either a state dict written by ``robench train at`` (``.pt``, loaded with
``weights_only=True``) or, for a path ending in ``.npz``, the authors' released tensorpack
weights (``R152-Denoise.npz``; ``R152.npz`` with ``denoise=none``), GitHub release assets of
facebookresearch/ImageNet-Adversarial-Training. The npz is read with ``allow_pickle=False``: an
object array (a pickle) is refused, never loaded. ``robench train at --model resnet152-fd`` trains
it with robench's Madry AT recipe (untargeted PGD from a random start); the authors' recipe is
targeted PGD-30 at 16/255 with label smoothing (specs A16), which no robench recipe implements yet.

Preprocessing. The released models take BGR images scaled to [-1, 1] (tensorpack's
``image * 2/255 - 1`` on OpenCV's BGR pixels). robench feeds RGB images in [0, 1]: the
classifier normalises with mean = std = 0.5 (to [-1, 1]), and loading the npz reverses the
input-channel axis of the stem convolution ``conv0/W``, so the network takes RGB and computes
exactly what the BGR network computes on the BGR image (a convolution is linear in its input
channels). Networks trained by robench are RGB from the start and share this normalisation.
The native size is 224 (the authors evaluate ImageNet resized to 256 and centre-cropped to 224,
``imagenet-val``'s default); other input sizes are resized to 224 inside unless ``resize=false``.

Released names (tensorpack, ``ResNetDenoiseModel`` in the authors' ``nets.py``), with an
optional ``:0`` suffix, and where they go in the torchvision-based network of
:mod:`robench.archs.feature_denoise` (g = 0..3, N = g + 1, b = block index, D = blocks in stage g):

| npz name | state-dict key | layout change |
|---|---|---|
| ``conv0/W`` | ``conv1.weight`` | HWIO -> OIHW, input channels BGR -> RGB |
| ``conv0/bn/{gamma,beta,mean/EMA,variance/EMA}`` | ``bn1.{weight,bias,running_mean,running_var}`` | - |
| ``group{g}/block{b}/conv{1,2,3}/W`` | ``layerN.b.conv{1,2,3}.weight`` | HWIO -> OIHW |
| ``group{g}/block{b}/conv{1,2,3}/bn/...`` | ``layerN.b.bn{1,2,3}....`` | - |
| ``group{g}/block0/convshortcut/W``, ``.../bn/...`` | ``layerN.0.downsample.0.weight``, ``layerN.0.downsample.1....`` | HWIO -> OIHW |
| ``group{g}_denoise/embedding_theta/W`` | ``layerN.D.theta.weight`` | HWIO -> OIHW |
| ``group{g}_denoise/embedding_phi/W`` | ``layerN.D.phi.weight`` | HWIO -> OIHW |
| ``group{g}_denoise/conv/W``, ``.../conv/bn/...`` | ``layerN.D.conv.weight``, ``layerN.D.bn....`` | HWIO -> OIHW |
| ``linear/W``, ``linear/b`` | ``fc.weight``, ``fc.bias`` | (in, out) -> (out, in) |

BatchNorm's step counters (``num_batches_tracked``), which evaluation never reads, start at 0.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robench.archs.feature_denoise import NONLOCAL_OPS, NonLocalDenoise, resnet_denoise
from robench.checkpoint import CheckpointError, sha256_of
from robench.hyper import check_positive_int
from robench.models.classifier import Classifier
from robench.models.imagenet import check_input_options
from robench.models.weights import read_card, wrap

NATIVE_SIZE = 224
DENOISE_OPTIONS = (*NONLOCAL_OPS, "none")
_BN = (("gamma", "weight"), ("beta", "bias"), ("mean/EMA", "running_mean"), ("variance/EMA", "running_var"))


def resnet152_fd(
    *,
    weights: str | Path | None = None,
    depth: int = 152,
    denoise: str = "softmax",
    num_classes: int = 1000,
    input_size: int | None = None,
    resize: bool = True,
) -> Classifier:
    """AT-FD: ResNet-152 with feature-denoising blocks (Xie et al. 2019), RDP Table 4's model-level defense.

    Takes RGB images in [0, 1] and scales them to [-1, 1] inside; the released weights' BGR stem
    is converted to RGB when they load, so the network computes what the authors' computes on BGR.

    Args:
        weights: the authors' released tensorpack ``.npz`` (``R152-Denoise.npz``; read without
            unpickling, every array mapped), a state dict written by ``robench train at``
            (``.pt``), or None for a fresh network (for training).
        depth: 50, 101 or 152 (the authors' ``-d``); the released Denoise model is 152.
        denoise: non-local op of the denoising blocks, ``softmax`` (Gaussian, the released model)
            or ``dot-product``; ``none``: the plain ResNet (the authors' ``R152.npz`` baseline).
        num_classes: logits (ImageNet: 1000).
        input_size: side of the square [0, 1] RGB images accepted (default 224).
        resize: resize inputs to 224 inside (true) or feed them unchanged (false).
    """
    if denoise not in DENOISE_OPTIONS:
        raise ValueError(f"denoise must be one of {', '.join(DENOISE_OPTIONS)}, got {denoise!r}")
    check_positive_int("num_classes", num_classes)
    check_input_options(input_size, resize=resize)
    net = resnet_denoise(depth, denoise=None if denoise == "none" else denoise, num_classes=num_classes)
    side = input_size or NATIVE_SIZE
    options = dict(num_classes=num_classes, input_shape=(3, side, side), mean=(0.5,) * 3, std=(0.5,) * 3,
                   resize_to=(NATIVE_SIZE, NATIVE_SIZE) if resize else None)
    if weights is None or Path(weights).suffix != ".npz":
        return wrap(net, weights, **options)
    checkpoints = load_tensorpack(net, weights)
    return Classifier(net.eval(), checkpoints=checkpoints, card=read_card(weights), **options)


def tensorpack_names(net: nn.Module) -> dict[str, str]:
    """Released tensorpack name (no ``:0``) -> state-dict key of ``net``, for every weight (the module's table)."""
    names: dict[str, str] = {}

    def conv(released: str, conv_key: str, bn_key: str | None = None) -> None:
        names[f"{released}/W"] = f"{conv_key}.weight"
        for theirs, ours in _BN if bn_key else ():
            names[f"{released}/bn/{theirs}"] = f"{bn_key}.{ours}"

    conv("conv0", "conv1", "bn1")
    for g in range(4):
        for b, block in enumerate(getattr(net, f"layer{g + 1}")):
            key = f"layer{g + 1}.{b}"
            if isinstance(block, NonLocalDenoise):
                conv(f"group{g}_denoise/embedding_theta", f"{key}.theta")
                conv(f"group{g}_denoise/embedding_phi", f"{key}.phi")
                conv(f"group{g}_denoise/conv", f"{key}.conv", f"{key}.bn")
                continue
            for i in (1, 2, 3):
                conv(f"group{g}/block{b}/conv{i}", f"{key}.conv{i}", f"{key}.bn{i}")
            if block.downsample is not None:
                conv(f"group{g}/block{b}/convshortcut", f"{key}.downsample.0", f"{key}.downsample.1")
    names["linear/W"], names["linear/b"] = "fc.weight", "fc.bias"
    return names


def load_tensorpack(net: nn.Module, path: "str | Path") -> dict[str, str]:
    """Load the authors' released npz into ``net`` (every key mapped, none left over); returns {file name: sha256}."""
    path = Path(path).expanduser()
    arrays = read_npz(path)
    names = tensorpack_names(net)
    missing, unexpected = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit this network: {len(missing)} missing arrays (first: {missing[:3]}), "
            f"{len(unexpected)} unexpected (first: {unexpected[:3]}). R152-Denoise.npz needs the default "
            "depth=152,denoise=softmax; R152.npz needs denoise=none; ResNeXt models (X101-DenoiseAll) are not supported"
        )
    own = net.state_dict()
    state = {}
    for released, key in names.items():
        tensor = _to_torch(released, arrays[released])
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{path}: {released} has shape {arrays[released].shape}, which gives {tuple(tensor.shape)} for {key}; "
                f"the network has {tuple(own[key].shape)} (check depth= and num_classes=)"
            )
        state[key] = tensor.to(own[key].dtype)
    for key, value in own.items():
        if key.endswith(".num_batches_tracked"):
            state[key] = torch.zeros_like(value)
    net.load_state_dict(state)
    return {path.name: sha256_of(path)}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The float arrays of an npz archive by name, ``:0`` suffixes dropped; object arrays (pickles) are refused."""
    if not path.is_file():
        raise CheckpointError(f"weights {str(path)!r} do not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except ValueError as err:  # numpy's answer to anything that is neither npz nor npy: "pickled data"
        raise CheckpointError(
            f"{path} is not an npz archive: numpy could only read it as a pickle, which robench never loads"
        ) from err
    except (OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path} is not a readable npz archive: {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} holds a single array, not an npz archive of named weights")
    arrays = {}
    with archive:
        for name in archive.files:
            try:
                array = archive[name]
            except ValueError as err:  # numpy refuses object arrays when allow_pickle=False
                raise CheckpointError(
                    f"{path}: array {name!r} is an object array, i.e. a pickle that could run code; robench never "
                    "unpickles weights. The released files hold only float arrays: get the original file again"
                ) from err
            if not np.issubdtype(array.dtype, np.floating):
                raise CheckpointError(f"{path}: array {name!r} has dtype {array.dtype}, not a float weight")
            arrays[name.removesuffix(":0")] = array
    return arrays


def to_tensorpack(net: nn.Module) -> dict[str, np.ndarray]:
    """``net``'s weights in the released npz layout (``:0`` names, HWIO convs, BGR stem): the inverse of loading."""
    state = net.state_dict()
    arrays = {}
    for released, key in tensorpack_names(net).items():
        tensor = state[key].detach().cpu().float()
        if released == "conv0/W":
            tensor = tensor.flip(1)
        if tensor.ndim == 4:
            tensor = tensor.permute(2, 3, 1, 0)
        elif released == "linear/W":
            tensor = tensor.t()
        arrays[f"{released}:0"] = tensor.contiguous().numpy()
    return arrays


def _to_torch(released: str, array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if released.endswith("/W") and released != "linear/W":
        if tensor.ndim != 4:
            raise CheckpointError(f"{released} should be a 4-d HWIO convolution kernel, got shape {array.shape}")
        tensor = tensor.permute(3, 2, 0, 1)
        if released == "conv0/W":
            tensor = tensor.flip(1)  # BGR -> RGB input channels
    elif released == "linear/W":
        if tensor.ndim != 2:
            raise CheckpointError(f"linear/W should be a 2-d (in, out) matrix, got shape {array.shape}")
        tensor = tensor.t()
    return tensor.contiguous()
