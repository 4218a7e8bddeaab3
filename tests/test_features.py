"""Feature extractors F for SSP / NRP / RDP: VGG-16 relu3_3 and any registered model's layer."""

from __future__ import annotations

import pytest
import torch

from robench.features import feature_extractor
from robench.spec import SpecError
from tests.conftest import needs_cifar


def test_vgg16_relu3_3_quarters_the_resolution_with_256_channels_and_is_frozen():
    features = feature_extractor("vgg16:pretrained=false")
    out = features(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 256, 8, 8)
    assert not features.training and not any(p.requires_grad for p in features.parameters())


def test_vgg16_weights_from_a_file_are_used(tmp_path):
    import torchvision

    torch.manual_seed(1)
    vgg = torchvision.models.vgg16()
    torch.save(vgg.state_dict(), tmp_path / "vgg.pt")
    x = torch.rand(1, 3, 32, 32)
    loaded = feature_extractor(f"vgg16:weights={tmp_path / 'vgg.pt'}")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(loaded(x), vgg.features[:16]((x - mean) / std), atol=1e-5)


@needs_cifar
def test_a_registered_models_layer_is_its_intermediate_output_and_passes_gradients(shared_data):
    from robench import registry

    features = feature_extractor("resnet18-standard:layer=net.layer2")
    model = registry.build("models", "resnet18-standard").eval()
    seen = {}
    model.net.layer2.register_forward_hook(lambda module, inputs, output: seen.update(out=output))
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = features(x)
    model(x.detach())
    assert out.shape == (2, 128, 16, 16) and torch.allclose(out, seen["out"], atol=1e-5)
    out.sum().backward()
    assert x.grad.abs().sum().item() > 0


@pytest.mark.parametrize("spec, mentions", [
    ("resnet18-standard", "name the layer"), ("vgg16:layer=3", "weights=PATH or pretrained=false"),
])
def test_bad_specs_are_named(spec, mentions):
    with pytest.raises(SpecError, match=mentions):
        feature_extractor(spec)


@needs_cifar
def test_an_unknown_layer_lists_the_models_layers(shared_data):
    with pytest.raises(SpecError, match="net.layer2"):
        feature_extractor("resnet18-standard:layer=nope")
