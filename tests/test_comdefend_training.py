"""``robench train comdefend`` (specs A7): the loss, one step, the run and its checkpoint, resume, input checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from robench import registry
from robench.checkpoint import sha256_of
from robench.defenses.comdefend import ComDefend
from robench.defenses.comdefend.trainer import ComDefendRecipe, ComDefendTraining
from robench.models import small_cnn
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import assert_resumes_bit_identically

QUIET = Runtime(progress=False)


def plan(tmp_path, name="comdefend.pt", **options):
    options = {"model": "comdefend", "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4, "epochs": 1,
               "evaluation": Evaluation(n=0), "output": tmp_path / name, **options}
    return ComDefendTraining.plan(options.pop("recipe", "comdefend"), **options)


def images(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_the_paper_recipe_is_the_default():
    recipe = ComDefendRecipe()
    assert (recipe.sigma, recipe.code_weight) == (20.0, 1e-4)
    schedule = ComDefendRecipe.schedule
    assert (schedule.optimizer, schedule.lr, schedule.betas, schedule.batch_size, schedule.epochs) == \
        ("adam", 1e-2, (0.5, 0.999), 128, 10)


def test_the_loss_is_mse_of_the_noisy_code_reconstruction_plus_the_code_penalty():
    defense, recipe, x = ComDefend(), ComDefendRecipe(sigma=3.0, code_weight=0.5), images()
    loss = recipe.loss(defense, x, None, torch.Generator().manual_seed(1)).loss
    linear = defense.comcnn(x)
    code = torch.sigmoid(linear - 3.0 * torch.randn(linear.shape, generator=torch.Generator().manual_seed(1)))
    expected = F.mse_loss(defense.reccnn(code), x) + 0.5 * code.pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_one_adam_step_lowers_the_loss_on_a_fixed_batch():
    defense, recipe, x = ComDefend(), ComDefendRecipe(), images()
    optimizer = ComDefendRecipe.schedule.with_overrides(lr=1e-3).optimizer_for(list(defense.parameters()))

    def loss():
        return recipe.loss(defense, x, None, torch.Generator().manual_seed(0)).loss

    before = loss()
    before.backward()
    optimizer.step()
    assert loss().item() < before.item() - 1e-4


def test_a_run_writes_a_checkpoint_that_loads_as_the_comdefend_defense(tmp_path):
    run = plan(tmp_path)
    before = {k: v.clone() for k, v in run.module.state_dict().items()}
    card = run.run(runtime=QUIET)
    loaded = registry.build("defenses", f"comdefend:weights={tmp_path / 'comdefend.pt'}")
    assert loaded.checkpoints == {"comdefend.pt": sha256_of(tmp_path / "comdefend.pt")}
    x = images(2)
    outputs = []
    for defense in (loaded, run.module):
        torch.manual_seed(4)
        outputs.append(defense(x))
    assert torch.equal(*outputs)
    assert all(not torch.equal(v, before[k]) for k, v in run.module.state_dict().items()), "both networks trained"
    assert card["checkpoint"]["sha256"] == sha256_of(tmp_path / "comdefend.pt")
    saved = json.loads((tmp_path / "comdefend.json").read_text())
    assert "comdefend:code_weight=0.0001,sigma=20.0" in json.dumps(saved)
    assert '"betas": [0.5, 0.999]' in json.dumps(saved)


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    assert_resumes_bit_identically(lambda name, epochs: plan(tmp_path, name, epochs=epochs), tmp_path)


def test_gray_images_train_a_one_channel_comdefend(tmp_path):
    run = plan(tmp_path, model="comdefend:in_channels=1,code_channels=4", dataset="synthetic:channels=1")
    run.run(runtime=QUIET)
    loaded = registry.build("defenses", f"comdefend:in_channels=1,code_channels=4,weights={tmp_path / 'comdefend.pt'}")
    assert loaded.comcnn.channels[0] == 1 and loaded.comcnn.channels[-1] == 4


def test_the_card_attacks_the_defended_target_through_the_bpda_view(tmp_path):
    torch.manual_seed(0)
    torch.save(small_cnn().net.state_dict(), tmp_path / "target.pt")
    run = plan(tmp_path, target=f"small-cnn:weights={tmp_path / 'target.pt'}",
               evaluation=Evaluation(n=4, attack="pgd:steps=2", batch_size=4))
    card = run.run(runtime=QUIET)  # the hard threshold gives PGD no gradient: it needs the straight-through view
    assert 0 <= card["evaluation"]["robust_acc"] <= card["evaluation"]["clean_acc"] <= 1
    assert "behind comdefend:weights=" in card["evaluation"]["pipeline"]


@pytest.mark.parametrize("options, mentions", [
    ({"recipe": "comdefend:sigma=-1"}, "sigma must be a number >= 0"),
    ({"recipe": "comdefend:nope=1"}, "nope"),
    ({"model": "jpeg"}, "comdefend spec"),
    ({"dataset": "synthetic:channels=1"}, "train comdefend:in_channels=1"),
])
def test_bad_input_is_named_before_any_epoch(tmp_path, options, mentions):
    with pytest.raises(TrainingError, match=mentions):
        run = plan(tmp_path, **options)
        run.phases()
    assert not (tmp_path / "comdefend.pt").exists()
