"""ComDefend (specs A7): networks, tiling, declared randomness, BPDA surrogate, the official weights and their safe reader."""

from __future__ import annotations

import os
import pickle
import time

import numpy as np
import pytest
import torch

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defense import BPDA, DefenseInputError
from robench.defenses.comdefend import ComDefend
from robench.defenses.comdefend.networks import tiled
from tests.conftest import DATA

WEIGHTS = DATA / "weights" / "comdefend"
IMAGENET = WEIGHTS / "enc20_0.0001.npy"
MNIST = WEIGHTS / "enc_mnist.npy"
needs_imagenet_weights = pytest.mark.skipif(
    not (IMAGENET.is_file() and (DATA / "imagenet_nips17_dev_head.npz").is_file()),
    reason=f"ComDefend's official ImageNet weights or the NIPS17 DEV head not found in {DATA}",
)
needs_mnist_weights = pytest.mark.skipif(
    not (MNIST.is_file() and (DATA / "mnist_test.npz").is_file()),
    reason=f"ComDefend's official Fashion-MNIST weights or the offline MNIST test set not found in {DATA}",
)


def images(size: int, batch: int = 2, channels: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1))


def save_official(path, arrays: list) -> None:
    """Write ``arrays`` as the official format: an npz (named .npy) holding one object array ``w``."""
    w = np.empty(len(arrays), dtype=object)
    for i, array in enumerate(arrays):
        w[i] = array
    with open(path, "wb") as handle:
        np.savez(handle, w=w)


def official_arrays(network) -> list[np.ndarray]:
    """A ConvStack's parameters in the released layout: TF kernels (3, 3, in, out) and biases, alternating."""
    arrays = []
    for conv in network.convs:
        arrays += [conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(), conv.bias.detach().numpy().copy()]
    return arrays


# --- networks and tiling ---------------------------------------------------------------------


def test_the_paper_networks_have_the_released_channels_and_0_78_m_parameters_each():
    defense = ComDefend()
    assert defense.comcnn.channels == (3, 16, 32, 64, 128, 256, 128, 64, 32, 12)
    assert defense.reccnn.channels == (12, 32, 64, 128, 256, 128, 64, 32, 16, 3)
    count = [sum(p.numel() for p in net.parameters()) for net in (defense.comcnn, defense.reccnn)]
    assert count == [783_372, 783_363]  # the sizes of enc20_0.0001.npy and dec20_0.0001.npy


def test_comcnn_takes_x_minus_half_and_reccnn_ends_in_a_sigmoid():
    defense = ComDefend(code_channels=4)
    x = images(8)
    hidden = torch.nn.functional.elu(defense.comcnn.convs[0](x - 0.5))
    for conv in defense.comcnn.convs[1:-1]:
        hidden = torch.nn.functional.elu(conv(hidden))
    assert torch.allclose(defense.comcnn(x), defense.comcnn.convs[-1](hidden), atol=1e-6)
    code = torch.randint(0, 2, (2, 4, 8, 8)).float()
    out = defense.reccnn(code)
    assert out.min() > 0 and out.max() < 1


@pytest.mark.parametrize("size", [28, 32, 75])
def test_output_keeps_shape_and_range(size):
    out = ComDefend(sigma=0)(images(size))
    assert out.shape == (2, 3, size, size) and 0 <= out.min() and out.max() <= 1


def test_tiling_applies_the_function_to_each_tile_alone_including_the_border_remainder():
    x = images(75, channels=2)

    def per_tile_mean(t):
        return t - t.mean(dim=(1, 2, 3), keepdim=True)

    expected = torch.empty_like(x)
    for top in range(0, 75, 32):
        for left in range(0, 75, 32):
            for b in range(2):
                tile = x[b:b + 1, :, top:top + 32, left:left + 32]
                expected[b:b + 1, :, top:top + 32, left:left + 32] = per_tile_mean(tile)
    assert torch.allclose(tiled(per_tile_mean, x, 32), expected, atol=1e-6)
    assert torch.equal(tiled(lambda t: t * 2, x, 32), x * 2)
    assert torch.equal(tiled(lambda t: t[:, :1], x, 100), x[:, :1]), "one tile when the image is smaller"


def test_tile_zero_runs_the_whole_image_and_differs_from_tiles_only_near_tile_borders():
    x = images(128, batch=1)
    whole, tiles = ComDefend(sigma=0, tile=0)(x), ComDefend(sigma=0, tile=64)(x)
    assert not torch.equal(whole, tiles)
    inner = (slice(None), slice(None), slice(18, 46), slice(82, 110))  # 18 px (18 convs) from every tile border
    assert torch.allclose(whole[inner], tiles[inner], atol=1e-5)


# --- declared behaviour: randomness, BPDA surrogate ----------------------------------------------


def test_code_noise_makes_it_stochastic_and_sigma_zero_deterministic_as_declared():
    x = images(32)
    noisy = ComDefend()
    assert noisy.stochastic is True and noisy.differentiable is False
    assert not torch.equal(noisy(x), noisy(x))
    torch.manual_seed(3)
    first = noisy(x)
    torch.manual_seed(3)
    assert torch.equal(noisy(x), first), "the noise comes from torch's generator"
    quiet = ComDefend(sigma=0)
    assert quiet.stochastic is False and torch.equal(quiet(x), quiet(x))


def test_the_code_is_the_thresholded_noisy_sigmoid_and_reccnn_decodes_it():
    defense = ComDefend(tile=0)
    x = images(32)
    torch.manual_seed(5)
    got = defense(x)
    torch.manual_seed(5)
    linear = defense.comcnn(x)
    code = (torch.sigmoid(linear - 1.0 * torch.randn(linear.shape)) > 0.5).float()
    assert torch.allclose(got, defense.reccnn(code), atol=1e-6)
    assert set(code.unique().tolist()) <= {0.0, 1.0}


def test_the_surrogate_is_straight_through_the_sigmoid_code():
    defense = ComDefend(tile=0)
    x = images(32).requires_grad_(True)
    torch.manual_seed(1)
    value = defense.surrogate(x)
    torch.manual_seed(1)
    assert torch.allclose(value, defense(x.detach()), atol=1e-6), "forward: the binarised code's reconstruction"
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    real = x.detach().clone().requires_grad_(True)
    (through_threshold,) = torch.autograd.grad(defense(real).sum(), real, allow_unused=True)
    assert through_threshold is None, "the threshold cuts the gradient: hence differentiable=False and BPDA"


def test_bpda_with_eot_averages_surrogate_gradients_over_the_noise():
    defense = ComDefend()
    x = images(32, batch=1).requires_grad_(True)
    grads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        (grad,) = torch.autograd.grad(BPDA(defense)(x).sum(), x)
        grads.append(grad)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert not torch.equal(grads[0], grads[1]), "each draw of the code noise gives its own gradient"


# --- checkpoints: robench's state dict and the official format -------------------------------


def test_a_saved_state_dict_reloads_to_identical_outputs_and_enters_the_key(tmp_path):
    trained = ComDefend(init_seed=7, sigma=0)
    path = tmp_path / "comdefend.pt"
    torch.save(trained.state_dict(), path)
    loaded = registry.build("defenses", f"comdefend:sigma=0,weights={path}")
    x = images(32)
    assert torch.equal(loaded(x), trained(x))
    assert loaded.checkpoints == {"comdefend.pt": sha256_of(path)}
    assert not torch.equal(ComDefend(sigma=0)(x), trained(x)), "init_seed changes the module"


def test_the_released_layout_loads_key_for_key_with_the_decoder_beside_it(tmp_path):
    source = ComDefend(init_seed=3, in_channels=1, code_channels=4, sigma=0)
    save_official(tmp_path / "enc_mine.npy", official_arrays(source.comcnn))
    save_official(tmp_path / "dec_mine.npy", official_arrays(source.reccnn))
    loaded = ComDefend(weights=str(tmp_path / "enc_mine.npy"), sigma=0)
    x = images(28, channels=1)
    assert torch.allclose(loaded(x), source(x), atol=1e-6)
    assert loaded.comcnn.channels == source.comcnn.channels
    assert set(loaded.checkpoints) == {"enc_mine.npy", "dec_mine.npy"}
    assert loaded.checkpoints["dec_mine.npy"] == sha256_of(tmp_path / "dec_mine.npy")
    (tmp_path / "dec_mine.npy").rename(tmp_path / "other.npy")
    explicit = ComDefend(weights=str(tmp_path / "enc_mine.npy"), decoder=str(tmp_path / "other.npy"), sigma=0)
    assert torch.allclose(explicit(x), source(x), atol=1e-6)


class _Shell:
    """Pickles as a call of ``os.system``: what a crafted object array can ask the unpickler to run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval"])
def test_a_crafted_official_file_is_refused_without_running_anything(tmp_path, payload):
    marker = tmp_path / "ran"
    evil = _Shell(marker) if payload == "os.system" else type("E", (), {"__reduce__": lambda s: (eval, ("1",))})()
    w = np.empty(2, dtype=object)
    w[0], w[1] = np.zeros(3, dtype=np.float32), evil
    with open(tmp_path / "enc_evil.npy", "wb") as handle:
        np.savez(handle, w=w)
    save_official(tmp_path / "dec_evil.npy", [np.zeros(3, dtype=np.float32)])
    with pytest.raises(CheckpointError, match=r"refused as a ComDefend weight file: it asks to import (posix|os|nt|builtins)\.(system|eval)"):
        ComDefend(weights=str(tmp_path / "enc_evil.npy"))
    assert not marker.exists()


def test_a_crafted_torch_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"comcnn.convs.0.weight": _Shell(marker)}, handle)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        ComDefend(weights=str(tmp_path / "evil.pt"))
    assert not marker.exists()


def _wrong(arrays: list) -> list:
    arrays = list(arrays)
    arrays[2] = np.zeros((3, 3, 5, 32), dtype=np.float32)  # layer 2 takes 5 channels after a 16-channel layer
    return arrays


@pytest.mark.parametrize("edit, mentions", [
    (_wrong, "layer 2 of 9: kernel takes 5 channels, the layer before gives 16"),
    (lambda arrays: arrays[:-1], "holds 17 arrays"),
    (lambda arrays: arrays[:1] + [np.zeros(5, np.float32)] + arrays[2:], r"bias of shape \(5,\), expected \(16,\)"),
    (lambda arrays: arrays[:1] + [np.array(["x"] * 16)] + arrays[2:], "entry 1 is not a float array"),
])
def test_an_official_file_with_wrong_shapes_is_named(tmp_path, edit, mentions):
    source = ComDefend()
    save_official(tmp_path / "enc_bad.npy", edit(official_arrays(source.comcnn)))
    save_official(tmp_path / "dec_bad.npy", official_arrays(source.reccnn))
    with pytest.raises(CheckpointError, match=mentions):
        ComDefend(weights=str(tmp_path / "enc_bad.npy"))


@pytest.mark.parametrize("spec, error, mentions", [
    ("comdefend:sigma=-1", ValueError, "sigma must be a number >= 0"),
    ("comdefend:tile=-1", ValueError, "tile must be a tile side"),
    ("comdefend:tile=1.5", ValueError, "option tile=1.5 is not of type int"),
    ("comdefend:in_channels=0", ValueError, "in_channels must be None"),
    ("comdefend:decoder=dec.npy", ValueError, "give ComCNN's as weights=PATH"),
    ("comdefend:weights=missing.npy", CheckpointError, "does not exist"),
])
def test_bad_options_are_named(spec, error, mentions):
    with pytest.raises(error, match=mentions):
        registry.build("defenses", spec)


def test_bad_weight_combinations_are_named(tmp_path):
    torch.save(ComDefend().state_dict(), tmp_path / "mine.pt")
    with pytest.raises(ValueError, match="decoder=PATH belongs to the official files"):
        ComDefend(weights=str(tmp_path / "mine.pt"), decoder="dec.npy")
    with pytest.raises(CheckpointError, match="code_channels=4, but the weights have 12"):
        ComDefend(weights=str(tmp_path / "mine.pt"), code_channels=4)
    save_official(tmp_path / "encoder.npy", official_arrays(ComDefend().comcnn))
    save_official(tmp_path / "weights.npy", official_arrays(ComDefend().comcnn))
    with pytest.raises(ValueError, match="give it as decoder=PATH"):
        ComDefend(weights=str(tmp_path / "weights.npy"))
    with pytest.raises(CheckpointError, match="decoder.npy' does not exist"):
        ComDefend(weights=str(tmp_path / "encoder.npy"))
    with pytest.raises(DefenseInputError, match="take 3-channel images"):
        ComDefend()(images(32, channels=1))


# --- the official weights on real images ------------------------------------------------------


@pytest.fixture(scope="module")
def nips17_images() -> torch.Tensor:
    from robench.imagenet import nips17_dev

    return nips17_dev(root=DATA).load(n=4).x


@needs_imagenet_weights
def test_official_imagenet_weights_reconstruct_nips17_images_as_measured(nips17_images, record_property):
    defense = ComDefend(weights=str(IMAGENET))
    assert defense.checkpoints == {"enc20_0.0001.npy": sha256_of(IMAGENET),
                                   "dec20_0.0001.npy": sha256_of(WEIGHTS / "dec20_0.0001.npy")}
    x = nips17_images
    torch.manual_seed(0)
    with torch.no_grad():
        began = time.perf_counter()
        out = defense(x)
        seconds = (time.perf_counter() - began) / len(x)
        ones = (defense.noisy_code(x[:2]) > 0.5).float().mean().item()  # whole images, as the README counts
    values = psnr(out, x)
    record_property("psnr_db", values.tolist())
    record_property("code_ones", ones)
    record_property("seconds_per_299px_image", seconds)
    print(f"ComDefend ImageNet weights, 4 NIPS17 DEV images at 299: PSNR {[round(v, 1) for v in values.tolist()]} dB "
          f"(median {values.median().item():.1f}), {100 * ones:.1f}% code ones, {seconds:.2f} s/image")
    assert values.median().item() >= 27.0, "the data README measures a median of 29.6 dB"
    assert values.min().item() >= 24.0
    assert 0.50 <= ones <= 0.62, "the data README measures 55.8% ones"


@needs_imagenet_weights
def test_official_weights_tiled_and_whole_image_outputs_are_close(nips17_images):
    crops = nips17_images[:, :, 80:230, 80:230]  # 150 px: four 32 px tiles and a 22 px remainder per side
    tiles, whole = ComDefend(weights=str(IMAGENET), sigma=0), ComDefend(weights=str(IMAGENET), sigma=0, tile=0)
    with torch.no_grad():
        a, b = tiles(crops), whole(crops)
    difference = (a - b).abs().mean().item()
    assert 0 < difference <= 0.02, "the data README measures a mean absolute difference of 0.010 at 299"
    assert abs(psnr(a, crops).median().item() - psnr(b, crops).median().item()) <= 1.0


@needs_mnist_weights
def test_fashion_mnist_weights_load_and_reconstruct_mnist_digits(shared_data):
    defense = registry.build("defenses", f"comdefend:weights={MNIST}")
    assert defense.comcnn.channels == (1, 32, 64, 128, 256, 128, 64, 64, 32, 4)
    assert defense.reccnn.channels == (4, 32, 64, 128, 256, 128, 64, 64, 32, 1)
    x = registry.build("datasets", "mnist").load(n=8).x
    torch.manual_seed(0)
    with torch.no_grad():
        out = defense(x)
    assert out.shape == x.shape == (8, 1, 28, 28)
    assert psnr(out, x).median().item() >= 15.0
    with pytest.raises(CheckpointError, match="in_channels=3, but the weights have 1"):
        ComDefend(weights=str(MNIST), in_channels=3)
