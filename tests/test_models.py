"""Target model factories: shapes, checkpoint checks, and clean accuracy against the measured numbers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robench import models
from robench.archs.cifar_resnet import resnet18
from robench.archs.resnet_akamaster import resnet_cifar
from robench.archs.small_cnn import mnist_small_cnn
from robench.archs.templates import class_templates
from robench.checkpoint import CheckpointError

DATA = Path(os.environ.get("ROBENCH_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "weights").is_dir(), reason=f"offline test data not found at {DATA}")
R20_FILE = "akamaster_resnet20-12fca82f.th"


@pytest.fixture
def shared_data(monkeypatch):
    monkeypatch.setenv("ROBENCH_DATA", str(DATA))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    return DATA


@pytest.fixture(scope="module")
def cifar():
    arrays = np.load(DATA / "cifar10_test_head.npz")
    x = torch.from_numpy(arrays["x"]).permute(0, 3, 1, 2).float().div(255).contiguous()
    return x, torch.from_numpy(arrays["y"])


@pytest.fixture(scope="module")
def mnist():
    arrays = np.load(DATA / "mnist_test.npz")
    return torch.from_numpy(arrays["x"]).unsqueeze(1).float().div(255), torch.from_numpy(arrays["y"])


def correct(model, x, y, batch=500):
    with torch.no_grad():
        return sum(int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))


def test_tiny_builds_for_its_shape_and_classifies_its_templates():
    model = models.tiny(channels=1, size=8, num_classes=4)
    assert model.input_shape == (1, 8, 8) and model.num_classes == 4
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    templates = class_templates(10, 3, 32)
    assert templates.min() >= 0.5 - 0.065 and templates.max() <= 0.5 + 0.065
    assert torch.equal(models.tiny()(templates).argmax(1), torch.arange(10))


def test_wrong_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects inputs shaped \(B, 3, 32, 32\); got \(2, 1, 28, 28\)"):
        models.tiny()(torch.rand(2, 1, 28, 28))


def test_architectures_have_the_published_sizes():
    net = resnet18()
    assert sum(p.numel() for p in net.parameters()) == 11_173_962
    assert len(net.state_dict()) == 122
    # parameter counts in akamaster/pytorch_resnet_cifar10's README: 0.27M, 0.46M, 0.66M, 0.85M
    sizes = {d: sum(p.numel() for p in resnet_cifar(d).parameters()) for d in (20, 32, 44, 56)}
    assert sizes == {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}
    assert resnet_cifar(56)(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet_cifar(18)


@needs_data
def test_resnet18_standard_reproduces_its_clean_accuracy(cifar):
    model = models.resnet18_standard()
    assert model.checkpoints == {"pyautoattack/examples/model_test.pt": models.PYAUTOATTACK_RESNET18.sha256}
    assert model.input_shape == (3, 32, 32) and not model.normalised
    x, y = cifar
    # README: 94.0 % on the first 200 CIFAR-10 test images; measured here: 188/200
    assert correct(model, x[:200], y[:200]) == 188


@needs_data
def test_resnet20_akamaster_reproduces_its_clean_accuracy(shared_data, cifar):
    model = models.resnet20_akamaster()
    assert model.checkpoints == {R20_FILE: models.AKAMASTER[20].sha256}
    x, y = cifar
    # README: 91.64 % on all 1017; measured here: 932/1017
    assert correct(model, x, y) == 932


@needs_data
def test_convex_cifar_small_reproduces_its_clean_accuracy(shared_data, cifar):
    model = models.convex_cifar_small()
    x, y = cifar
    # README: stage 0, 31.17 % on all 1017; measured here: 317/1017
    assert correct(model, x, y) == 317


@needs_data
@pytest.mark.parametrize("variant, expected", [("pgd_madry", 9899), ("fgsm", 9850)])
def test_mnist_fast_at_reproduces_its_clean_accuracy(shared_data, mnist, variant, expected):
    model = models.mnist_fast_at(variant=variant)
    assert model.input_shape == (1, 28, 28)
    x, y = mnist
    # README: pgd_madry 98.99 %, fgsm 98.50 % on all 10,000; measured here: 9899 and 9850
    assert correct(model, x, y) == expected


@needs_data
def test_modified_registered_file_fails_the_sha256_check(monkeypatch, tmp_path):
    (tmp_path / "weights").mkdir()
    copy = tmp_path / "weights" / R20_FILE
    shutil.copyfile(DATA / "weights" / R20_FILE, copy)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    with pytest.raises(CheckpointError, match="registered one is 12fca82f"):
        models.resnet20_akamaster()


@needs_data
def test_explicit_weights_are_loaded_unchecked_and_recorded(tmp_path):
    state = torch.load(DATA / "weights" / "fast_adversarial_mnist_fgsm.pth", map_location="cpu", weights_only=True)
    state["7.bias"] = state["7.bias"] + 1
    path = tmp_path / "retrained.pth"
    torch.save(state, path)
    model = models.mnist_fast_at(weights=path)
    (name, digest), = model.checkpoints.items()
    assert name == "retrained.pth" and digest not in {w.sha256 for w in models.MNIST_FAST_AT.values()}
    assert torch.equal(model.net[7].bias, state["7.bias"])


def test_state_dict_with_wrong_keys_names_them(tmp_path):
    state = mnist_small_cnn().state_dict()
    state["fc.weight"] = state.pop("5.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(first: \['5.weight'\]\).*unexpected keys \(first: \['fc.weight'\]\)"):
        models.mnist_fast_at(weights=path)


def test_missing_weights_offline_say_where_they_were_expected(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    expected = str(tmp_path / "weights" / "convex_cifar_small_8px.pth")
    with pytest.raises(CheckpointError, match="ROBENCH_DATA") as error:
        models.convex_cifar_small()
    assert expected in str(error.value)


def test_mnist_fast_at_has_no_download(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    monkeypatch.delenv("ROBENCH_OFFLINE", raising=False)
    with pytest.raises(CheckpointError, match="no stable download URL"):
        models.mnist_fast_at(variant="fgsm")
    with pytest.raises(ValueError, match="variant must be one of"):
        models.mnist_fast_at(variant="trades")


@needs_data
def test_missing_weights_are_downloaded_into_the_data_root(monkeypatch, tmp_path):
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        shutil.copyfile(DATA / "weights" / R20_FILE, dst)

    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path))
    monkeypatch.delenv("ROBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    model = models.resnet20_akamaster()
    assert calls == [(models.AKAMASTER[20].url, models.AKAMASTER[20].sha256)]
    assert calls[0][0].endswith("/pretrained_models/resnet20-12fca82f.th")
    assert (tmp_path / "weights" / R20_FILE).is_file()
    assert model.checkpoints == {R20_FILE: models.AKAMASTER[20].sha256}
