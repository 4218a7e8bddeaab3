"""The learned-defense trainer base: a toy trainer's checkpoint, card, resume, reload check and input checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robench import registry
from robench.checkpoint import CheckpointError, sha256_of
from robench.defense import Defense
from robench.defenses.dir.trainer import DIRTraining
from robench.models import small_cnn
from robench.spec import Spec
from robench.train import DefenseTrainer, Evaluation, Phase, Recipe, Runtime, Schedule, StepResult, TrainingError
from robench.train.checks import check_reloads
from robench.train.command import defense_trainer

QUIET = Runtime(progress=False)
STEPS: list[int] = []  # one entry per mini-batch step of the toy recipe


class Toy(Defense):
    """``clamp(x + conv1x1(x))``, starting as the identity; ``weights=`` loads a saved state dict."""

    def __init__(self, *, weights: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        if weights is not None:
            self.load_state_dict(torch.load(weights, weights_only=True))

    def purify(self, x):
        return (x + self.conv(x)).clamp(0, 1)


class ToyRecipe(Recipe):
    name = "toy"
    schedule = Schedule(epochs=1, lr=0.1, milestones=())

    def loss(self, defense, target, x, y, generator):
        STEPS.append(1)
        logits = target(defense(x))
        return StepResult(F.cross_entropy(logits, y), logits)


class ToyTrainer(DefenseTrainer):
    """The whole subclass: what it trains, its recipe, its phases (a 1-epoch warm-up, then the main schedule)."""

    trains = Toy
    recipe_class = ToyRecipe

    @classmethod
    def defense_class(cls, spec):
        return Toy  # not registered as a plugin, so not looked up in the registry

    def phases(self):
        def step(x, y, generator):
            return self.recipe.loss(self.module, self.target, x, y, generator)

        return [Phase("warmup", self.schedule.with_overrides(epochs=1), step, seed=self.seed),
                Phase("main", self.schedule, step, seed=self.seed + 1)]


@pytest.fixture
def target_file(tmp_path):
    """A small-cnn checkpoint (random weights fixed by the seed): a target that loads trained weights."""
    torch.manual_seed(0)
    path = tmp_path / "target.pt"
    torch.save(small_cnn().net.state_dict(), path)
    return path


def plan(trainer, tmp_path, target_file, **options):
    options = {"target": f"small-cnn:weights={target_file}", "dataset": "synthetic", "split": "test", "n": 8,
               "batch_size": 4, "evaluation": Evaluation(n=0), "output": tmp_path / "out" / "toy.pt", **options}
    return trainer.plan("toy", model="toy", **options)


def test_one_epoch_writes_a_checkpoint_and_its_card(tmp_path, target_file):
    run = plan(ToyTrainer, tmp_path, target_file)
    card = run.run(runtime=QUIET)
    assert run.output.is_file() and run.card_path == tmp_path / "out" / "toy.json"
    assert json.loads(run.card_path.read_text()) == card
    assert card["checkpoint"]["sha256"] == sha256_of(run.output)
    assert card["defense"] == str(Spec.of("toy", weights=str(run.output)))
    assert card["epochs"] == {"warmup": 1, "main": 1} and card["schedule"]["main"]["epochs"] == 1
    assert card["target"]["checkpoints"] == {"target.pt": sha256_of(target_file)}
    saved = torch.load(run.output, weights_only=True)
    assert saved["conv.weight"].abs().sum() > 0, "the purifier trained away from its zero start"
    assert torch.equal(Toy(weights=str(run.output)).conv.weight, run.module.conv.weight.cpu())


def test_a_rerun_continues_at_the_phase_and_epoch_where_it_stopped(tmp_path, target_file):
    STEPS.clear()
    first = plan(ToyTrainer, tmp_path, target_file).run(runtime=QUIET)
    assert len(STEPS) == 4, "two batches of the warm-up epoch, two of the main epoch"
    STEPS.clear()
    longer = plan(ToyTrainer, tmp_path, target_file, epochs=2)
    resumed = longer.run(runtime=QUIET)
    assert len(STEPS) == 2, "only main epoch 2 ran: the warm-up and main epoch 1 were resumed, not repeated"
    assert resumed["history"]["warmup"] == first["history"]["warmup"]
    assert resumed["history"]["main"][0] == first["history"]["main"][0]
    assert [r["epoch"] for r in resumed["history"]["main"]] == [1, 2]
    assert longer.resume_path == tmp_path / "out" / "toy.resume.pt"
    assert longer.resume_path_of("warmup").is_file()


class Forgetful(Toy):
    """Takes ``weights=`` and ignores it: the trained checkpoint would never be used."""

    def __init__(self, *, weights: str | None = None):
        super().__init__()


class ForgetfulTrainer(ToyTrainer):
    @classmethod
    def defense_class(cls, spec):
        return Forgetful


def test_the_reload_check_catches_a_defense_that_does_not_load_its_weights(tmp_path, target_file):
    with pytest.raises(CheckpointError, match=r"toy:weights=.* does not load the trained weights back"):
        plan(ForgetfulTrainer, tmp_path, target_file).run(runtime=QUIET)


def test_the_reload_check_compares_outputs_too():
    class Halved(Toy):
        def purify(self, x):
            return super().purify(x) / 2

    x = torch.rand(2, 3, 8, 8)
    check_reloads(Spec.of("toy"), Toy(), Toy(), probe=x)
    with pytest.raises(CheckpointError, match="outputs differ"):
        check_reloads(Spec.of("toy"), Toy(), Halved(), probe=x)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"target": "small-cnn"}, "target 'small-cnn' loads no trained weights"),
        ({"target": None}, "robench train toy needs --target MODEL_SPEC"),
        ({"output": "blocker/toy.pt"}, "cannot write the checkpoint to"),
        ({"split": "train"}, "dataset 'synthetic' has splits test, not 'train'"),
    ],
)
def test_bad_input_fails_before_any_work_with_a_clear_error(tmp_path, target_file, options, message):
    (tmp_path / "blocker").write_text("a file where the output folder should be")
    if str(options.get("output", "")).startswith("blocker"):
        options = {**options, "output": tmp_path / options["output"]}
    with pytest.raises(TrainingError, match=message):
        plan(ToyTrainer, tmp_path, target_file, **options)
    assert not list(tmp_path.glob("out/*")), "nothing written"


def test_missing_data_is_named(tmp_path, target_file, offline):
    with pytest.raises(TrainingError, match="dataset 'cifar10', train split"):
        plan(ToyTrainer, tmp_path, target_file, dataset="cifar10", split="train")


def test_defenses_declare_whether_and_how_they_are_trained():
    assert (Defense.needs_training, Defense.trainer) == (False, None)
    assert registry.load("defenses", "jpeg").trainer is None
    assert registry.load("defenses", "dir").needs_training
    assert defense_trainer("dir") is DIRTraining
    assert issubclass(DIRTraining, DefenseTrainer)


def test_fit_trains_each_network_on_its_own_loss_with_its_own_optimiser_and_resumes_them(tmp_path):
    from robench.train.loop import Schedule, StepResult, TrainingError, fit

    torch.manual_seed(0)
    generator_net, critic = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
    both = torch.nn.ModuleDict({"generator": generator_net, "critic": critic})
    x, y = torch.rand(8, 4), torch.zeros(8, dtype=torch.long)

    def step(xb, yb, generator):  # opposite objectives on the critic's score: only the right network may move
        score = critic(generator_net(xb)).mean()
        return StepResult({"generator": -score, "critic": score})

    schedule = Schedule(epochs=1, batch_size=4, lr=1e-2, optimizer="adam", weight_decay=0, milestones=())
    before = {k: v.clone() for k, v in both.state_dict().items()}
    history = fit(both, step, x, y, schedule=schedule, seed=0, resume_path=tmp_path / "r.pt", config={},
                  groups={"generator": generator_net, "critic": critic}, runtime=Runtime(progress=False))
    assert set(history[0]) >= {"train_loss", "train_loss_critic"}
    assert history[0]["train_loss"] == pytest.approx(-history[0]["train_loss_critic"], rel=1e-6)
    # one Adam step moves every parameter by about lr; had the two losses been summed, the critic's
    # gradients would cancel to zero and it would not move
    moved = {k: (v - before[k]).abs().max().item() for k, v in both.state_dict().items()}
    assert all(m > 1e-3 for m in moved.values())
    saved = torch.load(tmp_path / "r.pt", weights_only=True)
    assert set(saved["optimizers"]) == {"generator", "critic"} and "exp_avg" in str(saved["optimizers"]["critic"])
    again = fit(both, step, x, y, schedule=schedule.with_overrides(epochs=2), seed=0, resume_path=tmp_path / "r.pt",
                config={}, groups={"generator": generator_net, "critic": critic}, runtime=Runtime(progress=False))
    assert [r["epoch"] for r in again] == [1, 2]

    def wrong(xb, yb, generator):
        return StepResult({"generator": critic(generator_net(xb)).mean()})

    with pytest.raises(TrainingError, match="losses for"):
        fit(both, wrong, x, y, schedule=schedule, seed=0, resume_path=tmp_path / "w.pt", config={},
            groups={"generator": generator_net, "critic": critic}, runtime=Runtime(progress=False))
    with pytest.raises(TrainingError, match="optimizer must be one of"):
        Schedule(epochs=1, optimizer="rmsprop")
