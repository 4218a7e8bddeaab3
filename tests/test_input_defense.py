"""``robench train RECIPE --input-defense SPEC``: a classifier trained on a defense's outputs (ME-Net, Yang et al. 2019)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robench.cli import main
from robench.defense import Defense
from robench.train import Evaluation, Runtime, TrainingError, plan_training, train_target

QUIET = Runtime(progress=False)


class ZeroCorner(Defense):
    """Zeroes the top-left 8x8 corner of every image (differentiable or declared not, to test both paths)."""

    version = "test"

    def __init__(self, differentiable: bool):
        super().__init__()
        self.differentiable = differentiable

    def purify(self, x):
        mask = torch.ones_like(x)
        mask[..., :8, :8] = 0
        return x * mask


def plan(tmp_path, recipe="at:steps=2", **options):
    options = {"model": "small-cnn", "dataset": "synthetic", "split": "test", "n": 16, "batch_size": 8, "epochs": 1,
               "evaluation": Evaluation(n=0), "output": tmp_path / "model.pt", "input_defense": "none", **options}
    return plan_training(recipe, **options)


@pytest.mark.parametrize("differentiable", [True, False])
def test_the_model_only_ever_sees_the_defense_outputs(tmp_path, differentiable):
    run = plan(tmp_path)
    run.input_defense = ZeroCorner(differentiable)
    seen = []
    run.model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    train_target(run, runtime=QUIET)
    seen = [x for x in seen if len(x) == 8]  # the training batches (the reload check probes 2 raw images)
    assert len(seen) >= 2 * 3, "two batches, each with the inner attack's and the outer forward passes"
    assert all(float(x[..., :8, :8].abs().max()) == 0 for x in seen)
    assert all(float(x[..., 8:, 8:].abs().max()) > 0 for x in seen)


@pytest.mark.parametrize("differentiable", [True, False])
def test_the_training_gradient_reaches_the_zeroed_region_only_through_bpda(tmp_path, differentiable):
    run = plan(tmp_path)
    run.input_defense = ZeroCorner(differentiable)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    (grad,) = torch.autograd.grad(F.cross_entropy(run.trained(x), torch.arange(4)), x)
    corner = grad[..., :8, :8].abs().max()
    if differentiable:
        assert float(corner) == 0, "the zeroed region gets no gradient through a differentiable defense"
    else:
        assert float(corner) > 0, "BPDA: the identity backward passes the gradient through"


def test_a_stochastic_defense_redraws_per_batch(tmp_path):
    run = plan(tmp_path, recipe="standard", input_defense="gaussian-noise:sigma=0.1", n=8, batch_size=8, epochs=2,
               augment="none")
    calls = []
    run.input_defense.register_forward_hook(lambda module, inputs, output: calls.append((inputs[0], output)))
    train_target(run, runtime=QUIET)
    (first_in, first_out), (second_in, second_out) = calls[:2]  # epoch 1 and epoch 2: the same images, reshuffled
    order = [next(j for j in range(8) if torch.equal(first_in[i], second_in[j])) for i in range(8)]
    assert not torch.allclose(first_out, second_out[order]), "fresh noise for the same image in each epoch"


def test_the_card_and_the_resume_identity_record_the_defense(tmp_path):
    card = train_target(plan(tmp_path, input_defense="bit-depth:bits=4"), runtime=QUIET)
    assert card["input_defense"] == {"spec": "bit-depth:bits=4", "checkpoints": {}}
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["input_defense"]["spec"] == "bit-depth:bits=4"
    with pytest.raises(TrainingError, match=r"different training run \(input_defense.spec"):
        train_target(plan(tmp_path, input_defense="bit-depth:bits=3", epochs=2), runtime=QUIET)


def test_the_evaluation_scores_the_model_behind_the_defense(tmp_path):
    card = train_target(plan(tmp_path, input_defense="bit-depth:bits=4", evaluation=Evaluation(n=8, batch_size=8)),
                        runtime=QUIET)
    assert "--defense bit-depth:bits=4 --eot 1 --draws 1" in card["evaluation"]["command"]


def test_an_untrained_learned_defense_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="learned defense without weights"):
        plan(tmp_path, input_defense="nrp:arch=resg,nb=1,nf=8")


def test_the_cli_refuses_it_for_a_defense_trainer(tmp_path, shared_data):
    result = CliRunner().invoke(main, ["train", "ape-gan", "--model", "ape-gan", "--target", "small-cnn",
                                       "--dataset", "cifar10", "--input-defense", "me-net", "--output",
                                       str(tmp_path / "a.pt")])
    assert result.exit_code == 2 and "--input-defense is for the recipes" in result.output
