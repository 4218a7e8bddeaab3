"""``robench train rdp`` (RDP Algorithm 1, specs A2): the run, its checkpoint, resume and input checks."""

from __future__ import annotations

import json

import pytest
import torch

from robench import registry
from robench.checkpoint import sha256_of
from robench.defenses.rdp.trainer import RDPRecipe, RDPTraining
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import assert_resumes_bit_identically

QUIET = Runtime(progress=False)
RECIPE = 'rdp:features="vgg16:pretrained=false",crop=16,ssp_steps=1,discriminator_width=4'


def plan(tmp_path, name="rdp.pt", **options):
    options = {"model": "rdp:width=8,blocks=1", "dataset": "synthetic", "split": "test", "n": 8, "batch_size": 4,
               "epochs": 1, "evaluation": Evaluation(n=0), "output": tmp_path / name, **options}
    return RDPTraining.plan(options.pop("recipe", RECIPE), **options)


def test_a_run_writes_a_checkpoint_that_loads_as_the_rdp_defense_and_a_card_naming_f(tmp_path):
    run = plan(tmp_path)
    before = {k: v.clone() for k, v in run.module.state_dict().items()}
    card = run.run(runtime=QUIET)
    loaded = registry.build("defenses", f"rdp:width=8,blocks=1,weights={tmp_path / 'rdp.pt'}")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(x), run.module(x))
    assert any(not torch.equal(v, before[k]) for k, v in run.module.state_dict().items()), "P trained"
    assert card["checkpoint"]["sha256"] == sha256_of(tmp_path / "rdp.pt")
    saved = json.loads((tmp_path / "rdp.json").read_text())
    assert "vgg16:pretrained=false" in json.dumps(saved)
    (record,) = saved["history"]["main"]
    assert {"train_loss", "train_loss_reconstruction", "train_loss_discriminator"} <= set(record)
    resume = torch.load(tmp_path / "rdp.resume.pt", weights_only=True)
    assert set(resume["optimizers"]) == {"purifier", "reconstruction", "discriminator"}
    assert all(state["state"] for state in resume["optimizers"].values()), "Adam moved all three networks"


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    assert_resumes_bit_identically(lambda name, epochs: plan(tmp_path, name, epochs=epochs), tmp_path)


def test_random_crops_are_windows_of_each_image_at_their_own_offsets():
    recipe = RDPRecipe(crop=4)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    crops = recipe.random_crop(x, torch.Generator().manual_seed(3))
    assert crops.shape == (2, 1, 4, 4)
    for image, crop in zip(x, crops):
        top, left = divmod(int(crop[0, 0, 0].item()) % 64, 8)
        assert torch.equal(crop, image[:, top:top + 4, left:left + 4])


def test_paper_hyperparameters_are_the_defaults():
    recipe = RDPRecipe()
    assert (recipe.pixel, recipe.latent, recipe.adversarial, recipe.reconstruction_pixel) == (1e-2, 1e-1, 1e-4, 1e-4)
    assert recipe.eps == pytest.approx(16 / 255) and recipe.crop == 128
    schedule = RDPRecipe.schedule
    assert (schedule.optimizer, schedule.lr, schedule.batch_size) == ("adam", 1e-4, 48)


@pytest.mark.parametrize("options, mentions", [
    ({"recipe": 'rdp:features="vgg16:pretrained=false",crop=64'}, "rdp:crop=32"),
    ({"recipe": 'rdp:features="nope:layer=x",crop=16'}, "features"),
    ({"recipe": "rdp:pixel=-1"}, "pixel"),
    ({"model": "jpeg"}, "rdp spec"),
])
def test_bad_input_is_named_before_any_epoch(tmp_path, options, mentions):
    with pytest.raises(TrainingError, match=mentions):
        run = plan(tmp_path, **options)
        run.phases()
    assert not (tmp_path / "rdp.pt").exists()
