"""``robench train hgd`` (specs A3): guides, training attacks, the run, its checkpoint, resume and input checks."""

from __future__ import annotations

import json

import pytest
import torch

from robench import registry
from robench.checkpoint import sha256_of
from robench.defenses.hgd.trainer import GUIDES, HGDRecipe, HGDTraining, last_feature_map, training_attacks
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import assert_resumes_bit_identically

QUIET = Runtime(progress=False)
MODEL = "hgd:input_size=32,width=4"
TARGET = "resnet18-standard"


def plan(tmp_path, name="hgd.pt", **options):
    options = {"model": MODEL, "target": TARGET, "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4,
               "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, **options}
    return HGDTraining.plan(options.pop("recipe", "hgd"), **options)


@pytest.mark.parametrize("guide, attack", [*((guide, "set") for guide in GUIDES), ("feature", "pgd:steps=1")])
def test_one_gradient_step_lowers_each_guides_loss_on_a_fixed_batch(tmp_path, guide, attack):
    recipe = f"hgd:guide={guide},attack={attack.replace(':', ',')}"
    run = plan(tmp_path, recipe=recipe)
    (phase,) = run.phases()
    run.module.double().train()
    run.target.double()
    x, y = run.train.x[:4].double(), run.train.y[:4]

    def loss() -> torch.Tensor:  # the same draws every call: the attacks do not depend on the denoiser
        return phase.step(x, y, torch.Generator().manual_seed(7)).loss

    before = loss()
    params = [p for p in run.module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(before, params)
    squared = sum(g.pow(2).sum() for g in grads)
    lr = 1e-3 * before.item() / squared.item()  # a step whose first-order decrease is 0.1 % of the loss
    with torch.no_grad():
        for p, g in zip(params, grads):
            p -= lr * g
    # Armijo's condition with c = 1/2 holds for a small enough step of a smooth loss
    assert loss().item() <= before.item() - 0.5 * lr * squared.item()


def test_feature_guide_matches_the_targets_last_convolutional_map():
    target = registry.build("models", TARGET)
    assert last_feature_map(target, torch.rand(1, 3, 32, 32)) == "net.layer4"
    assert HGDRecipe().guide == "feature"


def test_the_attack_set_is_the_released_one_with_a_budget_per_image():
    names = [name for name, _, _ in training_attacks(3)]
    assert names == ["no-op", "noise", "fgsm-0", "fgsm-1", "fgsm-2", "fgsm-ensemble", "iter2-ensemble",
                     "iter4-ensemble"]
    assert [name for name, _, _ in training_attacks(1)] == ["no-op", "noise", "fgsm-0", "iter2-ensemble",
                                                            "iter4-ensemble"]
    source = registry.build("models", TARGET)
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    x_adv = HGDRecipe().attack_set([source], x, torch.Generator().manual_seed(1))
    linf = (x_adv - x).abs().flatten(1).max(1).values * 255
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert linf.max().item() <= 15 + 1e-3, "budgets are integers in [1, 16) / 255"
    levels = linf[linf > 0]
    assert torch.allclose(levels, levels.round(), atol=1e-3), "noise and FGSM reach the integer budget"
    assert (linf == 0).any(), "about one image in five is left unchanged (no-op)"
    assert len(set(levels.round().tolist())) >= 5, "budgets vary per image"


def test_pgd_examples_stay_in_dirs_ball():
    source = registry.build("models", TARGET)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = source(x).argmax(1)
    x_adv = HGDRecipe(attack="pgd").pgd(source, x, y, torch.Generator().manual_seed(1))
    assert (x_adv - x).abs().max().item() <= 8 / 255 + 1e-6 and (x_adv != x).any()


def test_a_run_writes_a_checkpoint_that_loads_as_the_hgd_defense_and_a_card(tmp_path):
    run = plan(tmp_path)
    before = {k: v.clone() for k, v in run.module.state_dict().items()}
    card = run.run(runtime=QUIET)
    loaded = registry.build("defenses", f"{MODEL},weights={tmp_path / 'hgd.pt'}").eval()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(x), run.module.eval()(x))
    assert any(not torch.equal(v, before[k]) for k, v in run.module.state_dict().items()), "the DUNET trained"
    assert card["checkpoint"]["sha256"] == sha256_of(tmp_path / "hgd.pt")
    saved = json.loads((tmp_path / "hgd.json").read_text())
    assert saved["defense"] == str(run.usable) and "weights=" in saved["defense"]
    assert "net.layer4" in json.dumps(saved), "the card names the FGD layer"


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    assert_resumes_bit_identically(lambda name, epochs: plan(tmp_path, name, epochs=epochs), tmp_path)


def test_paper_schedule_is_the_default():
    schedule = HGDRecipe.schedule
    assert (schedule.optimizer, schedule.lr, schedule.batch_size, schedule.epochs) == ("adam", 0.01, 32, 100)

    def released_lr(epoch):  # GD_train/main.py's get_lr
        return 0.01 if epoch <= 60 else 0.001 if epoch <= 90 else 0.0001

    for epoch in range(1, 101):
        decays = sum(epoch >= m for m in schedule.milestones)
        assert schedule.lr * schedule.gamma ** decays == pytest.approx(released_lr(epoch))


@pytest.mark.parametrize("options, mentions", [
    ({"recipe": "hgd:guide=cgd"}, "guide"),
    ({"recipe": "hgd:layer=net.nope"}, "layer"),
    ({"recipe": 'hgd:attack=pgd,sources=["resnet18-standard"]'}, "sources"),
    ({"recipe": "hgd:max_eps=0.05"}, "max_eps"),
    ({"recipe": 'hgd:sources=["resnet18"]'}, "no trained weights"),
    ({"recipe": 'hgd:sources=["resnet18-standard:nope=1"]'}, "nope"),
    ({"model": "hgd:width=4"}, "input_size=32"),
    ({"model": "jpeg"}, "hgd spec"),
])
def test_bad_input_is_named_before_any_epoch(tmp_path, options, mentions):
    with pytest.raises(TrainingError, match=mentions):
        plan(tmp_path, **options).phases()
