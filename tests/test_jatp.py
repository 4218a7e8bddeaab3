"""JATP (specs A6), a reconstruction on HGD's DUNET: full adversarial examples, the loss, ``robench train jatp``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robench import registry
from robench.defenses.hgd.networks import DUNET
from robench.defenses.jatp import JATP
from robench.defenses.jatp.trainer import JATPRecipe, JATPTraining, features_and_logits
from robench.models import small_cnn
from robench.target import Pipeline
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import assert_resumes_bit_identically

QUIET = Runtime(progress=False)


def test_the_preprocessor_is_hgds_dunet_at_32_pixels():
    jatp = JATP(width=8)
    assert isinstance(jatp.denoiser, DUNET) and jatp.input_size == 32
    assert jatp.differentiable and not jatp.stochastic
    assert jatp(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_the_full_adversarial_examples_are_crafted_through_the_preprocessor(monkeypatch):
    """With g zeroing a corner, no gradient reaches it: x' there is the random start alone."""
    torch.manual_seed(0)
    target, jatp = small_cnn().eval(), JATP(width=8).eval()
    mask = torch.ones(1, 3, 32, 32)
    mask[..., :8, :8] = 0
    monkeypatch.setattr(jatp, "purify", lambda x: x * mask)
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    x_adv = JATPRecipe().full_adversarial(Pipeline(target, jatp), x, y, torch.Generator().manual_seed(3))
    start = (x + torch.empty_like(x).uniform_(-8 / 255, 8 / 255, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    torch.testing.assert_close(x_adv[..., :8, :8], start[..., :8, :8])
    assert not torch.allclose(x_adv[..., 8:, 8:], start[..., 8:, 8:]), "elsewhere the steps moved x'"
    assert float((x_adv - x).abs().max()) <= 8 / 255 + 1e-6


def test_phi_is_the_input_of_the_targets_last_linear_layer():
    torch.manual_seed(0)
    target = small_cnn().eval()
    x = torch.rand(2, 3, 32, 32)
    features, logits = features_and_logits(target, x)
    last = [m for m in target.modules() if isinstance(m, torch.nn.Linear)][-1]
    torch.testing.assert_close(last(features), logits)


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("aware", [False, True])
def test_the_loss_equals_the_hand_computation(distance, aware):
    torch.manual_seed(0)
    target, jatp = small_cnn().eval(), JATP(width=8).eval()
    x, x_adv, y = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    recipe = JATPRecipe(feature=0.5, distance=distance, misclassification_aware=aware)
    loss = recipe.loss(jatp, target, x, x_adv, y).loss
    restored = jatp(x_adv)
    phi_adv, _ = features_and_logits(target, restored)
    phi, logits = features_and_logits(target, x)
    d = (phi_adv - phi).pow(2).mean(1) if distance == "l2" else 1 - F.cosine_similarity(phi_adv, phi, dim=1)
    if aware:
        d = d * (1 - F.softmax(logits, 1)[torch.arange(4), y])
    torch.testing.assert_close(loss, F.mse_loss(restored, x) + 0.5 * d.mean())


def plan(tmp_path, target, name="jatp.pt", **options):
    options = {"model": "jatp:width=4", "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4,
               "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, "target": target, **options}
    return JATPTraining.plan(options.pop("recipe", "jatp:steps=2"), **options)


def test_one_step_lowers_the_loss_on_a_fixed_batch(tmp_path, small_target):
    run = plan(tmp_path, small_target)
    x, y = run.train.x[:4], run.train.y[:4]
    x_adv = run.recipe.full_adversarial(Pipeline(run.target, run.module), x, y, torch.Generator().manual_seed(0))
    run.module.eval()
    before = run.recipe.loss(run.module, run.target, x, x_adv, y).loss
    grads = torch.autograd.grad(before, list(run.module.parameters()))
    predicted = 1e-3 * sum(float((g ** 2).sum()) for g in grads)
    with torch.no_grad():
        for p, g in zip(run.module.parameters(), grads):
            p -= 1e-3 * g
        after = run.recipe.loss(run.module, run.target, x, x_adv, y).loss
    assert float(after) <= before.item() - predicted / 2


def test_a_run_loads_as_the_defense(tmp_path, small_target):
    run = plan(tmp_path, small_target)
    run.run(runtime=QUIET)
    loaded = registry.build("defenses", f"jatp:width=4,weights={tmp_path / 'jatp.pt'}").eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded(x), run.module(x))


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path, small_target):
    assert_resumes_bit_identically(lambda name, epochs: plan(tmp_path, small_target, name, epochs=epochs), tmp_path)


@pytest.mark.parametrize("options, mentions", [
    ({"recipe": "jatp:distance=l1"}, "distance must be one of"),
    ({"model": "jatp:width=4,input_size=64"}, "this DUNET takes 64x64; train jatp:input_size=32"),
    ({"target": None}, "needs --target"),
])
def test_bad_input_is_named_before_any_epoch(tmp_path, small_target, options, mentions):
    options.setdefault("target", small_target)
    with pytest.raises((TrainingError, ValueError), match=mentions):
        plan(tmp_path, **options).phases()
