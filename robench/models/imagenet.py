"""ImageNet classifiers through timm: RDP's backbones and transfer-source models, each with its own preprocessing.

Each model takes the input size and mean/std of its timm pretrained config (the Inception
family: 299x299, mean = std = 0.5; the ResNets: 224x224, ImageNet mean/std). The classifier
accepts square [0, 1] images of side ``input_size`` (default: that native size), which is what
the resolver compares with the dataset. When ``input_size`` differs from the native size the
classifier resizes inside (bilinear, antialiased, differentiable, so attacks work on images of
the dataset's size); ``resize=false`` feeds them unchanged instead (the networks end in global
pooling), which is how the TF-slim transfer-attack code runs ResNet-v2 on 299x299 images.

Deviation: TF-slim's ResNet-v2-101/152 have no PyTorch port. ``resnet-v2-101`` is timm's
ResNet-v2-101 (``resnetv2_101.a1h_in1k``: the same pre-activation architecture, trained with
timm's recipe); ``resnet-v2-152`` is torchvision's ResNet-152 (``resnet152.tv_in1k``, a v1
ResNet; timm has no ResNet-v2-152 ImageNet-1k weights), the ResNet-152 of RDP Tables 3 and 4.
``timm:name=...`` builds any other timm model the same way.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from robench.checkpoint import CheckpointError
from robench.models.classifier import Classifier
from robench.models.weights import wrap, weights_digest

BACKBONES = {
    "inception-v3": "inception_v3.tf_in1k",
    "inception-v4": "inception_v4.tf_in1k",
    "inception-resnet-v2": "inception_resnet_v2.tf_in1k",
    "ens-adv-inception-resnet-v2": "inception_resnet_v2.tf_ens_adv_in1k",
    "resnet-v2-101": "resnetv2_101.a1h_in1k",
    "resnet-v2-152": "resnet152.tv_in1k",
    "resnet152": "resnet152.tv_in1k",
}


def _timm():
    try:
        import timm
    except ModuleNotFoundError as err:
        raise ImportError("ImageNet models need timm: pip install timm") from err
    return timm


def _create(timm_name: str, pretrained: bool):
    timm = _timm()
    arch = timm_name.split(".")[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise ValueError(f"timm {timm.__version__} has no model {arch!r}; close matches: {close}")
    if "." in timm_name and timm_name not in timm.list_pretrained(arch + ".*"):
        raise ValueError(f"timm has no weights {timm_name!r}; {arch} has: {timm.list_pretrained(arch + '.*')}")
    try:
        return timm.create_model(timm_name, pretrained=pretrained)
    except Exception as err:  # hub, network and file errors come in many types
        if not pretrained:
            raise
        raise CheckpointError(
            f"cannot get timm's pretrained weights for {timm_name}: {err}. On first use timm downloads them from "
            "the Hugging Face hub into ~/.cache/huggingface; without network access, copy that cache from a "
            "machine that has it (HF_HUB_OFFLINE=1 then reads it), pass weights=PATH to a state dict of this "
            "architecture, or pretrained=false for random weights"
        ) from err


def timm_model(
    *,
    name: str,
    pretrained: bool = True,
    weights: str | Path | None = None,
    input_size: int | None = None,
    resize: bool = True,
) -> Classifier:
    """Any timm ImageNet classifier by its timm name (Wightman 2019), with its pretrained config's size and mean/std.

    Args:
        name: timm model name with an optional pretrained tag, e.g. ``inception_v3.tf_in1k``.
        pretrained: load timm's weights (downloaded once from the Hugging Face hub); false: random.
        weights: a state dict file to load instead (``weights_only=True``); overrides ``pretrained``.
        input_size: side of the square images accepted (default: the native size).
        resize: resize inputs to the native size inside (true) or feed them as they are (false).
    """
    check_input_options(input_size, pretrained=pretrained, resize=resize)
    net = _create(name, pretrained and weights is None)
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(net)
    channels, height, width = config["input_size"]
    side = input_size or height
    classifier = wrap(
        net, weights, num_classes=net.num_classes, input_shape=(channels, side, side),
        mean=config["mean"], std=config["std"], resize_to=(height, width) if resize else None,
    )
    if weights is None and pretrained:
        classifier.checkpoints[f"timm/{name}"] = weights_digest(net)
    return classifier


def check_input_options(input_size: int | None, **flags: bool) -> None:
    """Raise ValueError unless ``input_size`` is None or a side of at least 8 pixels and each flag a boolean."""
    if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 8):
        raise ValueError(f"input_size must be an integer side length of at least 8 pixels, got {input_size!r}")
    for option, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{option} must be true or false, got {value!r}")


def _backbone(factory_name: str, doc: str) -> Callable[..., Classifier]:
    timm_name = BACKBONES[factory_name]

    def factory(
        *, pretrained: bool = True, weights: str | Path | None = None, input_size: int | None = None,
        resize: bool = True,
    ) -> Classifier:
        return timm_model(name=timm_name, pretrained=pretrained, weights=weights, input_size=input_size, resize=resize)

    factory.__name__ = factory.__qualname__ = factory_name.replace("-", "_")
    factory.__doc__ = f"{doc}. timm weights {timm_name}; options: see timm_model."
    return factory


inception_v3 = _backbone("inception-v3", "Inception-v3 (Szegedy et al. 2016), TF-slim weights: RDP source")
inception_v4 = _backbone("inception-v4", "Inception-v4 (Szegedy et al. 2017), TF-slim weights: RDP source and target")
inception_resnet_v2 = _backbone(
    "inception-resnet-v2", "Inception-ResNet-v2 (Szegedy et al. 2017), TF-slim weights: RDP target"
)
ens_adv_inception_resnet_v2 = _backbone(
    "ens-adv-inception-resnet-v2",
    "Ensemble-adversarially trained Inception-ResNet-v2 (Tramer et al. 2018): RDP's defended backbone",
)
resnet_v2_101 = _backbone(
    "resnet-v2-101", "ResNet-v2-101 (He et al. 2016, identity mappings), stand-in: timm's weights, not TF-slim's"
)
resnet_v2_152 = _backbone(
    "resnet-v2-152", "ResNet-v2-152 stand-in: torchvision's ResNet-152 (He et al. 2016, v1), not TF-slim's v2"
)
resnet152 = _backbone("resnet152", "ResNet-152 (He et al. 2016), torchvision weights: RDP Tables 3-4 (NRP's scripts)")
