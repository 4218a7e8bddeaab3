"""HGD (Liao et al. CVPR 2018, specs A3): the DUNET, the released layout, the defense's contract."""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defenses.hgd import DUNET, HGD
from robench.defenses.hgd.networks import stage_sizes

SMALL = "hgd:input_size=32,width=4"


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def spec_a3_parameters(width: int = 64) -> int:
    """DUNET's parameters counted from specs A3's description: blocks of conv3x3 (no bias) + BN (2 per channel)."""
    fwd, back = [width * k for k in (1, 2, 4, 4, 4)], [width * k for k in (1, 2, 4, 4)]
    total, n_in = 0, 3
    for n_out, blocks in zip(fwd, (2, 3, 3, 3, 3)):
        total += (9 * n_in * n_out + 2 * n_out) + (blocks - 1) * (9 * n_out * n_out + 2 * n_out)
        n_in = n_out
    inputs = [fwd[i] + (back[i + 1] if i < 3 else fwd[4]) for i in range(4)]  # upsampled deeper stage + lateral
    for n_in, n_out, blocks in zip(inputs, back, (2, 3, 3, 3)):
        total += (9 * n_in * n_out + 2 * n_out) + (blocks - 1) * (9 * n_out * n_out + 2 * n_out)
    return total + back[0] * 3  # final 1x1 conv to 3 channels, no bias


def test_the_paper_size_has_specs_a3s_11_0_million_parameters():
    count = sum(p.numel() for p in DUNET(input_size=299).parameters())
    assert count == spec_a3_parameters() == 11_033_984
    assert round(count / 1e6, 1) == 11.0
    assert sum(p.numel() for p in DUNET(input_size=32, width=8).parameters()) == spec_a3_parameters(8)


def test_upsampling_sizes_follow_the_configured_input_size():
    assert stage_sizes(299) == [299, 150, 75, 38, 19] and stage_sizes(32) == [32, 16, 8, 4, 2]
    assert [up.size for up in DUNET(input_size=299, width=2).upsample] == [(s, s) for s in (299, 150, 75, 38)]
    assert [up.size for up in DUNET(input_size=32, width=2).upsample] == [(s, s) for s in (32, 16, 8, 4)]


@pytest.mark.parametrize("size", [32, 299])
def test_shapes_range_and_gradient(size):
    defense = registry.build("defenses", f"hgd:input_size={size},width=2")
    x = images(size, batch=1).requires_grad_(True)
    out = defense(x)
    assert out.shape == x.shape and 0 <= out.min().item() and out.max().item() <= 1
    out.sum().backward()
    assert x.grad.abs().sum().item() > 0


def test_a_wrong_image_size_names_the_input_size_to_build():
    with pytest.raises(ValueError, match="input_size=32"):
        registry.build("defenses", "hgd:input_size=299,width=2")(images(32))


def test_output_is_the_input_plus_the_predicted_correction_in_minus_one_to_one():
    defense = registry.build("defenses", SMALL).eval()
    x = images(32)
    assert not torch.allclose(defense(x), x, atol=1e-3), "an untrained DUNET changes the image"
    with torch.no_grad():
        defense.denoiser.final.weight.zero_()  # no correction: the denoiser returns its input
    assert torch.allclose(defense(x), x, atol=1e-6)


def test_deterministic_as_declared():
    defense = registry.build("defenses", SMALL).eval()
    x = images(32)
    torch.manual_seed(1)
    first = defense(x)
    torch.manual_seed(2)
    assert defense.stochastic is False and defense.differentiable is True and torch.equal(first, defense(x))


def released_file(source: HGD, path, *, legacy: bool = True) -> None:
    """What the authors' training script saves: the whole guided model under ``net.``, its DUNET under
    ``net.denoise.``, written by PyTorch 0.3 (no ``num_batches_tracked``), with the script's arguments."""
    state = {f"net.denoise.{k}": v for k, v in source.denoiser.state_dict().items()
             if not (legacy and k.endswith("num_batches_tracked"))}
    state["net.conv2d_1a.conv.weight"] = torch.zeros(32, 3, 3, 3)  # the guide classifier's tensors
    state["net.classif.weight"] = torch.zeros(1001, 2048)
    torch.save({"epoch": 12, "save_dir": "results/sample", "state_dict": state,
                "args": argparse.Namespace(lr=0.01, epochs=100, optimizer="adam")}, path)


def with_statistics(defense: HGD, seed: int) -> HGD:
    """Give every BatchNorm non-trivial running statistics, so a wrong mapping shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in defense.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return defense.eval()


def test_the_released_layout_loads_key_for_key_and_enters_the_key(tmp_path):
    source = with_statistics(registry.build("defenses", SMALL + ",init_seed=5"), seed=3)
    path = tmp_path / "denoise_incepv3_012.ckpt"
    released_file(source, path)
    loaded = registry.build("defenses", f"{SMALL},weights={path}").eval()
    x = images(32)
    assert torch.equal(loaded(x), source(x)) and loaded.checkpoints == {path.name: sha256_of(path)}
    assert not torch.equal(registry.build("defenses", SMALL).eval()(x), source(x)), "the weights changed the output"


def test_the_released_layout_without_its_counters_or_with_another_width_is_checked(tmp_path):
    source = registry.build("defenses", SMALL)
    released_file(source, tmp_path / "modern.ckpt", legacy=False)
    assert registry.build("defenses", f"{SMALL},weights={tmp_path / 'modern.ckpt'}").checkpoints
    with pytest.raises(CheckpointError, match="shape"):
        registry.build("defenses", f"hgd:input_size=32,width=8,weights={tmp_path / 'modern.ckpt'}")
    torch.save({"state_dict": {"net.conv2d_1a.conv.weight": torch.zeros(1)}}, tmp_path / "classifier.ckpt")
    with pytest.raises(CheckpointError, match="not an HGD checkpoint"):
        registry.build("defenses", f"{SMALL},weights={tmp_path / 'classifier.ckpt'}")


class _Shell:
    """Pickles as a call of ``os.system``: what a crafted checkpoint can ask the unpickler to run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "ran"
    with open(tmp_path / "evil.ckpt", "wb") as handle:
        pickle.dump({"state_dict": {"net.denoise.final.weight": _Shell(marker)}, "args": argparse.Namespace()}, handle,
                    protocol=2)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        registry.build("defenses", f"{SMALL},weights={tmp_path / 'evil.ckpt'}")
    assert not marker.exists()


@pytest.mark.parametrize("spec, mentions", [
    ("hgd:input_size=0", "input_size"), ("hgd:width=2.5", "width"), ("hgd:init_seed=true", "init_seed"),
])
def test_bad_options_are_named(spec, mentions):
    with pytest.raises(ValueError, match=mentions):
        registry.build("defenses", spec)
