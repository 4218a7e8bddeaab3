"""SR (Mustafa et al. 2019, specs A8): EDSR x2 at EDSR-PyTorch's layout, the wavelet step, BPDA, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defense import gradient_view
from robench.defenses.jpeg import JPEG
from robench.defenses.sr.edsr import BASELINE, DIV2K_MEAN, EDSR, PAPER
from robench.defenses.sr.trainer import SRRecipe, SRTraining
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import DATA

SMALL = "sr:n_feats=8,n_resblocks=2"


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Real CIFAR-10 test images (resized to ``size``) when the offline head exists, smooth noise otherwise."""
    path = DATA / "cifar10_test_head.npz"
    if path.is_file():
        x = torch.from_numpy(np.load(path)["x"][seed:seed + batch]).permute(0, 3, 1, 2).float() / 255
    else:
        x = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).contiguous()


def edsr_parameters(n_resblocks: int, n_feats: int) -> int:
    """EDSR x2's trainable parameters from its layers: head, blocks, body conv, upsampler conv, tail conv."""
    conv = lambda c_in, c_out: 9 * c_in * c_out + c_out  # noqa: E731 - 3x3 conv with bias
    return (conv(3, n_feats) + n_resblocks * 2 * conv(n_feats, n_feats) + conv(n_feats, n_feats)
            + conv(n_feats, 4 * n_feats) + conv(n_feats, 3))


@pytest.mark.parametrize("size, published", [(BASELINE, 1.37e6), (PAPER, 40.7e6)])
def test_parameter_counts_match_the_architecture_and_the_published_ones(size, published):
    with torch.device("meta"):  # the paper model's 40.7 M parameters, without allocating them
        net = EDSR(**size)
    count = sum(p.numel() for p in net.parameters())
    assert count == edsr_parameters(size["n_resblocks"], size["n_feats"])
    assert abs(count - published) <= 0.005 * published  # published to three significant figures


def test_the_default_is_edsr_baseline_as_the_authors_ran_it():
    defense = registry.build("defenses", "sr")
    assert (defense.n_resblocks, defense.n_feats, defense.res_scale) == (16, 64, 1.0)
    assert (defense.sigma, defense.sigma_mode, defense.jpeg_quality) == (0.04, "released", None)
    assert (defense.stochastic, defense.differentiable, defense.needs_training) == (False, False, True)


def released_keys(n_resblocks: int) -> set[str]:
    """The state-dict keys of EDSR-PyTorch's ``src/model/edsr.py`` at scale 2 (MeanShift is a Conv2d there)."""
    layers = ["sub_mean", "add_mean", "head.0", f"body.{n_resblocks}", "tail.0.0", "tail.1"]
    layers += [f"body.{i}.body.{j}" for i in range(n_resblocks) for j in (0, 2)]
    return {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}


def test_edsr_pytorch_layout_loads_key_for_key_and_enters_the_key(tmp_path):
    source = registry.build("defenses", SMALL + ",init_seed=5")
    released = source.edsr.state_dict()  # what EDSR-PyTorch's torch.save(model.state_dict()) holds
    assert set(released) == released_keys(2)
    assert released["sub_mean.weight"].shape == (3, 3, 1, 1)
    assert torch.allclose(released["sub_mean.bias"], -255 * torch.tensor(DIV2K_MEAN))
    path = tmp_path / "edsr_baseline_x2-test.pt"
    torch.save(released, path)
    loaded = registry.build("defenses", f"{SMALL},weights={path}")
    x = images(32)
    assert torch.equal(loaded(x), source(x)) and loaded.checkpoints == {path.name: sha256_of(path)}
    torch.save(registry.build("defenses", "sr:n_feats=8,n_resblocks=3").edsr.state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        registry.build("defenses", f"{SMALL},weights={tmp_path / 'other.pt'}")


def test_rescaled_wavelet_step_is_scikit_images_call_with_the_spec_arguments():
    from skimage.restoration import denoise_wavelet

    x = images(32, batch=1)
    image = x[0].permute(1, 2, 0).double().numpy()
    expected = denoise_wavelet(image, sigma=0.04, method="BayesShrink", mode="soft", convert2ycbcr=True,
                               channel_axis=-1, rescale_sigma=True).clip(0, 1)
    got = registry.build("defenses", SMALL + ",sigma_mode=rescaled").denoise(x.double())
    assert np.allclose(got[0].permute(1, 2, 0).numpy(), expected, atol=1e-12)


def test_released_wavelet_step_is_scikit_image_014s_per_channel_sigma():
    """scikit-image 0.14 (the authors'): each YCbCr channel rescaled to [0, 1], denoised with sigma unchanged, clipped."""
    from skimage.color import rgb2ycbcr, ycbcr2rgb
    from skimage.restoration import denoise_wavelet

    x = images(32, batch=1, seed=3)
    ycbcr = rgb2ycbcr(x[0].permute(1, 2, 0).double().numpy())
    for i in range(3):
        low, high = ycbcr[..., i].min(), ycbcr[..., i].max()
        channel = denoise_wavelet((ycbcr[..., i] - low) / (high - low), sigma=0.04, method="BayesShrink", mode="soft",
                                  rescale_sigma=False)
        ycbcr[..., i] = channel * (high - low) + low
    expected = ycbcr2rgb(ycbcr).clip(0, 1)
    got = registry.build("defenses", SMALL).denoise(x.double())
    assert np.allclose(got[0].permute(1, 2, 0).numpy(), expected, atol=1e-10)
    assert (got - x).abs().max() > 1 / 255  # it denoises


def test_jpeg_quality_codes_the_denoised_image_as_the_jpeg_defense():
    x = images(32)
    plain, coded = (registry.build("defenses", SMALL + extra) for extra in ("", ",jpeg_quality=90"))
    assert torch.equal(coded.denoise(x), JPEG(quality=90).purify(plain.denoise(x)))


@pytest.mark.parametrize("size", [32, 299])
def test_shapes_and_range(size):
    defense = registry.build("defenses", "sr:n_feats=4,n_resblocks=1")
    x = images(size, batch=1)
    out = defense(x)
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min().item() and out.max().item() <= 1


def test_attack_gradient_is_edsr_and_resize_at_the_denoised_image():
    defense = registry.build("defenses", SMALL).eval()
    x = images(32).requires_grad_(True)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    view = gradient_view(defense)
    out = view(x)
    (out * weights).sum().backward()
    denoised = defense.denoise(x).requires_grad_(True)
    (defense.upscale(denoised) * weights).sum().backward()
    assert torch.equal(out, defense(x))  # the value attacks see is the defense's
    assert torch.allclose(x.grad, denoised.grad, atol=1e-6) and x.grad.abs().sum() > 0


def test_deterministic_as_declared():
    defense = registry.build("defenses", SMALL)
    x = images(32)
    torch.manual_seed(1)
    first = defense(x)
    torch.manual_seed(2)
    assert torch.equal(first, defense(x))


@pytest.mark.parametrize("spec, mentions", [("sr:n_feats=0", "n_feats"), ("sr:sigma=-1", "sigma"),
                                             ("sr:sigma_mode=visu", "sigma_mode"), ("sr:jpeg_quality=0", "quality")])
def test_bad_options_are_named(spec, mentions):
    with pytest.raises(Exception, match=mentions):
        registry.build("defenses", spec)


def test_gray_images_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="RGB"):
        registry.build("defenses", SMALL)(torch.rand(1, 1, 8, 8))


def test_one_training_step_lowers_the_l1_loss_on_a_fixed_batch():
    defense = registry.build("defenses", SMALL)
    recipe = SRRecipe(patch=16)
    x = images(32, batch=8)
    optimizer = torch.optim.Adam(defense.parameters(), lr=1e-3)

    def loss():
        return recipe.loss(defense, x, None, torch.Generator().manual_seed(0)).loss

    before = loss()
    before.backward()
    optimizer.step()
    with torch.no_grad():
        after = loss()
    assert after < 0.995 * before.detach()  # about 2% lower when measured


def test_pairs_are_bicubic_x2_of_the_augmented_patches():
    lr, hr = SRRecipe(patch=16).pairs(images(32, batch=4), torch.Generator().manual_seed(0))
    assert hr.shape == (4, 3, 16, 16) and lr.shape == (4, 3, 8, 8)
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit like DIV2K's LR images
    assert (lr - torch.nn.functional.avg_pool2d(hr, 2)).abs().mean() < 0.05  # the same picture, halved


def plan(tmp_path, name="sr.pt", **options):
    options = {"model": "sr:n_feats=8,n_resblocks=1", "dataset": "synthetic", "split": "test", "n": 8,
               "batch_size": 4, "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, **options}
    return SRTraining.plan(options.pop("recipe", "sr:patch=16"), **options)


def test_training_writes_a_loadable_checkpoint_and_card_and_resumes_bit_identically(tmp_path):
    run = plan(tmp_path, epochs=3, lr=1e-3)
    card = run.run(runtime=Runtime(progress=False))
    assert card["recipe"]["spec"] == "sr:patch=16" and card["epochs"] == {"main": 3}
    loaded = registry.build("defenses", f"sr:n_feats=8,n_resblocks=1,weights={tmp_path / 'sr.pt'}")
    assert torch.equal(loaded(images(32)), run.module(images(32)))
    plan(tmp_path, "resumed.pt", epochs=2, lr=1e-3).run(runtime=Runtime(progress=False))
    plan(tmp_path, "resumed.pt", epochs=3, lr=1e-3).run(runtime=Runtime(progress=False))
    straight, resumed = (torch.load(tmp_path / f, weights_only=True) for f in ("sr.pt", "resumed.pt"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_edsr_schedule_and_bad_training_inputs(tmp_path):
    schedule = SRRecipe.schedule
    assert (schedule.optimizer, schedule.lr, schedule.batch_size, schedule.milestones, schedule.gamma) == (
        "adam", 1e-4, 16, (200,), 0.5)
    assert SRRecipe().patch == 192
    with pytest.raises(TrainingError, match="patch"):
        plan(tmp_path, recipe="sr:patch=64")
    with pytest.raises(Exception, match="even"):
        plan(tmp_path, recipe="sr:patch=15")
    with pytest.raises(TrainingError, match="augment"):
        plan(tmp_path, augment="crop-flip")
