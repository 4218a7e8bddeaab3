"""``robench train RECIPE``: build and check a target-model training run, train it, write checkpoint and card.

:func:`plan_training` builds the recipe, model and data and checks that they fit before any
epoch runs; :func:`train_target` trains with the shared loop (:func:`robench.train.loop.fit`),
saves the network's ``state_dict`` at the output path, checks that the model factory loads it
back as ``MODEL:weights=PATH``, and writes the model card beside it.
"""

from __future__ import annotations

import inspect
import time
from functools import partial
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robench import registry
from robench.checkpoint import sha256_of
from robench.data import Examples
from robench.defense import Defense, gradient_view
from robench.env import environment
from robench.spec import Spec
from robench.target import Pipeline
from robench.train.augment import AUGMENTATIONS, default_augmentation
from robench.train.card import data_entry, model_card
from robench.train.checks import (
    build_plugin, check_fits, check_reloads, check_saved, check_writable, load_split, parse_option,
)
from robench.train.evaluate import Evaluation, robust_accuracy
from robench.train.files import CHECKPOINT_DIR, save_json, save_torch
from robench.train.loop import Runtime, Schedule, TrainingError, fit
from robench.train.recipes import Recipe, build_recipe


@dataclass
class TrainingPlan:
    """A checked training run: recipe, model (built), data (loaded), schedule and outputs."""

    recipe: Recipe
    model_spec: Spec
    dataset_spec: Spec
    model: nn.Module
    train: Examples
    held_out: Examples | None
    split: str
    sample_seed: int | None
    schedule: Schedule
    augment: str
    seed: int
    evaluation: Evaluation
    output: Path
    input_defense_spec: Spec | None = None
    input_defense: Defense | None = None

    @property
    def card_path(self) -> Path:
        """The model card: ``<output stem>.json`` beside the checkpoint, where the model factories look."""
        return self.output.with_suffix(".json")

    @property
    def resume_path(self) -> Path:
        return self.output.with_suffix(".resume.pt")

    @property
    def trained(self) -> nn.Module:
        """What the recipe trains and attacks: the model, behind the input defense as attacks see it (BPDA)."""
        if self.input_defense is None:
            return self.model
        return Pipeline(self.model, gradient_view(self.input_defense))

    def input_defense_entry(self) -> dict | None:
        """The input defense's spec and checkpoints, for the resume file's identity and the card."""
        if self.input_defense is None:
            return None
        return {"spec": str(self.input_defense_spec), "checkpoints": dict(self.input_defense.checkpoints)}

    def config(self, runtime: Runtime) -> dict:
        """Everything that determines the weights except the number of epochs (the resume file's identity)."""
        return {
            "recipe": str(self.recipe.spec),
            "model": str(self.model_spec),
            "data": {"dataset": str(self.dataset_spec), "split": self.split, "n": len(self.train),
                     "sample_seed": self.sample_seed, "fingerprint": self.train.fingerprint()},
            "schedule": {k: v for k, v in self.schedule.to_json().items() if k != "epochs"},
            "augment": self.augment,
            "seed": self.seed,
            "autocast": runtime.autocast,
            "channels_last": runtime.channels_last,
            **({"input_defense": self.input_defense_entry()} if self.input_defense is not None else {}),
        }


def plan_training(
    recipe: "str | Spec",
    *,
    model: "str | Spec",
    dataset: "str | Spec",
    output: "str | Path | None" = None,
    split: str = "train",
    n: int | None = None,
    sample_seed: int | None = None,
    seed: int = 0,
    augment: str | None = None,
    evaluation: Evaluation = Evaluation(),
    input_defense: "str | Spec | None" = None,
    **schedule: object,
) -> TrainingPlan:
    """Build and check a run of ``recipe`` on ``model`` and ``dataset``; every bad input fails here (robench).

    Args:
        recipe: recipe spec, e.g. ``at`` or ``trades:beta=6`` (see ``recipes.RECIPES``).
        model: model spec; the factory must take ``weights=`` (``weights=None``: fresh initialisation).
        dataset: dataset spec; ``split`` is trained on, ``evaluation.split`` is held out.
        output: checkpoint path (default ``checkpoints/<model>-<recipe>-<dataset>.pt``).
        n, sample_seed: the training subset (all of the split, the first n, or a seeded sample).
        seed: seeds initialisation, shuffling, augmentation and the inner attacks.
        augment: ``crop-flip``, ``crop`` or ``none`` (default by dataset: CIFAR crop-flip, SVHN crop).
        evaluation: the per-epoch held-out measurement (behind the input defense, one draw).
        input_defense: a defense spec whose outputs the model is trained on (ME-Net, Yang et al. 2019:
            its classifier learns from its own preprocessing): applied to every batch inside the
            loop, fresh randomness per batch, and attacked through its BPDA view by adversarial
            recipes' inner attacks when it is not differentiable; fixed, never trained.
        schedule: overrides of the recipe's :class:`Schedule` (epochs, batch_size, lr, ...); None keeps it.
    """
    recipe = build_recipe(recipe)
    plan_schedule = recipe.schedule.with_overrides(**schedule)
    model_spec, dataset_spec = parse_option(model, "--model"), parse_option(dataset, "--dataset")
    _check_factory_takes_weights(model_spec)
    output = Path(output) if output else CHECKPOINT_DIR / f"{model_spec.name}-{recipe.name}-{dataset_spec.name}.pt"
    check_writable(output)
    augment = augment or default_augmentation(dataset_spec.name)
    if augment not in AUGMENTATIONS:
        raise TrainingError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    data = build_plugin("datasets", dataset_spec)
    train = load_split(data, dataset_spec, split, n, sample_seed)
    held_out = None
    if evaluation.n:
        held_out = load_split(data, dataset_spec, evaluation.split, evaluation.n, None)
        build_plugin("attacks", evaluation.attack)
    with torch.random.fork_rng():  # a fresh network's initialisation is part of the seeded run
        torch.manual_seed(seed)
        net = build_plugin("models", model_spec)
    check_fits(net, model_spec, data, dataset_spec)
    defense_spec = defense = None
    if input_defense is not None:
        defense_spec = parse_option(input_defense, "--input-defense")
        defense = build_plugin("defenses", defense_spec)
        if getattr(defense, "needs_training", False) and not defense.checkpoints:
            raise TrainingError(f"--input-defense {str(defense_spec)!r} is a learned defense without weights; "
                                f"pass its checkpoint, e.g. {defense_spec.name}:weights=PATH")
        defense.eval().requires_grad_(False)  # fixed: never in train mode, never updated
    return TrainingPlan(recipe, model_spec, dataset_spec, net, train, held_out, split, sample_seed,
                        plan_schedule, augment, seed, evaluation, output, defense_spec, defense)


def train_target(plan: TrainingPlan, *, runtime: Runtime = Runtime(), command: str = "") -> dict:
    """Train ``plan`` (resuming its resume file), write the checkpoint and model card; returns the card (robench).

    ``command`` is the command line recorded in the card (None there when empty).
    """
    began = time.perf_counter()
    trained = plan.trained
    if plan.input_defense is not None:
        plan.input_defense.to(runtime.device)
    evaluate = None
    if plan.held_out is not None:
        scored = plan.model if plan.input_defense is None else Pipeline(plan.model, plan.input_defense)
        evaluate = partial(robust_accuracy, scored, plan.held_out, plan.evaluation, runtime.device, attacker=trained)
    history = fit(
        plan.model,
        lambda x, y, generator: plan.recipe.loss(trained, x, y, generator),
        plan.train.x, plan.train.y,
        schedule=plan.schedule, seed=plan.seed, resume_path=plan.resume_path, config=plan.config(runtime),
        augment=plan.augment, evaluate=evaluate, runtime=runtime,
    )
    state = {k: v.detach().cpu().contiguous() for k, v in _network(plan.model).state_dict().items()}
    save_torch(state, plan.output)
    check_saved(plan.output, state)
    sha256 = sha256_of(plan.output)
    usable = Spec.of(plan.model_spec.name, **{**plan.model_spec.options, "weights": str(plan.output)})
    check_reloads(usable, plan.model, build_plugin("models", usable), probe=plan.train.x[:2])
    card = _card(plan, history=history, sha256=sha256, usable=usable, runtime=runtime,
                 wall_s=time.perf_counter() - began, command=command)
    save_json(card, plan.card_path)
    return card


def _check_factory_takes_weights(spec: Spec) -> None:
    """A trained checkpoint is only usable if the model factory can load it back as ``weights=PATH``."""
    try:
        factory = registry.load("models", spec.name)
    except registry.PluginError as err:
        raise TrainingError(str(err)) from None
    parameters = inspect.signature(factory).parameters
    if "weights" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise TrainingError(
            f"model {spec.name!r} takes no weights= option, so the trained checkpoint could not be loaded back; "
            "train a model whose factory takes weights= (e.g. resnet18, small-cnn)"
        )


def _network(model: nn.Module) -> nn.Module:
    """The module a factory's ``weights=`` loads into: the wrapped network of robench's classifiers."""
    return getattr(model, "net", model)


def _card(plan: TrainingPlan, *, history, sha256, usable, runtime, wall_s, command) -> dict:
    final = history[-1] if history else {}
    evaluation = None
    if plan.held_out is not None:
        evaluation = {**plan.evaluation.to_json(), "dataset": str(plan.dataset_spec),
                      "fingerprint": plan.held_out.fingerprint(), "clean_acc": final.get("clean_acc"),
                      "robust_acc": final.get("robust_acc"),
                      "command": plan.evaluation.command(plan.dataset_spec, usable, plan.input_defense_spec)}
    return model_card(
        output=plan.output, sha256=sha256, architecture=plan.model_spec, recipe=plan.recipe, augment=plan.augment,
        data=data_entry(plan.dataset_spec, plan.split, plan.train, plan.sample_seed), seed=plan.seed,
        records=history, runtime=runtime, environment=environment(runtime.device), wall_s=wall_s, command=command,
        model=str(usable), input_defense=plan.input_defense_entry(), schedule=plan.schedule.to_json(), epochs=len(history), evaluation=evaluation,
        history=history,
    )
