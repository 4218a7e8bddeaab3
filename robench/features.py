"""Frozen feature extractors F for the self-supervised perturbation and the purifiers trained
with it (NRP, Naseer et al. CVPR 2020; RDP, Bai et al.): ``x in [0, 1] -> features``.

A spec names F: ``vgg16`` is torchvision's VGG-16 up to relu3_3 with ImageNet normalisation
(the layer NRP uses, specs A2/A4/D14; ``vgg16:weights=PATH`` reads a state dict,
``vgg16:pretrained=false`` keeps random weights, seeded, for tests); any registered model spec with a
``layer=NAME`` option takes that module's output (``resnet18-standard:layer=net.layer2``), so
the recipes run offline and on CIFAR.
"""

from __future__ import annotations


import torch
from torch import nn

from robench.spec import Spec, SpecError, brief, parse_spec

VGG16 = "vgg16"
VGG16_RELU3_3 = 16  # torchvision vgg16().features[:16] ends at relu3_3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_features(spec: "str | Spec") -> Spec:
    """The parsed spec of F, checked without building it: ``vgg16`` with its options, or a registered model with a layer."""
    spec = parse_spec(spec)
    options = spec.options
    if spec.name == VGG16:
        unknown = set(options) - {"weights", "pretrained"}
        if unknown:
            raise SpecError(f"feature extractor {VGG16} takes weights=PATH or pretrained=false; got {sorted(unknown)}")
        return spec
    if "layer" not in options:
        raise SpecError(
            f"feature extractor {brief(str(spec))}: name the layer whose output is F, e.g. "
            f"{spec.name}:layer=net.layer2 (or use {VGG16})"
        )
    from robench import registry  # the model registry imports model code; keep this module light

    registry.info("models", spec.name)  # an unknown name fails here, with close matches
    return spec


def feature_extractor(spec: "str | Spec") -> nn.Module:
    """Build the frozen, eval-mode F a spec names (see the module docstring)."""
    spec = check_features(spec)
    options = spec.options
    if spec.name == VGG16:
        net: nn.Module = VGGRelu33(weights=options.get("weights"), pretrained=options.get("pretrained", True))
    else:
        layer = options.pop("layer")
        from robench import registry

        net = LayerFeatures(registry.build("models", Spec.of(spec.name, **options)), str(layer))
    return net.eval().requires_grad_(False)


class VGGRelu33(nn.Module):
    """VGG-16 features up to relu3_3 with ImageNet mean/std normalisation inside."""

    def __init__(self, *, weights: "str | None" = None, pretrained: bool = True):
        super().__init__()
        import torchvision

        if weights is not None:
            from robench.checkpoint import load_checkpoint, load_state_dict_strict
            from robench.models.weights import state_dict_from

            vgg = torchvision.models.vgg16()
            obj, _ = load_checkpoint(weights)
            state = {k: v for k, v in state_dict_from(obj, str(weights)).items() if k.startswith("features.")}
            load_state_dict_strict(vgg.features, {k.removeprefix("features."): v for k, v in state.items()},
                                   source=str(weights))
        elif pretrained:  # torchvision's ImageNet weights: read from the torch cache, downloaded there on first use
            vgg = torchvision.models.vgg16(weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1)
        else:  # random weights, the same on every build (tests)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                vgg = torchvision.models.vgg16()
        self.net = vgg.features[:VGG16_RELU3_3]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


class _Captured(Exception):
    """Raised by the hook to stop the forward pass once the layer's output is known."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value


class LayerFeatures(nn.Module):
    """The output of one named module of a classifier (the forward pass stops there)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        modules = dict(model.named_modules())
        if layer not in modules or not layer:
            names = [name for name in modules if name and name.count(".") <= 1]
            raise SpecError(f"the model has no layer {layer!r}; its layers include {', '.join(names[:12])}")
        self.model = model
        self.layer = layer
        modules[layer].register_forward_hook(self._capture)

    @staticmethod
    def _capture(module: nn.Module, inputs, output: torch.Tensor):
        raise _Captured(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            self.model(x)
        except _Captured as captured:
            return captured.value
        raise RuntimeError(f"layer {self.layer!r} was not reached by the forward pass")
