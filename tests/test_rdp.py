"""RDP's purifier (specs A2): shapes, determinism as declared, gradients, checkpoints, options."""

from __future__ import annotations

import pytest
import torch

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defenses.rdp.networks import Discriminator, PurifierNet, ReconstructionNet

SMALL = "rdp:width=8,blocks=1"


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("size", [32, 128, 299])
def test_any_input_size_gives_the_same_shape_in_the_unit_box(size):
    defense = registry.build("defenses", SMALL)
    out = defense(images(size, batch=1))
    assert out.shape == (1, 3, size, size)
    assert 0 <= out.min().item() and out.max().item() <= 1


def test_paper_size_is_eight_blocks_of_sixty_four_channels_per_encoder_and_decoder():
    purifier = registry.build("defenses", "rdp").purifier
    assert len(purifier.encoder.body) == 8 and len(purifier.decoder.body) == 8
    assert purifier.encoder.head.out_channels == 64
    per_block = 2 * (64 * 64 * 9 + 64)
    head_tail = (3 * 64 * 9 + 64) + (64 * 3 * 9 + 3)
    assert sum(p.numel() for p in purifier.parameters()) == 16 * per_block + head_tail


def test_no_global_skip_a_zeroed_tail_outputs_zero_not_the_input():
    defense = registry.build("defenses", SMALL)
    with torch.no_grad():
        defense.purifier.decoder.tail.weight.zero_()
        defense.purifier.decoder.tail.bias.zero_()
    assert defense(images(32)).abs().max().item() == 0


def test_static_rdp_is_deterministic_and_dynamic_rdp_is_stochastic_as_declared():
    x = images(32)
    static = registry.build("defenses", SMALL)
    assert static.stochastic is False and torch.equal(static(x), static(x))
    dynamic = registry.build("defenses", SMALL + ",noise=0.05")
    assert dynamic.stochastic is True
    assert not torch.equal(dynamic(x), dynamic(x))


def test_dynamic_rdp_purifies_the_noisy_image():
    x = images(32)
    dynamic = registry.build("defenses", SMALL + ",noise=0.05,project_eps=16/255")
    torch.manual_seed(3)
    got = dynamic(x)
    torch.manual_seed(3)
    noisy = (x + 0.05 * torch.randn_like(x)).clamp(x - 16 / 255, x + 16 / 255).clamp(0, 1)
    expected = dynamic.purifier(noisy).clamp(0, 1)
    assert torch.allclose(got, expected, atol=1e-6)


def test_gradient_reaches_the_input_and_every_parameter():
    defense = registry.build("defenses", SMALL)
    x = images(32).requires_grad_(True)
    defense(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum().item() > 0
    assert all(p.grad is not None for p in defense.parameters())


def test_saved_state_dict_reloads_to_identical_outputs_and_enters_the_key(tmp_path):
    trained = registry.build("defenses", SMALL + ",init_seed=7")
    path = tmp_path / "rdp.pt"
    torch.save({"state_dict": trained.purifier.state_dict()}, path)
    loaded = registry.build("defenses", f"{SMALL},weights={path}")
    x = images(32)
    assert torch.equal(loaded(x), trained(x))
    assert loaded.checkpoints == {"rdp.pt": sha256_of(path)}
    assert not torch.equal(registry.build("defenses", SMALL)(x), trained(x)), "init_seed changes the module"


def test_a_checkpoint_of_another_width_is_named(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(PurifierNet(width=16, blocks=1).state_dict(), path)
    with pytest.raises(CheckpointError, match="shape"):
        registry.build("defenses", f"{SMALL},weights={path}")


@pytest.mark.parametrize("spec, mentions", [
    ("rdp:width=0", "width"), ("rdp:blocks=1.5", "blocks"), ("rdp:project_eps=16/255", "noise=0.05"),
    ("rdp:noise=2", "noise must be"),
])
def test_bad_options_are_named(spec, mentions):
    with pytest.raises(Exception, match=mentions):
        registry.build("defenses", spec)


def test_reconstruction_branch_and_discriminator_take_any_size():
    purifier, reconstruction, discriminator = PurifierNet(width=8, blocks=1), ReconstructionNet(width=8, blocks=1), \
        Discriminator(width=4)
    for size in (32, 128):
        x = images(size)
        assert reconstruction(x, purifier.encode(x)).shape == x.shape
        assert discriminator(x).shape == (2,)
