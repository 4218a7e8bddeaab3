"""Model zoo: trainable CIFAR factories, timm ImageNet backbones, the RobustBench adapter, model cards."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

from robench import registry
from robench.cell import Cell
from robench.checkpoint import CheckpointError, sha256_of
from robench.models import BACKBONES, IMAGENET_MEAN, IMAGENET_STD
from robench.models.weights import weights_digest
from robench.resolve import ConfigError, Resolver
from robench.threat import ThreatModel
from tests.conftest import DATA, needs_cifar

TRAINABLE = ["resnet18", "preact-resnet18", "wrn-34-10", "resnet20", "small-cnn"]
# native size and mean of each backbone's timm weights (std equals mean for the TF ports: 0.5)
NATIVE = {
    "inception-v3": (299, (0.5,) * 3),
    "inception-v4": (299, (0.5,) * 3),
    "inception-resnet-v2": (299, (0.5,) * 3),
    "ens-adv-inception-resnet-v2": (299, (0.5,) * 3),
    "resnet-v2-101": (224, (0.5,) * 3),
    "resnet-v2-152": (224, IMAGENET_MEAN),
    "resnet152": (224, IMAGENET_MEAN),
}
CPU = torch.device("cpu")
SMALL = "name=mobilenetv3_small_050,pretrained=false"  # a cheap timm ImageNet model (native 224, ImageNet mean/std)
needs_nips17 = pytest.mark.skipif(
    not (DATA / "imagenet_nips17_dev_head.npz").is_file(), reason=f"offline NIPS 2017 DEV head not found in {DATA}"
)


def build(spec: str) -> nn.Module:
    return registry.build("models", spec)


def cell(model: str, dataset: str = "cifar10") -> Cell:
    return Cell(dataset=dataset, model=model, defense="none", attack="pgd:steps=1", threat=ThreatModel("Linf", 8 / 255),
                n=2, batch_size=2)


@pytest.fixture(scope="module")
def cifar_images():
    if not (DATA / "cifar10_test_head.npz").is_file():
        pytest.skip(f"offline CIFAR-10 head not found in {DATA}")
    data = registry.build("datasets", f'cifar10:root="{DATA}",download=false')
    return data, data.load(n=2).x


@pytest.mark.parametrize("name", TRAINABLE)
def test_trainable_factory_builds_fresh_and_its_state_dict_loads_back_through_weights_path(name, cifar_images, tmp_path):
    data, x = cifar_images
    trained = build(name)
    assert trained.input_shape == data.image_shape and trained.num_classes == data.num_classes == 10
    assert trained.checkpoints == {} and trained.card is None
    path = tmp_path / "trained.pt"
    torch.save(trained.net.state_dict(), path)
    loaded = build(f'{name}:weights="{path}"')  # had the file not loaded, its own random init would differ
    with torch.no_grad():
        expected, got = trained(x), loaded(x)
    assert expected.shape == (2, 10) and torch.isfinite(expected).all()
    assert torch.equal(got, expected)
    assert loaded.checkpoints == {"trained.pt": sha256_of(path)}


@pytest.mark.parametrize("name", ["resnet20", "small-cnn"])
def test_num_classes_sets_the_number_of_logits(name):
    model = build(f"{name}:num_classes=7")
    assert model.num_classes == 7 and model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_checkpoint_of_the_whole_classifier_loads_as_well(cifar_images, tmp_path):
    x = cifar_images[1]
    trained = build("resnet20")
    torch.save(trained.state_dict(), tmp_path / "wrapper.pt")  # keys start with "net."
    loaded = build(f'resnet20:weights="{tmp_path / "wrapper.pt"}"')
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))


def test_checkpoint_with_keys_of_another_architecture_names_them(tmp_path):
    path = tmp_path / "preact.pt"
    torch.save(build("preact-resnet18").net.state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"does not fit CifarResNet: 16 missing keys \(first: \['bn1.weight', .*"
        r"5 unexpected keys \(first: \['bn.weight', 'bn.bias'",
    ):
        build(f'resnet18:weights="{path}"')


def test_checkpoint_for_another_number_of_classes_names_the_layer(tmp_path):
    path = tmp_path / "ten.pt"
    torch.save(build("small-cnn").net.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"7.weight has shape \(10, 100\) in the checkpoint, \(100, 100\) in the model"):
        build(f'small-cnn:num_classes=100,weights="{path}"')


def test_model_card_beside_the_checkpoint_is_exposed(tmp_path):
    path = tmp_path / "small-cnn-at.pt"
    torch.save(build("small-cnn").net.state_dict(), path)
    assert build(f'small-cnn:weights="{path}"').card is None
    card = {"recipe": "at", "epochs": 1, "clean_accuracy": 0.41}
    (tmp_path / "small-cnn-at.json").write_text(json.dumps(card))
    assert build(f'small-cnn:weights="{path}"').card == card
    (tmp_path / "small-cnn-at.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model card .*small-cnn-at.json' is not valid JSON"):
        build(f'small-cnn:weights="{path}"')


def test_small_cnn_takes_mnist_shapes_and_bad_options_are_clear_errors():
    model = build("small-cnn:channels=1,size=28")
    assert model.input_shape == (1, 28, 28) and model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="size divisible by 4"):
        build("small-cnn:size=30")
    with pytest.raises(ValueError, match="num_classes must be an integer of at least 2, got 1"):
        build("resnet18:num_classes=1")
    with pytest.raises(registry.PluginError, match="resnet18 has no option 'depth'; its options: weights, num_classes"):
        build("resnet18:depth=34")


@needs_cifar
def test_resolver_rejects_a_model_with_the_wrong_number_of_classes(shared_data):
    resolver = Resolver(CPU)
    resolver.check(cell("resnet20"))
    with pytest.raises(ConfigError, match="model resnet20:num_classes=100 has 100 classes, cifar10 has 10"):
        resolver.check(cell("resnet20:num_classes=100"))


@needs_cifar
def test_resolver_compares_an_imagenet_models_accepted_size_with_the_dataset(shared_data):
    resolver = Resolver(CPU)
    with pytest.raises(ConfigError, match=r"takes inputs shaped \(3, 224, 224\), but cifar10 images are \(3, 32, 32\)"):
        resolver.check(cell(f"timm:{SMALL}"))
    # a 1000-class model declaring 32x32 inputs passes the shape test and fails the class test
    with pytest.raises(ConfigError, match="has 1000 classes, cifar10 has 10"):
        resolver.check(cell(f"timm:input_size=32,{SMALL}"))


def test_resize_inside_is_differentiable_and_resize_false_feeds_the_input_size():
    seen = []
    resized = build(f"timm:input_size=64,{SMALL}")
    direct = build(f"timm:input_size=64,{SMALL},resize=false")
    for model in (resized, direct):
        model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    resized(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        direct(x)
    assert seen[0].shape == (1, 3, 224, 224) and seen[1].shape == (1, 3, 64, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(seen[1], (x.detach() - mean) / std)
    with pytest.raises(ValueError, match="input_size must be an integer"):
        build(f"timm:{SMALL},input_size=0")


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_imagenet_backbones_build_without_weights_with_their_size_and_normalisation(name):
    model = build(f"{name}:pretrained=false")
    side, mean = NATIVE[name]
    std = (0.5,) * 3 if mean == (0.5,) * 3 else IMAGENET_STD
    assert model.input_shape == (3, side, side) and model.resize_to is None and model.num_classes == 1000
    assert torch.allclose(model.mean.flatten(), torch.tensor(mean)) and torch.allclose(model.std.flatten(), torch.tensor(std))
    assert model.net.pretrained_cfg["architecture"] + "." + model.net.pretrained_cfg["tag"] == BACKBONES[name]
    assert model.checkpoints == {}


@needs_nips17
def test_rdp_backbone_fits_nips17_dev_and_a_resized_model_classifies_its_images(shared_data):
    resolver = Resolver(CPU)
    resolver.check(cell("ens-adv-inception-resnet-v2:pretrained=false", dataset="nips17-dev"))
    spec = cell(f"timm:input_size=299,{SMALL}", dataset="nips17-dev")
    resolver.check(spec)
    model = resolver.model(spec.model)
    assert model.input_shape == (3, 299, 299) and model.resize_to == (224, 224)
    x = resolver.cell_examples(spec).x[:1]
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


@needs_nips17
@pytest.mark.slow
def test_inception_v3_classifies_a_nips17_dev_image_at_its_native_size(shared_data):
    resolver = Resolver(CPU)
    spec = cell("inception-v3:pretrained=false", dataset="nips17-dev")
    resolver.check(spec)
    x = resolver.cell_examples(spec).x[:1]
    with torch.no_grad():
        logits = resolver.model(spec.model)(x)
    assert x.shape == (1, 3, 299, 299) and logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_timm_weights_path_round_trip(tmp_path):
    spec = "timm:name=mobilenetv3_small_050,resize=false"
    trained = build(f"{spec},pretrained=false")
    path = tmp_path / "mnv3.pth"
    torch.save(trained.net.state_dict(), path)
    loaded = build(f'{spec},weights="{path}"')  # pretrained stays at its default: the file wins
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    assert loaded.checkpoints == {"mnv3.pth": sha256_of(path)}


def test_timm_pretrained_weights_are_identified_and_a_failed_download_is_a_clear_error(monkeypatch):
    import timm

    create = timm.create_model
    downloaded = {}

    def fake_create(name, pretrained=False, **kwargs):
        net = create(name, pretrained=False, **kwargs)
        if pretrained:  # stands in for timm's download from the Hugging Face hub
            downloaded[name] = net
        return net

    monkeypatch.setattr(timm, "create_model", fake_create)
    model = build("timm:name=mobilenetv3_small_050.lamb_in1k")
    net = downloaded["mobilenetv3_small_050.lamb_in1k"]
    assert model.checkpoints == {"timm/mobilenetv3_small_050.lamb_in1k": weights_digest(net)}
    with torch.no_grad():
        net.classifier.bias[0] += 1
    assert weights_digest(net) != model.checkpoints["timm/mobilenetv3_small_050.lamb_in1k"]

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CheckpointError, match=r"(?s)pretrained weights for inception_v3.tf_in1k.*pretrained=false"):
        build("inception-v3")


def test_unknown_timm_names_and_tags_suggest_what_exists():
    with pytest.raises(ValueError, match=r"no model 'resnet1888'; close matches: \[.*'resnet18'"):
        build("timm:name=resnet1888,pretrained=false")
    with pytest.raises(ValueError, match=r"no weights 'resnet18.nope'; resnet18 has: \[.*'resnet18.a1_in1k'"):
        build("timm:name=resnet18.nope,pretrained=false")


class _NotInstalled:
    """A meta-path finder that makes robustbench look absent, as on a machine without it."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] == "robustbench":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def test_robustbench_missing_is_a_clear_error(monkeypatch):
    for module in [m for m in sys.modules if m.split(".")[0] == "robustbench"]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setattr(sys, "meta_path", [_NotInstalled(), *sys.meta_path])
    with pytest.raises(ImportError, match="needs the robustbench package, which is not installed: pip install robustbench"):
        build("robustbench:name=Carmon2019Unlabeled")


@pytest.fixture
def robustbench_load_model(monkeypatch):
    """Replaces robustbench.utils.load_model (or a stand-in package when robustbench does not import)."""
    calls = []

    def load_model(name, model_dir, dataset, threat_model):
        calls.append(dict(name=name, model_dir=model_dir, dataset=dataset, threat_model=threat_model))
        if name == "Missing2099":
            raise RuntimeError("download failed")
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).train()

    try:
        import robustbench.utils as utils
    except ImportError:
        utils = types.ModuleType("robustbench.utils")
        package = types.ModuleType("robustbench")
        package.utils = utils
        monkeypatch.setitem(sys.modules, "robustbench", package)
        monkeypatch.setitem(sys.modules, "robustbench.utils", utils)
    monkeypatch.setattr(utils, "load_model", load_model, raising=False)
    return calls


def test_robustbench_factory_wraps_the_zoo_model(robustbench_load_model, monkeypatch, tmp_path):
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    model = build("robustbench:name=Carmon2019Unlabeled,dataset=cifar10,threat_model=Linf")
    assert robustbench_load_model == [dict(name="Carmon2019Unlabeled", model_dir=str(tmp_path / "robustbench"),
                                           dataset="cifar10", threat_model="Linf")]
    assert model.input_shape == (3, 32, 32) and model.num_classes == 10 and not model.net.training
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x), model.net(x))  # robustbench models normalise inside: nothing added
    assert model.checkpoints == {"robustbench/cifar10/Linf/Carmon2019Unlabeled": weights_digest(model.net)}
    saved = tmp_path / "robustbench" / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt"
    saved.parent.mkdir(parents=True)
    saved.write_bytes(b"stands in for the downloaded file")
    model = build("robustbench:name=Carmon2019Unlabeled")
    assert model.checkpoints == {"robustbench/cifar10/Linf/Carmon2019Unlabeled": sha256_of(saved)}
    assert build("robustbench:name=Salman2020Do_R18,dataset=imagenet").input_shape == (3, 224, 224)


def test_robustbench_bad_options_and_failed_loads_are_clear_errors(robustbench_load_model, tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of cifar10, cifar100, imagenet, got 'svhn'"):
        build("robustbench:name=Carmon2019Unlabeled,dataset=svhn")
    with pytest.raises(ValueError, match="threat_model must be one of Linf, L2, corruptions, got 'L1'"):
        build("robustbench:name=Carmon2019Unlabeled,threat_model=L1")
    expected = tmp_path / "cifar10" / "Linf" / "Missing2099.pt"
    with pytest.raises(CheckpointError, match="could not load 'Missing2099'") as error:
        build(f'robustbench:name=Missing2099,model_dir="{tmp_path}"')
    assert str(expected) in str(error.value)


def test_every_factory_is_registered():
    assert set(TRAINABLE) | set(NATIVE) | {"timm", "robustbench"} <= set(registry.names("models"))
