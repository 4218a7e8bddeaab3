"""``robench train dir``: DIR's pre-training (Eq. 2) and main training (Algorithm 1), the recipe's options, the CLI."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robench import registry
from robench.cli import main
from robench.defenses.dir.trainer import DIRRecipe, DIRTraining, rep_loss
from robench.models import small_cnn
from robench.spec import parse_spec
from robench.target import Pipeline
from robench.train import Evaluation, Runtime, TrainingError
from tests.conftest import needs_cifar

SMALL_DIR = "dir:encoder_depth=1,decoder_depth=1,embed_dim=48,num_heads=3"
QUIET = Runtime(progress=False)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def target_file(tmp_path):
    """A small-cnn checkpoint (random weights, fixed by the seed) to train in front of."""
    torch.manual_seed(0)
    path = tmp_path / "target.pt"
    torch.save(small_cnn().net.state_dict(), path)
    return path


@pytest.fixture
def batch(shared_data):
    """Sixteen CIFAR-10 training images, a trained target (convex-cifar-small) and a small fresh DIR."""
    examples = registry.build("datasets", "cifar10").load(split="train", n=16)
    target = registry.build("models", "convex-cifar-small").eval().requires_grad_(False)
    return examples.x, examples.y, target, registry.build("defenses", SMALL_DIR)


def fixed(loss_fn):
    """The loss with the global RNG (masks) and the generator (attack starts) reset: a function of the weights only."""
    torch.manual_seed(1)
    return loss_fn(torch.Generator().manual_seed(2)).loss


def descend(module, loss_fn, *, lr, steps, fixed_randomness=False):
    optimizer = torch.optim.SGD(module.parameters(), lr=lr, momentum=0.0 if fixed_randomness else 0.9)
    for step in range(steps):
        if fixed_randomness:
            loss = fixed(loss_fn)
        else:
            torch.manual_seed(10 + step)
            loss = loss_fn(torch.Generator().manual_seed(20 + step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_recipe_defaults_follow_the_paper():
    recipe = DIRRecipe()
    assert (recipe.pretrain_epochs, recipe.alpha, recipe.eps, recipe.step_size, recipe.steps) == (20, 2.0, 8 / 255,
                                                                                                   2 / 255, 5)
    assert (recipe.inner_steps, recipe.inner_step_size, recipe.project_inner, recipe.gradient_path) == (
        5, 2 / 255, True, "both")
    schedule = DIRRecipe.schedule
    assert (schedule.epochs, schedule.lr, schedule.momentum, schedule.weight_decay, schedule.milestones,
            schedule.batch_size) == (90, 1e-2, 0.9, 2e-4, (75, 90), 128)
    assert str(DIRRecipe(alpha=1).spec).startswith("dir:alpha=1")
    with pytest.raises(ValueError, match="gradient_path must be one of both, released"):
        DIRRecipe(gradient_path="code")
    with pytest.raises(ValueError, match="pretrain_epochs must be an integer >= 0"):
        DIRRecipe(pretrain_epochs=-1)


@needs_cifar
def test_pretraining_steps_reduce_the_eq2_loss(batch):
    x, y, target, denoiser = batch
    recipe = DIRRecipe()

    def loss_fn(generator):
        return recipe.pretrain_loss(denoiser, target, x, y, generator)

    before = fixed(loss_fn).item()
    descend(denoiser, loss_fn, lr=DIRRecipe.schedule.lr, steps=4)
    assert fixed(loss_fn).item() < before - 0.01


@needs_cifar
def test_main_training_steps_reduce_l_den_and_leave_the_target_alone(batch):
    x, y, target, denoiser = batch
    recipe = DIRRecipe()
    descend(denoiser, lambda g: recipe.pretrain_loss(denoiser, target, x, y, g), lr=0.1, steps=20)
    frozen = {k: v.clone() for k, v in target.state_dict().items()}

    def loss_fn(generator):
        return recipe.loss(denoiser, target, x, y, generator)

    before = fixed(loss_fn).item()
    descend(denoiser, loss_fn, lr=1e-3, steps=3, fixed_randomness=True)
    assert fixed(loss_fn).item() < before - 0.01
    assert all(torch.equal(v, frozen[k]) for k, v in target.state_dict().items())
    assert all(p.grad is None for p in target.parameters()), "no gradient ever reaches the target"


@needs_cifar
def test_l_den_is_cross_entropy_plus_alpha_kl_plus_the_optional_mse(batch):
    # The identity as the restoration keeps L_rep measurably positive by construction (a robust target's
    # KL under an 8/255 ascent is ~3e-3); a fresh DIR's near-constant output makes it ~1e-8, which
    # float32 rounds away next to the cross-entropy on some CPUs.
    x, y, target, _ = batch
    restoration = registry.build("defenses", "none")
    ce_only = fixed(lambda g: DIRRecipe(alpha=0).loss(restoration, target, x, y, g)).item()
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(2)
    x_tilde = restoration(DIRRecipe().attack(Pipeline(target, restoration), x, y, generator))
    assert ce_only == pytest.approx(F.cross_entropy(target(x_tilde), y).item(), rel=1e-5)
    x_perturbed = DIRRecipe().inner_maximisation(target, x_tilde, generator)
    l_rep = rep_loss(target(x_perturbed), F.softmax(target(x_tilde), dim=1)).item()
    assert l_rep > 1e-4, "the inner maximisation found a measurable KL"
    with_kl = fixed(lambda g: DIRRecipe(alpha=2).loss(restoration, target, x, y, g)).item()
    assert with_kl - ce_only == pytest.approx(2 * l_rep, rel=1e-2)
    with_mse = fixed(lambda g: DIRRecipe(alpha=0, mse_weight=3).loss(restoration, target, x, y, g)).item()
    assert with_mse - ce_only == pytest.approx(3 * F.mse_loss(x_tilde, x).item(), rel=1e-3)


@needs_cifar
def test_inner_delta_stays_in_the_ball_only_when_projected(batch):
    x, _, target, _ = batch
    generator = torch.Generator().manual_seed(0)
    projected = DIRRecipe().inner_maximisation(target, x, generator) - x
    assert projected.abs().max() <= 8 / 255 + 1e-6
    assert (x + projected).min() >= 0 and (x + projected).max() <= 1
    released = DIRRecipe(project_inner=False).inner_maximisation(target, x, torch.Generator().manual_seed(0)) - x
    assert released.abs().max() > 8 / 255 + 1e-3, "the released inner attack is not projected"
    assert released.abs().max() <= 10 / 255 + 0.01
    p_clean = F.softmax(target(x), dim=1)
    kl = [F.kl_div(F.log_softmax(target(x + d), dim=1), p_clean, reduction="batchmean").item()
          for d in (torch.zeros_like(x), projected)]
    assert kl[1] > kl[0] + 1e-4, "the inner maximisation raises the KL"


@needs_cifar
def test_released_gradient_path_restores_x_prime_three_times(batch):
    x, y, target, denoiser = batch
    calls = []
    denoiser.register_forward_hook(lambda *args: calls.append(1))
    counts = {}
    for path in ("both", "released"):
        calls.clear()
        fixed(lambda g: DIRRecipe(gradient_path=path).loss(denoiser, target, x, y, g)).backward()
        counts[path] = len(calls)
    # 5 PGD steps through the pipeline, then x~ once (Eq. 5) or three fresh restorations (released train.py).
    assert counts == {"both": 6, "released": 8}


@needs_cifar
def test_training_writes_a_checkpoint_that_loads_as_dir_weights(shared_data, tmp_path, target_file):
    plan = DIRTraining.plan(
        "dir:pretrain_epochs=1", model=SMALL_DIR, target=f"small-cnn:weights={target_file}", dataset="cifar10",
        output=tmp_path / "dir.pt", n=16, batch_size=8, epochs=1,
        evaluation=Evaluation(n=8, attack="pgd:steps=1", batch_size=8), eval_eot=2,
    )
    target_before = {k: v.clone() for k, v in plan.target.state_dict().items()}
    initial = {k: v.clone() for k, v in plan.denoiser.state_dict().items()}
    card = plan.run(runtime=QUIET)
    assert all(torch.equal(v, target_before[k]) for k, v in plan.target.state_dict().items())
    assert any(not torch.equal(v, initial[k]) for k, v in plan.denoiser.state_dict().items())
    reloaded = registry.build("defenses", card["defense"])
    x = torch.rand(4, 3, 32, 32)
    masks = reloaded.sample_masks(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reloaded.purify_with_masks(x, masks), plan.denoiser.purify_with_masks(x, masks))
    assert card["epochs"] == {"pretrain": 1, "main": 1}
    assert card["target"]["checkpoints"] == {"target.pt": registry.build("models", plan.target_spec).checkpoints[
        "target.pt"]}
    assert card["evaluation"]["eot"] == 2 and 0 <= card["evaluation"]["robust_acc"] <= card["evaluation"]["clean_acc"]
    assert "--eot 2" in card["evaluation"]["command"] and "--defense" in card["evaluation"]["command"]
    assert json.loads((tmp_path / "dir.json").read_text())["checkpoint"]["sha256"] == card["checkpoint"]["sha256"]


@needs_cifar
def test_cli_trains_and_a_rerun_resumes_at_the_phase_and_epoch(shared_data, tmp_path, target_file, monkeypatch):
    output = tmp_path / "dir.pt"
    args = ["train", "dir:pretrain_epochs=1", "--model", SMALL_DIR, "--target", f"small-cnn:weights={target_file}",
            "--dataset", "cifar10", "-n", 16, "--batch-size", 8, "--eval-n", 0, "--output", output, "--no-progress"]

    def interrupt(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # stopped in the first main-training batch, after pre-training
        patch.setattr(DIRRecipe, "loss", interrupt)
        stopped = CliRunner().invoke(main, [str(a) for a in [*args, "--epochs", 1]])
    assert stopped.exit_code == 130 and "rerun the same command to resume" in stopped.output
    assert output.with_suffix(".pretrain.resume.pt").is_file() and not output.with_suffix(".resume.pt").exists()
    pretrained = torch.load(output.with_suffix(".pretrain.resume.pt"), weights_only=True)["history"]

    result = invoke(*args, "--epochs", 1)
    assert result.exit_code == 0, result.output
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["defense"] == str(parse_spec(f"{SMALL_DIR},weights={output}"))
    assert f"use it as --defense {shlex.quote(card['defense'])}" in result.output
    assert card["history"]["pretrain"] == pretrained, "pre-training resumed, not repeated"
    assert card["epochs"] == {"pretrain": 1, "main": 1}

    longer = invoke(*args, "--epochs", 2)
    assert longer.exit_code == 0, longer.output
    resumed = json.loads(output.with_suffix(".json").read_text())
    assert resumed["history"]["main"][0] == card["history"]["main"][0], "main epoch 1 resumed, not repeated"
    assert [r["epoch"] for r in resumed["history"]["main"]] == [1, 2]
    assert registry.build("defenses", f"{SMALL_DIR},weights={output}").checkpoints == {
        "dir.pt": resumed["checkpoint"]["sha256"]}


@needs_cifar
@pytest.mark.parametrize(
    "args, message",
    [
        (["dir", "--model", "dir"], "robench train dir needs --target MODEL_SPEC"),
        (["dir", "--model", "dir", "--target", "small-cnn:num_classes=100"], "has 100 classes"),
        (["dir", "--model", "dir", "--target", "small-cnn"], "loads no trained weights"),
        (["dir:alphaa=1", "--model", "dir", "--target", "convex-cifar-small"], "recipe 'dir' has no option 'alphaa'"),
        (["dir", "--model", "jpeg", "--target", "convex-cifar-small"], "--model must be a dir spec"),
        (["dir", "--model", "dir:mask_ratio=1.5", "--target", "convex-cifar-small"], "mask_ratio must be a number"),
        (["jpeg", "--model", "jpeg"], "defense 'jpeg' declares no trainer"),
        (["at", "--model", "small-cnn", "--target", "convex-cifar-small"], "--target is for learned defenses"),
    ],
)
def test_cli_bad_input_fails_before_any_work(shared_data, tmp_path, args, message):
    result = invoke("train", *args, "--dataset", "cifar10", "--output", tmp_path / "d.pt", "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not list(tmp_path.glob("d.*")), "nothing written"


@needs_cifar
def test_dir_needs_32x32_colour_images(shared_data, tmp_path):
    with pytest.raises(TrainingError, match=r"DIR restores 3x32x32 images, but 'mnist' images are \(1, 28, 28\)"):
        DIRTraining.plan("dir", model="dir", target="mnist-fast-at", dataset="mnist", output=tmp_path / "d.pt")
