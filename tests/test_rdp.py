"""RDP's purifier (specs A2): shapes, determinism as declared, gradients, checkpoints, options."""

from __future__ import annotations

import pytest
import torch

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defenses.rdp.networks import PurifierNet, ReconstructionNet
from robench.train.gan import Discriminator, discriminator_loss

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
    torch.save({"state_dict": trained.state_dict()}, path)
    loaded = registry.build("defenses", f"{SMALL},weights={path}")
    x = images(32)
    assert torch.equal(loaded(x), trained(x))
    assert loaded.checkpoints == {"rdp.pt": sha256_of(path)}
    assert not torch.equal(registry.build("defenses", SMALL)(x), trained(x)), "init_seed changes the module"


def test_a_checkpoint_of_another_width_is_named(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(registry.build("defenses", "rdp:width=16,blocks=1").state_dict(), path)
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


def _nets(seed: int = 0):
    torch.manual_seed(seed)
    features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).requires_grad_(False)
    return features, PurifierNet(width=8, blocks=1), ReconstructionNet(width=8, blocks=1), Discriminator(width=4)


def test_each_loss_term_is_its_hand_computation():
    from robench.defenses.rdp.losses import Weights, purifier_loss, reconstruction_loss

    features, purifier, reconstruction, discriminator = _nets()
    x, x_adv = images(32, batch=3, seed=1), images(32, batch=3, seed=2)
    weights = Weights(pixel=0.3, latent=0.2, adversarial=0.5, reconstruction_pixel=0.7)
    terms, purified, latent = purifier_loss(features, discriminator, purifier, x, x_adv, weights)
    p = purifier(x_adv)
    assert torch.allclose(purified, p)
    assert terms["feature"].item() == pytest.approx((features(p) - features(x)).abs().mean().item(), rel=1e-5)
    assert terms["pixel"].item() == pytest.approx((p - x).abs().mean().item(), rel=1e-5)
    assert terms["latent"].item() == pytest.approx(
        (purifier.encode(x_adv) - purifier.encode(x)).abs().mean().item(), rel=1e-5)
    eq5 = -torch.log(torch.sigmoid(discriminator(p) - discriminator(x))).mean()
    assert terms["adversarial"].item() == pytest.approx(eq5.item(), rel=1e-5)
    eq6 = terms["feature"] + 0.3 * terms["pixel"] + 0.2 * terms["latent"] + 0.5 * terms["adversarial"]
    assert terms["total"].item() == pytest.approx(eq6.item(), rel=1e-6)

    rebuilt = reconstruction(x_adv, latent)
    r_terms = reconstruction_loss(features, reconstruction, x_adv, latent, weights)
    assert r_terms["feature"].item() == pytest.approx(
        (features(rebuilt) - features(x_adv)).abs().mean().item(), rel=1e-5)
    assert r_terms["pixel"].item() == pytest.approx((rebuilt - x_adv).abs().mean().item(), rel=1e-5)
    assert r_terms["total"].item() == pytest.approx((r_terms["feature"] + 0.7 * r_terms["pixel"]).item(), rel=1e-6)

    d_loss = -torch.log(torch.sigmoid(discriminator(x) - discriminator(p))).mean()
    assert discriminator_loss(discriminator, x, purified).item() == pytest.approx(d_loss.item(), rel=1e-5)


def test_reconstruction_loss_trains_r_only():
    from robench.defenses.rdp.losses import purifier_loss, reconstruction_loss

    features, purifier, reconstruction, discriminator = _nets()
    x, x_adv = images(32, seed=1), images(32, seed=2)
    _, _, latent = purifier_loss(features, discriminator, purifier, x, x_adv)
    reconstruction_loss(features, reconstruction, x_adv, latent)["total"].backward()
    assert all(p.grad is None for p in purifier.parameters())
    assert all(p.grad is not None for p in reconstruction.parameters())


def test_one_step_lowers_l_p_and_the_discriminator_step_raises_its_margin():
    from robench.defenses.rdp.losses import purifier_loss

    features, purifier, _, discriminator = _nets()
    x, x_adv = images(32, batch=4, seed=1), images(32, batch=4, seed=2)
    optimiser = torch.optim.SGD(purifier.parameters(), lr=1e-2)
    before, purified, _ = purifier_loss(features, discriminator, purifier, x, x_adv)
    before["total"].backward()
    optimiser.step()
    after, _, _ = purifier_loss(features, discriminator, purifier, x, x_adv)
    assert after["total"].item() < before["total"].item() - 1e-4

    d_optimiser = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    margin_before = (discriminator(x) - discriminator(purified)).mean().item()
    d_optimiser.zero_grad()
    discriminator_loss(discriminator, x, purified).backward()
    d_optimiser.step()
    margin_after = (discriminator(x) - discriminator(purified)).mean().item()
    assert margin_after > margin_before + 1e-4
