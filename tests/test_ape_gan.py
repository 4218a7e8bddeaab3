"""APE-GAN (specs A5): the official TF1 networks, the defense, its losses and ``robench train ape-gan``."""

from __future__ import annotations

import json

import pytest
import torch

from robench import registry
from robench.checkpoint import sha256_of
from robench.defenses.ape_gan import APEGAN
from robench.defenses.ape_gan.networks import Discriminator, Generator, SameConv, SameDeconv, same_padding
from robench.defenses.ape_gan.trainer import APEGANRecipe, APEGANTraining
from robench.models import small_cnn
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import assert_resumes_bit_identically

QUIET = Runtime(progress=False)


def conv_params(c_in: int, c_out: int, k: int = 5) -> int:
    return c_in * c_out * k * k + c_out


def test_parameter_counts_are_the_official_architectures():
    bn = 2  # scale and shift per channel
    generator = conv_params(3, 64) + bn * 64 + conv_params(64, 128) + bn * 128 + conv_params(128, 64) + bn * 64 \
        + conv_params(64, 3)
    discriminator = conv_params(3, 64) + conv_params(64, 128) + bn * 128 + conv_params(128, 256) + bn * 256 \
        + (256 * 4 * 4 + 1)
    assert sum(p.numel() for p in Generator().parameters()) == generator == 419_971
    assert sum(p.numel() for p in Discriminator().parameters()) == discriminator
    # specs A5: about 1.4 M parameters for G + D on CIFAR-10
    assert 1.35e6 < generator + discriminator < 1.5e6


@pytest.mark.parametrize("side, expected", [(32, (1, 2)), (28, (1, 2)), (7, (2, 2)), (16, (1, 2))])
def test_same_padding_is_tensorflows(side, expected):
    assert same_padding(side) == expected


@pytest.mark.parametrize("side", [28, 32])
def test_the_transposed_convolution_is_the_adjoint_of_the_same_convolution(side):
    """TF's conv2d_transpose is the gradient of conv2d: <conv(x), y> = <x, deconv(y)> with shared weights."""
    torch.manual_seed(0)
    conv, deconv = SameConv(2, 3), SameDeconv(3, 2)
    deconv.weight.data.copy_(conv.weight.data)
    conv.bias.data.zero_(), deconv.bias.data.zero_()
    x, y = torch.randn(1, 2, side, side, dtype=torch.float64), torch.randn(1, 3, side // 2, side // 2, dtype=torch.float64)
    conv.double(), deconv.double()
    assert conv(x).shape == y.shape and deconv(y).shape == x.shape
    assert torch.allclose((conv(x) * y).sum(), (x * deconv(y)).sum())


@pytest.mark.parametrize("channels, side", [(3, 32), (1, 28)])
def test_the_defense_maps_images_to_images(channels, side):
    defense = APEGAN(channels=channels)
    x = torch.rand(2, channels, side, side)
    out = defense(x)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out, defense(x)), "deterministic"
    assert not defense.stochastic and defense.differentiable


def test_sides_that_are_not_multiples_of_four_are_refused():
    with pytest.raises(ValueError, match="multiples of 4"):
        APEGAN()(torch.rand(1, 3, 30, 30))


def test_the_losses_equal_the_hand_computation():
    torch.manual_seed(0)
    recipe = APEGANRecipe()
    g, d = Generator(width=8), Discriminator(width=8)
    g.eval(), d.eval()
    x, x_adv = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    losses = recipe.losses(g, d, x, x_adv)
    restored = g(x_adv * 2 - 1)
    p_real, p_fake = torch.sigmoid(d(x * 2 - 1)), torch.sigmoid(d(restored))
    d_loss = -torch.log(p_real).mean() - torch.log(1 - p_fake).mean()
    g_loss = 0.3 * -torch.log(p_fake).mean() + 0.7 * torch.sqrt(((restored - (x * 2 - 1)) ** 2).mean())
    assert torch.allclose(losses["discriminator"], d_loss, atol=1e-5)
    assert torch.allclose(losses["generator"], g_loss, atol=1e-5)


def test_the_recipe_defaults_are_the_official_code():
    recipe = APEGANRecipe()
    assert (recipe.adversarial, recipe.reconstruction, recipe.generator_updates) == (0.3, 0.7, 2)
    schedule = recipe.schedule
    assert (schedule.optimizer, schedule.lr, schedule.betas, schedule.batch_size, schedule.epochs) == \
        ("adam", 2e-4, (0.5, 0.999), 64, 2)


def test_training_adversaries_stay_in_the_ball_and_fgsm_is_one_full_step():
    torch.manual_seed(0)
    target = small_cnn().eval()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for attack in ("fgsm", "pgd"):
        x_adv = APEGANRecipe(attack=attack).adversarial_examples(target, x, y, torch.Generator().manual_seed(0))
        assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    fgsm = APEGANRecipe(attack="fgsm").adversarial_examples(target, x, y, torch.Generator())
    moved = (fgsm - x).abs()
    inside = (x > 8 / 255) & (x < 1 - 8 / 255)
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], 8 / 255), atol=1e-6)


def plan(tmp_path, target, name="ape-gan.pt", **options):
    options = {"model": "ape-gan:width=8", "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4,
               "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, "target": target, **options}
    return APEGANTraining.plan(options.pop("recipe", "ape-gan:discriminator_width=8"), **options)


def test_the_generator_is_updated_twice_per_batch(tmp_path, small_target, monkeypatch):
    run = plan(tmp_path, small_target)
    calls = []
    step = run.step

    def counted(x, y, generator):
        result = step(x, y, generator)
        return result._replace(recompute=lambda: (calls.append(1), result.recompute())[1])

    monkeypatch.setattr(run, "step", counted)
    run.run(runtime=QUIET)
    assert len(calls) == 2, "one extra generator update for each of the two batches"


def test_a_run_writes_a_checkpoint_that_loads_as_the_defense(tmp_path, small_target):
    run = plan(tmp_path, small_target)
    before = {k: v.clone() for k, v in run.module.state_dict().items()}
    card = run.run(runtime=QUIET)
    loaded = registry.build("defenses", f"ape-gan:width=8,weights={tmp_path / 'ape-gan.pt'}").eval()
    assert loaded.checkpoints == {"ape-gan.pt": sha256_of(tmp_path / "ape-gan.pt")}
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), run.module(x))
    changed = [k for k, v in run.module.state_dict().items() if k.endswith("weight") and not torch.equal(v, before[k])]
    assert changed, "the generator trained"
    assert card["checkpoint"]["sha256"] == sha256_of(tmp_path / "ape-gan.pt")
    assert "ape-gan:adversarial=0.3" in json.dumps(json.loads((tmp_path / "ape-gan.json").read_text()))


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path, small_target):
    assert_resumes_bit_identically(lambda name, epochs: plan(tmp_path, small_target, name, epochs=epochs), tmp_path)


@pytest.mark.parametrize("options, mentions", [
    ({"recipe": "ape-gan:attack=cw"}, "attack must be one of"),
    ({"dataset": "synthetic:image_size=30"}, "multiples of 4"),
    ({"target": None}, "needs --target"),
])
def test_bad_input_is_named_before_any_epoch(tmp_path, small_target, options, mentions):
    options.setdefault("target", small_target)
    with pytest.raises((TrainingError, ValueError), match=mentions):
        plan(tmp_path, **options)
    assert not (tmp_path / "ape-gan.pt").exists()


def test_the_target_is_left_alone(tmp_path, small_target):
    run = plan(tmp_path, small_target)
    before = {k: v.clone() for k, v in run.target.state_dict().items()}
    run.run(runtime=QUIET)
    assert all(torch.equal(v, before[k]) for k, v in run.target.state_dict().items())


def test_a_repeated_update_without_recompute_is_an_error(tmp_path, small_target, monkeypatch):
    run = plan(tmp_path, small_target)
    step = run.step
    monkeypatch.setattr(run, "step", lambda x, y, generator: step(x, y, generator)._replace(recompute=None))
    with pytest.raises(TrainingError, match="updated 2 times per batch, but the step gives no recompute"):
        run.run(runtime=QUIET)
