"""AT-FD's ``resnet152-fd``: parameter counts, the denoising block, the released npz layout, training."""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torchvision.models import ResNet152_Weights

from robench import registry
from robench.archs.feature_denoise import STAGE_WIDTHS, NonLocalDenoise
from robench.checkpoint import CheckpointError, sha256_of
from robench.cli import main
from robench.models.feature_denoise import load_tensorpack, read_npz, tensorpack_names, to_tensorpack
from robench.spec import parse_spec

BLOCKS_152 = (3, 8, 36, 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return registry.build("models", "resnet152-fd")


def randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``net`` with every weight and BatchNorm statistic drawn at random (BN and denoising gammas non-zero)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
            elif name.endswith(".weight") and tensor.ndim == 1:  # BN gammas below 1 keep 50 blocks' outputs moderate
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.3 + 0.2)
            elif tensor.ndim == 4:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * math.sqrt(2 / tensor[0].numel()))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return net.eval()


def denoise_blocks(net):
    return [m for m in net.modules() if isinstance(m, NonLocalDenoise)]


# --- architecture ---


def test_without_its_denoising_blocks_it_is_torchvisions_resnet152_and_the_blocks_add_2c2_plus_2c(model):
    blocks = denoise_blocks(model.net)
    assert [b.theta.in_channels for b in blocks] == list(STAGE_WIDTHS)
    total = sum(p.numel() for p in model.net.parameters())
    in_blocks = sum(p.numel() for b in blocks for p in b.parameters())
    assert total - in_blocks == ResNet152_Weights.IMAGENET1K_V1.meta["num_params"] == 60_192_808
    # theta and phi: C x C/2 each, the 1x1 conv: C x C, its BN: gamma and beta
    assert in_blocks == sum(2 * c * (c // 2) + c * c + 2 * c for c in (256, 512, 1024, 2048)) == 11_148_800


def test_it_takes_224_rgb_images_in_0_1_normalised_to_minus_1_1(model):
    assert model.input_shape == (3, 224, 224) and model.num_classes == 1000 and model.checkpoints == {}
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        logits = model(x)
        assert torch.equal(logits, model.net(x * 2 - 1))  # mean = std = 0.5
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_strided_layers_pad_like_tensorflow_same(model):
    x = torch.randn(1, 3, 16, 16)
    stem = model.net.conv1  # 7x7, stride 2 on an even side: TF pads 2 before and 3 after
    with torch.no_grad():
        assert torch.allclose(stem(x), F.conv2d(F.pad(x, (2, 3, 2, 3)), stem.weight, stride=2), atol=1e-5)
        assert torch.equal(model.net.maxpool(x), F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-math.inf), 3, 2))


def test_a_denoising_block_with_zero_bn_gamma_is_the_identity_in_both_modes():
    torch.manual_seed(0)
    block = NonLocalDenoise(8)
    assert torch.equal(block.bn.weight, torch.zeros(8))  # the authors' initialisation
    x = torch.randn(2, 8, 5, 5)
    for mode in (True, False):
        block.train(mode)
        assert torch.equal(block(x), x)
    with torch.no_grad():
        block.bn.weight.fill_(1.0)
    assert not torch.allclose(block.eval()(x), x)


@pytest.mark.parametrize("op", ["softmax", "dot-product"])
def test_non_local_means_match_a_hand_computation(op):
    torch.manual_seed(1)
    block = NonLocalDenoise(4, op=op)
    with torch.no_grad():
        block.theta.weight.normal_()
        block.phi.weight.normal_()
    block.requires_grad_(False)
    x = torch.randn(1, 4, 2, 3)
    theta = block.theta.weight[:, :, 0, 0] @ x[0].reshape(4, 6)  # (C/2, positions)
    phi = block.phi.weight[:, :, 0, 0] @ x[0].reshape(4, 6)
    expected = torch.zeros(4, 6)
    for i in range(6):
        scores = [float(theta[:, i] @ phi[:, j]) for j in range(6)]
        if op == "softmax":
            exp = [math.exp(s / math.sqrt(2)) for s in scores]
            weights = [e / sum(exp) for e in exp]
        else:
            weights = [s / 6 for s in scores]
        expected[:, i] = sum(w * x[0].reshape(4, 6)[:, j] for j, w in enumerate(weights))
    with torch.no_grad():
        got = block.nonlocal_means(x)
    assert torch.allclose(got[0].reshape(4, 6), expected, rtol=1e-4, atol=1e-5)


# --- the released npz layout ---


def test_released_names_are_the_authors_tensorpack_names(model):
    names = tensorpack_names(model.net)
    per_block = 3 * 5  # conv1..3: W and four BN arrays each
    shortcuts, stem, linear, denoise = 4 * 5, 5, 2, 4 * (2 + 5)
    assert len(names) == sum(BLOCKS_152) * per_block + shortcuts + stem + linear + denoise == 805
    assert set(names.values()) == {k for k in model.net.state_dict() if not k.endswith("num_batches_tracked")}
    for name in ("conv0/W", "conv0/bn/mean/EMA", "group2/block35/conv3/bn/gamma", "group3/block0/convshortcut/W",
                 "group1_denoise/embedding_theta/W", "group3_denoise/conv/bn/variance/EMA", "linear/b"):
        assert name in names


@pytest.mark.parametrize("spec, classes", [
    ("resnet152-fd:depth=50,num_classes=10", 10),  # every kind of name, at a third of the cost
    pytest.param("resnet152-fd:depth=152", 1000, marks=pytest.mark.slow),
])
def test_npz_round_trip_key_for_key_gives_the_same_network(spec, classes, tmp_path):
    torch.manual_seed(0)
    fresh = registry.build("models", spec).net
    source = randomised(copy.deepcopy(fresh), seed=3)
    arrays = to_tensorpack(source)
    assert arrays["conv0/W:0"].shape == (7, 7, 3, 64) and arrays["linear/W:0"].shape == (2048, classes)
    assert arrays["group0_denoise/embedding_phi/W:0"].shape == (1, 1, 256, 128)
    # BGR stem: input channel 0 of the file is the network's blue channel (its input channel 2)
    assert np.array_equal(arrays["conv0/W:0"][:, :, 0, :], source.conv1.weight[:, 2].detach().permute(1, 2, 0).numpy())
    path = tmp_path / "R152-Denoise.npz"
    np.savez(path, **arrays)
    loaded = registry.build("models", f'{spec},weights="{path}",input_size=64,resize=false')
    assert loaded.input_shape == (3, 64, 64) and loaded.checkpoints == {"R152-Denoise.npz": sha256_of(path)}
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded.net.state_dict()[key], value), key
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected, got, before = source(x * 2 - 1), loaded(x), fresh(x * 2 - 1)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, expected, rtol=1e-2, atol=1e-2)  # the weights did change the network
    # the file's own convention: its unflipped stem on the BGR image computes the same logits
    bgr = copy.deepcopy(source)
    with torch.no_grad():
        bgr.conv1.weight.copy_(torch.from_numpy(arrays["conv0/W:0"]).permute(3, 2, 0, 1))
        assert torch.allclose(bgr(x.flip(1) * 2 - 1), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def small_arrays():
    """Released-layout arrays of a fresh depth-50, 10-class network, with and without denoising blocks."""
    torch.manual_seed(0)
    return {denoise: to_tensorpack(registry.build("models", f"resnet152-fd:depth=50,denoise={denoise},num_classes=10").net)
            for denoise in ("softmax", "none")}


def small_npz(tmp_path: Path, arrays: dict, name: str = "weights.npz") -> Path:
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def test_missing_and_unexpected_arrays_are_named(small_arrays, tmp_path):
    arrays = {k: v for k, v in small_arrays["softmax"].items() if k != "group1_denoise/conv/W:0"}
    path = small_npz(tmp_path, {**arrays, "global_step:0": np.zeros((), np.float32)}, "edited.npz")
    with pytest.raises(CheckpointError, match=r"1 missing arrays \(first: \['group1_denoise/conv/W'\]\), "
                                              r"1 unexpected \(first: \['global_step'\]\)"):
        registry.build("models", f'resnet152-fd:depth=50,num_classes=10,weights="{path}"')
    baseline = small_npz(tmp_path, small_arrays["none"])  # the authors' R152.npz layout: no denoising blocks
    with pytest.raises(CheckpointError, match="R152.npz needs denoise=none"):
        registry.build("models", f'resnet152-fd:depth=50,num_classes=10,weights="{baseline}"')
    model = registry.build("models", f'resnet152-fd:depth=50,num_classes=10,denoise=none,weights="{baseline}"')
    assert set(model.checkpoints) == {"weights.npz"}
    with pytest.raises(CheckpointError, match=r"linear/W has shape \(2048, 10\).* \(check depth= and num_classes=\)"):
        load_tensorpack(registry.build("models", "resnet152-fd:depth=50,num_classes=7,denoise=none").net, baseline)


class _Touch:
    """Unpickling it would create a file: proof that a pickle ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def test_an_npz_with_an_object_array_is_refused_and_nothing_in_it_runs(small_arrays, tmp_path):
    marker = tmp_path / "pickle-ran"
    path = small_npz(tmp_path, {**small_arrays["softmax"], "linear/b:0": np.array([_Touch(marker)], dtype=object)})
    pickle.loads(pickle.dumps(_Touch(tmp_path / "probe")))
    assert (tmp_path / "probe").exists()  # the payload works when unpickled
    with pytest.raises(CheckpointError, match="'linear/b:0' is an object array"):
        registry.build("models", f'resnet152-fd:depth=50,num_classes=10,weights="{path}"')
    assert not marker.exists()


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="denoise must be one of softmax, dot-product, none, got 'mean'"):
        registry.build("models", "resnet152-fd:denoise=mean")
    with pytest.raises(ValueError, match="depth must be one of 50, 101, 152, got 34"):
        registry.build("models", "resnet152-fd:depth=34")
    with pytest.raises(ValueError, match="input_size must be an integer"):
        registry.build("models", "resnet152-fd:input_size=4")


def test_files_that_are_not_npz_archives_of_floats_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="do not exist"):
        read_npz(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not weights")
    with pytest.raises(CheckpointError, match="not an npz archive: numpy could only read it as a pickle"):
        read_npz(tmp_path / "text.npz")
    np.save(tmp_path / "single.npy", np.zeros(3, np.float32))
    with pytest.raises(CheckpointError, match="a single array, not an npz archive"):
        read_npz(tmp_path / "single.npy")
    np.savez(tmp_path / "ints.npz", **{"conv0/W:0": np.zeros((7, 7, 3, 64), np.int64)})
    with pytest.raises(CheckpointError, match="'conv0/W:0' has dtype int64"):
        read_npz(tmp_path / "ints.npz")
    assert set(read_npz(small_npz(tmp_path, {"a/W:0": np.ones(2, np.float32), "b": np.ones(1, np.float16)}))) == {
        "a/W", "b"}


# --- training ---


def test_robench_train_at_trains_it_and_the_checkpoint_loads_back(tmp_path):
    output = tmp_path / "fd.pt"
    model = "resnet152-fd:depth=50,num_classes=10,input_size=32,resize=false"
    result = CliRunner().invoke(main, [
        "train", "at:steps=1", "--model", model, "--dataset", "synthetic:size=8", "--split", "test", "--epochs", "1",
        "--batch-size", "4", "--eval-n", "0", "--device", "cpu", "--no-progress", "--output", str(output),
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    card = json.loads(output.with_suffix(".json").read_text())
    assert parse_spec(card["model"]) == parse_spec(f'{model},weights="{output}"')
    trained = registry.build("models", card["model"])  # the card names the model that loads the checkpoint
    assert trained.checkpoints == {"fd.pt": sha256_of(output)}
    assert len(denoise_blocks(trained.net)) == 4
