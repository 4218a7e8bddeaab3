"""Training: the shared loop (seeding, schedule, resume), the AT/TRADES/MART recipes, ``robench train`` end to end."""

from __future__ import annotations

import csv
import json
import math
import shlex

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from robench.checkpoint import sha256_of
from robench.cli import main
from robench.spec import Spec, parse_spec
from robench.threat import ThreatModel
from robench.train import (
    Evaluation, Runtime, Schedule, StepResult, TrainingError, build_recipe, fit, perturb, plan_training, train_target,
)
from robench.train.augment import augment, random_crop
from robench.train.recipes import MadryAT, mart_loss, trades_loss
from tests.conftest import needs_cifar

QUIET = Runtime(progress=False)
SMALL_EVAL = Evaluation(n=16, attack="pgd:steps=2", batch_size=8)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def small_plan(tmp_path, *, recipe="at", n=128, epochs=1, name="model.pt", evaluation=SMALL_EVAL, **options):
    options = {"batch_size": 32, "lr": 0.05, **options}
    return plan_training(recipe, model="small-cnn", dataset="cifar10", output=tmp_path / name, n=n, epochs=epochs,
                         evaluation=evaluation, **options)


def mean_loss(plan, seed: int = 123) -> float:
    """The recipe's loss over the whole training subset, with a fixed generator for its inner attack."""
    generator = torch.Generator().manual_seed(seed)
    x, y = plan.train.x, plan.train.y
    losses = [plan.recipe.loss(plan.model, x[i : i + 64], y[i : i + 64], generator).loss.item() * len(y[i : i + 64])
              for i in range(0, len(y), 64)]
    return sum(losses) / len(y)


# --- the pieces: augmentation, inner maximisation, losses against hand computation ---


def test_crop_is_a_window_of_the_padded_image_and_replays_from_the_generator():
    x = torch.rand(6, 3, 8, 8)
    first = random_crop(x, torch.Generator().manual_seed(5))
    assert torch.equal(first, random_crop(x, torch.Generator().manual_seed(5)))
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [(dy, dx) for dy in range(9) for dx in range(9)
                   if torch.equal(padded[i, :, dy : dy + 8, dx : dx + 8], first[i])]
        assert windows, f"image {i} is not a crop of its padded original"
    flipped = augment(x, "crop-flip", torch.Generator().manual_seed(0))
    assert flipped.shape == x.shape and not torch.equal(flipped, x)
    assert torch.equal(augment(x, "none", torch.Generator()), x)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment(x, "flip", torch.Generator())


def test_perturb_stays_in_the_threat_model_and_raises_the_objective():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x, y = torch.rand(16, 3, 8, 8), torch.randint(0, 4, (16,))
    threat = ThreatModel("Linf", 8 / 255)
    for start in ("uniform", "normal"):
        x_adv = perturb(model, x, lambda logits: F.cross_entropy(logits, y), threat, step_size=2 / 255, steps=5,
                        start=start, generator=torch.Generator().manual_seed(1))
        threat.check(x_adv, x)
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.01


def _softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


LOGITS_NATURAL = [[1.0, 2.0, 0.0], [0.5, 0.0, -1.0]]
LOGITS_ADV = [[0.0, 1.0, 2.0], [1.0, 0.0, 0.3]]
LABELS = [1, 0]


def test_trades_loss_matches_hand_computation():
    beta, total = 6.0, 0.0
    for nat, adv, y in zip(LOGITS_NATURAL, LOGITS_ADV, LABELS):
        p, q = _softmax(nat), _softmax(adv)
        total += -math.log(p[y]) + beta * sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
    value = trades_loss(torch.tensor(LOGITS_NATURAL), torch.tensor(LOGITS_ADV), torch.tensor(LABELS), beta)
    assert value.item() == pytest.approx(total / 2, rel=1e-5)


def test_mart_loss_matches_hand_computation():
    beta, boosted, robust = 5.0, 0.0, 0.0
    for nat, adv, y in zip(LOGITS_NATURAL, LOGITS_ADV, LABELS):
        p, q = _softmax(nat), _softmax(adv)
        wrong = max((k for k in range(3) if k != y), key=lambda k: q[k])
        boosted += -math.log(q[y]) - math.log(1.0001 - q[wrong] + 1e-12)
        kl = sum(pk * (math.log(pk) - math.log(qk + 1e-12)) for pk, qk in zip(p, q))
        robust += kl * (1.0000001 - p[y])
    value = mart_loss(torch.tensor(LOGITS_NATURAL), torch.tensor(LOGITS_ADV), torch.tensor(LABELS), beta)
    assert value.item() == pytest.approx(boosted / 2 + beta * robust / 2, rel=1e-5)


@needs_cifar
@pytest.mark.parametrize("spec", ["trades:steps=3", "mart:steps=3"])
def test_trades_and_mart_reduce_their_loss_in_a_few_steps(shared_data, tmp_path, spec):
    plan = plan_training(spec, model="small-cnn", dataset="cifar10", output=tmp_path / "m.pt", n=64,
                         evaluation=Evaluation(n=0))
    recipe, model = build_recipe(spec), plan.model
    x, y = plan.train.x, plan.train.y
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = recipe.loss(model, x, y, torch.Generator().manual_seed(0)).loss.item()
    for step in range(6):
        result = recipe.loss(model, x, y, torch.Generator().manual_seed(step + 1))
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
    after = recipe.loss(model, x, y, torch.Generator().manual_seed(0)).loss.item()
    assert after < before - 0.01, (before, after)


def test_recipe_defaults_follow_the_specs():
    at, trades, mart = build_recipe("at"), build_recipe("trades"), build_recipe("mart")
    assert str(at.spec) == "at:eps=8/255,step_size=2/255,steps=5"
    assert str(trades.spec) == "trades:beta=6.0,eps=8/255,step_size=2/255,steps=10"
    assert (mart.beta, mart.schedule.lr, mart.schedule.weight_decay, mart.schedule.epochs) == (5.0, 0.01, 3.5e-3, 120)
    assert trades.schedule.milestones == (75, 90, 100) and at.schedule.milestones == (75, 90)
    assert build_recipe("trades:beta=1").beta == 1.0


# --- the generic loop: any module, any loss, schedule, evaluation hook ---


def test_fit_trains_any_module_with_its_own_loss_schedule_and_hook(tmp_path):
    torch.manual_seed(0)
    denoiser = nn.Conv2d(3, 3, 3, padding=1)
    images = torch.rand(64, 3, 8, 8)

    def step(x, y, generator):  # a denoising loss: no labels, no logits
        noisy = x + 0.1 * torch.randn(x.shape, generator=generator)
        return StepResult(F.mse_loss(denoiser(noisy), x))

    calls = []

    def evaluate():
        calls.append(denoiser.training)
        with torch.no_grad():
            return {"val_mse": F.mse_loss(denoiser(images), images).item()}

    history = fit(denoiser, step, images, torch.zeros(64, dtype=torch.long), seed=0, resume_path=tmp_path / "r.pt",
                  config={"what": "denoiser"}, schedule=Schedule(epochs=3, batch_size=16, lr=0.1, milestones=(2, 3)),
                  evaluate=evaluate, runtime=QUIET)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.01, 0.001])
    assert calls == [False, False, False], "the hook runs once per epoch, in eval mode"
    assert all(r["train_acc"] is None for r in history)
    assert history[-1]["val_mse"] < 0.9 * history[0]["val_mse"]  # measured 0.19 vs 0.30
    assert history[-1]["train_loss"] < 0.97 * history[0]["train_loss"]  # measured 0.21 vs 0.24


def test_fit_stops_with_a_clear_error_when_the_loss_diverges(tmp_path):
    layer = nn.Linear(4, 2)

    def step(x, y, generator):
        return StepResult(layer(x).sum() * float("nan"))

    with pytest.raises(TrainingError, match="loss became nan at epoch 1, batch 1; training diverged"):
        fit(layer, step, torch.rand(8, 4), torch.zeros(8), seed=0, resume_path=tmp_path / "r.pt", config={},
            schedule=Schedule(epochs=1, batch_size=4), runtime=QUIET)
    assert not (tmp_path / "r.pt").exists()


def test_schedule_refuses_bad_values():
    with pytest.raises(TrainingError, match="milestones must be increasing"):
        Schedule(epochs=10, milestones=(90, 75))
    with pytest.raises(TrainingError, match="lr=-0.1 is out of range"):
        Schedule(epochs=10, lr=-0.1)
    with pytest.raises(TrainingError, match="epochs must be a positive integer"):
        Schedule(epochs=0)



def test_schedule_betas_reach_adam_and_the_json_and_are_checked():
    params = [nn.Parameter(torch.zeros(2))]
    assert Schedule(epochs=1, optimizer="adam").optimizer_for(params).defaults["betas"] == (0.9, 0.999)
    schedule = Schedule(epochs=1, optimizer="adam", betas=[0.5, 0.999])
    assert schedule.optimizer_for(params).defaults["betas"] == (0.5, 0.999)
    assert schedule.to_json()["betas"] == [0.5, 0.999]
    assert schedule.with_overrides(lr=1e-2).betas == (0.5, 0.999)
    for bad in ((0.5,), (1.0, 0.999), 0.5, (True, 0.9)):
        with pytest.raises(TrainingError, match="betas must be two numbers in \\[0, 1\\)"):
            Schedule(epochs=1, optimizer="adam", betas=bad)


# --- target-model training: one epoch of AT, resume, determinism ---


@needs_cifar
def test_one_epoch_of_at_lowers_the_loss_and_writes_checkpoint_and_card(shared_data, tmp_path):
    plan = small_plan(tmp_path, batch_size=16, lr=0.1, name="at.pt")
    before = mean_loss(plan)
    card = train_target(plan, runtime=QUIET, command="robench train at ...")
    assert mean_loss(plan) < before - 0.02

    state = torch.load(tmp_path / "at.pt", weights_only=True)
    assert set(state) == set(plan.model.net.state_dict()) and all(isinstance(v, torch.Tensor) for v in state.values())
    written = json.loads((tmp_path / "at.json").read_text())
    assert written == card
    assert card["checkpoint"]["sha256"] == sha256_of(tmp_path / "at.pt")
    assert card["recipe"]["spec"] == "at:eps=8/255,step_size=2/255,steps=5"
    assert card["recipe"]["hyperparameters"]["steps"] == 5
    assert card["schedule"]["lr"] == 0.1 and card["schedule"]["batch_size"] == 16 and card["epochs"] == 1
    assert card["architecture"] == "small-cnn" and card["model"].startswith("small-cnn:weights=")
    assert card["data"]["dataset"] == "cifar10" and card["data"]["split"] == "train" and card["data"]["n"] == 128
    assert card["data"]["fingerprint"] == plan.train.fingerprint() and card["data"]["last_id"] == "train/127"
    assert card["augment"] == "crop-flip" and card["seed"] == 0
    evaluation = card["evaluation"]
    assert evaluation["n"] == 16 and evaluation["attack"] == "pgd:steps=2" and evaluation["threat"] == "Linf 8/255"
    assert 0 <= evaluation["robust_acc"] <= evaluation["clean_acc"] <= 1
    assert card["versions"]["torch"] == torch.__version__ and "robench" in card["versions"]
    assert card["device"].startswith("cpu") and card["wall_s"] > 0 and card["command"] == "robench train at ..."
    assert len(card["history"]) == 1 and card["history"][0]["clean_acc"] == evaluation["clean_acc"]


@needs_cifar
def test_interrupted_run_resumes_at_the_saved_epoch_and_ends_with_the_uninterrupted_weights(
    shared_data, tmp_path, monkeypatch
):
    def plan(name, epochs=2, **options):
        return small_plan(tmp_path, n=64, batch_size=16, epochs=epochs, name=name, **options)

    straight = train_target(plan("straight.pt"), runtime=QUIET)
    batches_per_epoch = 4
    calls, real_loss = [], MadryAT.loss

    def ctrl_c_in_epoch_two(self, *args):
        calls.append(1)
        if len(calls) == batches_per_epoch + 2:
            raise KeyboardInterrupt
        return real_loss(self, *args)

    monkeypatch.setattr(MadryAT, "loss", ctrl_c_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train_target(plan("resumed.pt"), runtime=QUIET)
    assert not (tmp_path / "resumed.pt").exists(), "no checkpoint before the run finishes"
    saved = torch.load(tmp_path / "resumed.resume.pt", weights_only=True)
    assert [r["epoch"] for r in saved["history"]] == [1]

    calls.clear()
    monkeypatch.setattr(MadryAT, "loss", lambda self, *args: calls.append(1) or real_loss(self, *args))
    card = train_target(plan("resumed.pt"), runtime=QUIET)
    assert len(calls) == batches_per_epoch, "only epoch 2 was trained"
    assert [r["epoch"] for r in card["history"]] == [1, 2]
    assert card["history"][0] == saved["history"][0]
    def untimed(history):
        return [{k: v for k, v in record.items() if not k.endswith("seconds")} for record in history]

    assert untimed(card["history"]) == untimed(straight["history"])
    ours = torch.load(tmp_path / "resumed.pt", weights_only=True)
    theirs = torch.load(tmp_path / "straight.pt", weights_only=True)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs), "same seed, same weights, interrupted or not"

    with pytest.raises(TrainingError, match="already holds 2 epochs, more than the 1 asked for"):
        train_target(plan("straight.pt", epochs=1), runtime=QUIET)

    train_target(plan("seed1.pt", epochs=1, seed=1, evaluation=Evaluation(n=0)), runtime=QUIET)
    other_seed = torch.load(tmp_path / "seed1.pt", weights_only=True)
    assert not torch.equal(other_seed["0.weight"], saved["module"]["net.0.weight"]), "the seed matters"


@needs_cifar
def test_bf16_autocast_and_channels_last_train_and_save_plain_weights(shared_data, tmp_path):
    plan = small_plan(tmp_path, n=32, batch_size=16, evaluation=Evaluation(n=0))
    card = train_target(plan, runtime=Runtime(autocast="bf16", channels_last=True, progress=False))
    assert card["autocast"] == "bf16" and card["channels_last"] is True
    assert math.isfinite(card["history"][0]["train_loss"])
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(v.is_contiguous() and v.dtype == torch.float32 for v in state.values())


# --- the command line ---


@needs_cifar
def test_cli_trains_and_robench_run_measures_the_same_accuracy(shared_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the card's command names the checkpoint by this relative path
    result = invoke("train", "at", "--model", "convex-cifar-small", "--dataset", "cifar10", "-n", 128,
                    "--epochs", 1, "--batch-size", 64, "--lr", 0.01, "--eval-n", 48, "--eval-attack", "pgd:steps=5",
                    "--eval-batch-size", 24, "--output", "out/convex-at.pt", "--no-progress")
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "out" / "convex-at.json").read_text())
    assert parse_spec(card["model"]) == Spec.of("convex-cifar-small", weights="out/convex-at.pt")
    assert f"use it as --model {shlex.quote(card['model'])}" in result.output
    assert card["evaluation"]["robust_acc"] > 0, "a fine-tuned robust model keeps some robustness"

    command = shlex.split(card["evaluation"]["command"])
    assert command[:2] == ["robench", "run"]
    run = invoke(*command[1:], "--store", tmp_path / "s.sqlite", "--results", tmp_path / "results", "--no-progress")
    assert run.exit_code == 0, run.output
    (board,) = (tmp_path / "results").glob("adhoc-cifar10-*/leaderboard.csv")
    with open(board) as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["clean_acc"]) == pytest.approx(card["evaluation"]["clean_acc"])
    assert float(row["robust_acc"]) == pytest.approx(card["evaluation"]["robust_acc"])
    shown = invoke("show", row["key"], "--store", tmp_path / "s.sqlite")
    assert card["checkpoint"]["sha256"] in shown.output


@needs_cifar
def test_cli_ctrl_c_leaves_a_resumable_state(shared_data, tmp_path, monkeypatch):
    from robench.train import recipes

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes.MadryAT, "loss", interrupt)
    result = CliRunner().invoke(main, ["train", "at", "--model", "small-cnn", "--dataset", "cifar10", "-n", "64",
                                       "--eval-n", "0", "--output", str(tmp_path / "m.pt"), "--no-progress"])
    assert result.exit_code == 130
    assert "rerun the same command to resume" in result.output


@needs_cifar
@pytest.mark.parametrize("args, noted", [
    (["--epochs", "2"], "--epochs 2 ends before the recipe's lr milestones 75,90"),
    (["--epochs", "80"], "--epochs 80 ends before the recipe's lr milestones 90:"),
    (["--epochs", "2", "--milestones", "3"], None),  # asked for
    ([], None),  # the recipe's own length reaches its milestones
])
def test_cli_says_when_epochs_end_before_the_recipes_milestones(shared_data, tmp_path, monkeypatch, args, noted):
    from robench.train import recipes

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes.MadryAT, "loss", interrupt)  # the note comes before training
    result = invoke("train", "at", "--model", "small-cnn", "--dataset", "cifar10", "-n", "64", "--eval-n", "0",
                    *args, "--output", tmp_path / "m.pt", "--no-progress")
    assert result.exit_code == 130
    text = " ".join(result.output.split())
    assert (noted in text) if noted else ("milestones" not in text)


@needs_cifar
@pytest.mark.parametrize(
    "args, message",
    [
        (["trade", "--model", "small-cnn"], "unknown training recipe 'trade'; did you mean 'trades'"),
        (["at:beta=1", "--model", "small-cnn"], "recipe 'at' has no option 'beta'; it takes eps, step_size, steps"),
        (["trades:lr=0.01", "--model", "small-cnn"], "(the schedule is set with --lr)"),
        (["at", "--model", "small-cnn:channels=1,size=28"], "takes inputs shaped (1, 28, 28), but 'cifar10' images"),
        (["at", "--model", "small-cnn:num_classes=5"], "has 5 classes, 'cifar10' has 10"),
        (["at", "--model", "tiny"], "model 'tiny' takes no weights= option"),
        (["at", "--model", "resnet18", "-n", "999999"], "n=999999"),
        (["at", "--model", "small-cnn", "--split", "validation"], "has splits test, train, not 'validation'"),
        (["at", "--model", "small-cnn", "--milestones", "90,75"], "milestones must be increasing"),
        (["at", "--model", "small-cnn", "--eval-attack", "pgdd"], "unknown attack 'pgdd'"),
    ],
)
def test_cli_bad_input_fails_before_any_work(shared_data, tmp_path, args, message):
    result = invoke("train", *args, "--dataset", "cifar10", "--output", tmp_path / "m.pt", "--no-progress")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not list(tmp_path.glob("m.*")), "nothing written"


@needs_cifar
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_a_gpu(shared_data, tmp_path):
    result = invoke("train", "at", "--model", "small-cnn", "--dataset", "cifar10", "--device", "cuda",
                    "--output", tmp_path / "m.pt")
    assert result.exit_code == 2 and "torch sees no CUDA device" in result.output


@needs_cifar
def test_cli_output_folder_that_cannot_be_written(shared_data, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    result = invoke("train", "at", "--model", "small-cnn", "--dataset", "cifar10",
                    "--output", tmp_path / "file" / "m.pt", "--no-progress")
    assert result.exit_code == 2 and "cannot write the checkpoint to" in result.output


@needs_cifar
def test_resume_file_of_another_configuration_is_refused(shared_data, tmp_path):
    train_target(small_plan(tmp_path, n=64, evaluation=Evaluation(n=0)), runtime=QUIET)
    changed = small_plan(tmp_path, n=64, lr=0.02, epochs=2, evaluation=Evaluation(n=0))
    with pytest.raises(TrainingError, match=r"different training run \(schedule.lr: 0.05 in the file, 0.02 now\)"):
        train_target(changed, runtime=QUIET)
    fewer = small_plan(tmp_path, n=64, epochs=1, evaluation=Evaluation(n=0))
    assert train_target(fewer, runtime=QUIET)["epochs"] == 1, "rerunning a finished run rewrites its outputs"
