"""EBM purification (Hill et al. 2021, specs A15): the energy network, Langevin, the defense, ``robench train ebm``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robench import registry
from robench.checkpoint import sha256_of
from robench.defenses.ebm import EBMPurification
from robench.defenses.ebm.networks import EnergyNet, langevin
from robench.defenses.ebm.trainer import EBMRecipe, EBMTraining
from robench.target import EOT
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import assert_resumes_bit_identically

QUIET = Runtime(progress=False)


def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def test_the_energy_network_is_the_released_one():
    expected = conv(3, 32, 3) + conv(32, 64, 4) + conv(64, 128, 4) + conv(128, 256, 4) + conv(256, 1, 4)
    net = EnergyNet()
    assert sum(p.numel() for p in net.parameters()) == expected == 693_569
    assert net(torch.rand(5, 3, 32, 32)).shape == (5,)
    assert [k for k in net.state_dict()][:2] == ["f.0.weight", "f.0.bias"]


class Quadratic(nn.Module):
    """U(x) = a/2 |x|^2 per image, so grad U = a x; counts its calls and their batch sizes."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a
        self.batches = []

    def forward(self, x):
        self.batches.append(len(x))
        return self.a / 2 * x.flatten(1).pow(2).sum(1)


def test_a_langevin_step_is_the_released_update_rule():
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    energy = Quadratic(0.3)
    out = langevin(energy, x, steps=2, noise=0.01, generator=torch.Generator().manual_seed(5))
    draws = torch.Generator().manual_seed(5)
    expected = x
    for _ in range(2):
        expected = expected - 0.3 * expected + 0.01 * torch.randn(x.shape, generator=draws)
    torch.testing.assert_close(out, expected)
    assert energy.batches == [3, 3], "all chains of the batch in one call per step"


def test_the_eot_draws_run_as_parallel_chains_in_one_batch():
    defense = EBMPurification(steps=3, width=4)
    calls = []
    defense.energy.register_forward_pre_hook(lambda module, inputs: calls.append(len(inputs[0])))
    EOT(defense, 5)(torch.rand(2, 3, 32, 32))
    assert calls == [10, 10, 10]


def test_the_defense_is_stochastic_and_not_differentiated_through():
    defense = EBMPurification(steps=5, width=4)
    assert defense.stochastic and not defense.differentiable
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # as the runner scores: Langevin still needs its own gradients
        first, second = defense(x), defense(x)
    assert first.shape == x.shape and 0 <= float(first.min()) and float(first.max()) <= 1
    assert not torch.equal(first, second)


def test_the_released_layout_loads_key_for_key(tmp_path):
    torch.manual_seed(3)
    released = EnergyNet()
    torch.save(released.state_dict(), tmp_path / "ebm.pth")
    defense = EBMPurification(weights=str(tmp_path / "ebm.pth"))
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(defense.energy(x), released(x))
    assert defense.checkpoints == {"ebm.pth": sha256_of(tmp_path / "ebm.pth")}


def test_the_recipe_defaults_are_the_released_config():
    recipe = EBMRecipe()
    assert (recipe.noise, recipe.data_noise, recipe.chain_steps, recipe.sgd_lr) == (0.01, 0.02, 100, 5e-5)
    assert (recipe.schedule.optimizer, recipe.schedule.lr, recipe.schedule.batch_size) == ("adam", 1e-4, 100)
    assert recipe.schedule.epochs + recipe.sgd_epochs == 500, "250,000 updates of batch 100 on 50,000 images"


def test_one_step_lowers_the_energy_difference_on_a_fixed_batch():
    torch.manual_seed(0)
    recipe, energy = EBMRecipe(), EnergyNet(width=8)
    positives, negatives = torch.rand(8, 3, 32, 32) * 2 - 1, torch.rand(8, 3, 32, 32) * 2 - 1
    before = recipe.loss(energy, positives, negatives)
    before.backward()
    predicted = 1e-9 * sum(float((p.grad ** 2).sum()) for p in energy.parameters())  # first-order decrease
    with torch.no_grad():
        for p in energy.parameters():
            p -= 1e-9 * p.grad
        after = recipe.loss(energy, positives, negatives)
    assert float(after) <= before.item() - predicted / 2


def plan(tmp_path, name="ebm.pt", **options):
    options = {"model": "ebm:width=4,steps=2", "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4,
               "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, **options}
    return EBMTraining.plan(options.pop("recipe", "ebm:chain_steps=2,sgd_epochs=1,chains=6"), **options)


def test_a_step_writes_the_negatives_back_to_their_chains(tmp_path):
    run = plan(tmp_path)
    before = run.bank.states.clone()
    generator = torch.Generator().manual_seed(0)
    run.step(run.train.x[:4], run.train.y[:4], generator)
    changed = (run.bank.states != before).flatten(1).any(1)
    assert int(changed.sum()) == 4 and len(run.bank.states) == 6


def test_a_run_trains_both_phases_and_loads_as_the_defense(tmp_path):
    run = plan(tmp_path)
    before = {k: v.clone() for k, v in run.module.state_dict().items()}
    card = run.run(runtime=QUIET)
    assert card["epochs"] == {"adam": 1, "main": 1}
    loaded = registry.build("defenses", f"ebm:width=4,steps=2,weights={tmp_path / 'ebm.pt'}")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(loaded.energy(x), run.module.energy(x))
    assert all(not torch.equal(v, before[k]) for k, v in run.module.state_dict().items() if k.endswith("weight"))
    assert set(torch.load(tmp_path / "ebm.pt", weights_only=True)) == set(before), "the chains are not saved"


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    """The bank of chains is resumed too: without it the resumed run's negatives, and weights, would differ."""
    recipe = "ebm:chain_steps=2,sgd_epochs=0,chains=6"
    assert_resumes_bit_identically(lambda name, epochs: plan(tmp_path, name, recipe=recipe, epochs=epochs), tmp_path)


@pytest.mark.parametrize("options, mentions", [
    ({"recipe": "ebm:chains=-1"}, "chains must be an integer >= 0"),
    ({"dataset": "synthetic:image_size=28"}, "32x32 RGB"),
])
def test_bad_input_is_named_before_any_epoch(tmp_path, options, mentions):
    with pytest.raises((TrainingError, ValueError), match=mentions):
        plan(tmp_path, **options)
