"""The public base of a learned defense's trainer, behind ``robench train NAME`` for every defense declaring one.

A subclass names the defense class it trains and its recipe, and returns its phases (:class:`Phase`)
(losses, schedule, seed); :class:`DefenseTrainer` owns the rest: parsing and checking every input
before any epoch (:meth:`DefenseTrainer.plan`), the output paths, one resume file per phase
written after every epoch (a rerun continues at the phase and epoch where it stopped), the
checkpoint and its reload check, and the model card.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping

import torch
from torch import nn

from robench import registry
from robench.checkpoint import sha256_of
from robench.data import Examples
from robench.defense import Defense, gradient_view
from robench.env import environment
from robench.spec import Spec, format_fraction
from robench.target import EOT, Pipeline
from robench.train.augment import AUGMENTATIONS, default_augmentation
from robench.train.card import data_entry, model_card
from robench.train.checks import (
    build_plugin, check_fits, check_reloads, check_saved, check_trained, check_writable, load_split, parse_option,
)
from robench.train.evaluate import Evaluation, robust_accuracy
from robench.train.files import CHECKPOINT_DIR, save_json, save_torch
from robench.train.loop import Runtime, Schedule, Step, TrainingError, fit
from robench.train.recipes import Recipe, build_recipe

MAIN = "main"


@dataclass(frozen=True)
class Phase:
    """One stage of a run (e.g. pre-training, then main training), trained by :func:`~robench.train.fit`.

    Args:
        name: names its resume file ``<stem>.<name>.resume.pt`` (``main``: ``<stem>.resume.pt``) and its card entries.
        schedule: its optimiser schedule; None skips the phase (the card records null and no epochs).
        step: ``step(x, y, generator) -> StepResult``, one mini-batch's loss of the trained defense.
        seed: seeds the phase's shuffling, augmentation and the step's randomness.
        config: what else determines the phase's weights (joins its resume file's identity).
        networks: name -> network this phase trains, each with its own optimiser on the step's loss
            of that name (e.g. a purifier, an auxiliary branch and a discriminator); all of them
            are resumed, only the defense is saved. Default: the defense alone, one loss.
        updates: network name -> optimiser steps per batch (default 1; more need ``StepResult.recompute``).
        persistent: name -> module whose state the phase carries and resumes but never optimises
            (EBM training's persistent Langevin chains), with ``networks``; not saved with the defense.
    """

    name: str
    schedule: Schedule | None
    step: Step
    seed: int
    config: dict = field(default_factory=dict)
    networks: Mapping[str, nn.Module] | None = None
    updates: Mapping[str, int] | None = None
    persistent: Mapping[str, nn.Module] = field(default_factory=dict)

    def __post_init__(self):
        if self.persistent and self.networks is None:
            raise TrainingError(f"phase {self.name!r}: persistent state needs the phase's networks named")


@dataclass
class DefenseTrainer:
    """A checked training run of a learned defense: recipe, defense and target (built), data (loaded), outputs.

    Build it with :meth:`plan`, train it with :meth:`run`. A subclass sets ``trains`` (the
    :class:`~robench.defense.Defense` class it trains) and ``recipe_class`` (its :class:`Recipe`, whose
    ``name`` is the ``robench train`` name and whose ``schedule`` is the main phase's default), and
    implements :meth:`phases`; it may set ``needs_target`` (False: self-supervised, ``--target``
    optional), ``default_eval_eot`` and override :meth:`check_data`.
    """

    trains: ClassVar[type[Defense]]
    recipe_class: ClassVar[type[Recipe]]
    needs_target: ClassVar[bool] = True
    default_eval_eot: ClassVar[int] = 1

    recipe: Recipe
    defense_spec: Spec
    target_spec: Spec | None
    dataset_spec: Spec
    module: Defense
    target: nn.Module | None
    train: Examples
    held_out: Examples | None
    split: str
    sample_seed: int | None
    schedule: Schedule
    augment: str
    seed: int
    evaluation: Evaluation
    eval_eot: int
    output: Path

    def phases(self) -> list[Phase]:
        """The run's phases in order; the step functions close over ``self.module`` and ``self.target``."""
        raise NotImplementedError

    @classmethod
    def check_data(cls, data, dataset_spec: Spec) -> None:
        """Refuse a dataset the defense cannot be trained on (any by default)."""

    @classmethod
    def defense_class(cls, spec: Spec) -> type[Defense]:
        """The registered defense ``--model`` names; it must be (a subclass of) ``trains``."""
        name = cls.recipe_class.name
        try:
            found = registry.load("defenses", spec.name)
        except registry.PluginError as err:
            raise TrainingError(f"--model {spec}: {err}") from None
        if not (isinstance(found, type) and issubclass(found, cls.trains)):
            raise TrainingError(f"robench train {name} trains the {name} defense; --model must be a {name} spec "
                                f"(e.g. {name} or {name}:OPTION=VALUE), got {str(spec)!r}")
        return found

    @classmethod
    def build_defense(cls, spec: Spec) -> Defense:
        """The defense ``spec`` names, built: fresh when planning, from ``weights=`` in the reload check."""
        try:
            return cls.defense_class(spec)(**spec.options)
        except (TypeError, ValueError, OSError) as err:
            if isinstance(err, TrainingError):
                raise
            raise TrainingError(f"defense {str(spec)!r}: {err}") from None

    @classmethod
    def plan(
        cls,
        recipe: "str | Spec",
        *,
        model: "str | Spec",
        dataset: "str | Spec",
        target: "str | Spec | None" = None,
        output: "str | Path | None" = None,
        split: str = "train",
        n: int | None = None,
        sample_seed: int | None = None,
        seed: int = 0,
        augment: str | None = None,
        evaluation: Evaluation = Evaluation(),
        eval_eot: int | None = None,
        **schedule: object,
    ) -> "DefenseTrainer":
        """Build and check a run; every bad input fails here, before any epoch or file (robench).

        Args:
            recipe: the recipe spec, e.g. ``dir:alpha=1``.
            model: the trained defense's spec (``weights=`` starts from a checkpoint).
            dataset: dataset spec; ``split`` is trained on, ``evaluation.split`` held out.
            target: the fixed classifier's model spec, with trained weights (optional when not ``needs_target``).
            output: checkpoint path (default ``checkpoints/<name>-<dataset>.pt``).
            n, sample_seed: the training subset (all of the split, the first n, or a seeded sample).
            seed: seeds shuffling, augmentation and the steps' randomness (phase k gets ``seed + k``, by convention).
            augment: ``crop-flip``, ``crop`` or ``none`` (default by dataset), every phase.
            evaluation: the per-epoch held-out measurement of ``target(defense(x))`` (needs a target).
            eval_eot: EOT draws of its attack (default ``default_eval_eot``).
            schedule: overrides of the main phase's :class:`Schedule` (epochs, batch_size, lr, ...).
        """
        name = cls.recipe_class.name
        recipe = build_recipe(recipe, recipes={name: cls.recipe_class})
        if target is None and cls.needs_target:
            raise TrainingError(
                f"robench train {name} needs --target MODEL_SPEC, the fixed classifier the defense is trained in "
                "front of, e.g. --target resnet18:weights=checkpoints/resnet18-at-cifar10.pt (from robench train at)"
            )
        plan_schedule = recipe.schedule.with_overrides(**schedule)
        defense_spec, dataset_spec = parse_option(model, "--model"), parse_option(dataset, "--dataset")
        target_spec = None if target is None else parse_option(target, "--target")
        cls.defense_class(defense_spec)
        eval_eot = cls.default_eval_eot if eval_eot is None else eval_eot
        if isinstance(eval_eot, bool) or not isinstance(eval_eot, int) or eval_eot < 1:
            raise TrainingError(f"--eval-eot must be a positive integer, got {eval_eot!r}")
        output = Path(output) if output else CHECKPOINT_DIR / f"{name}-{dataset_spec.name}.pt"
        check_writable(output)
        augment = augment or default_augmentation(dataset_spec.name)
        if augment not in AUGMENTATIONS:
            raise TrainingError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
        data = build_plugin("datasets", dataset_spec)
        cls.check_data(data, dataset_spec)
        train = load_split(data, dataset_spec, split, n, sample_seed)
        held_out = None
        if evaluation.n and target_spec is not None:
            held_out = load_split(data, dataset_spec, evaluation.split, evaluation.n, None)
            build_plugin("attacks", evaluation.attack)
        module = cls.build_defense(defense_spec)
        classifier = None
        if target_spec is not None:
            classifier = build_plugin("models", target_spec)
            check_fits(classifier, target_spec, data, dataset_spec)
            check_trained(classifier, target_spec, f"robench train {name}")
            classifier.eval().requires_grad_(False)  # fixed: never in train mode, never updated
        return cls(recipe, defense_spec, target_spec, dataset_spec, module, classifier, train, held_out, split,
                   sample_seed, plan_schedule, augment, seed, evaluation, eval_eot, output)

    @property
    def card_path(self) -> Path:
        """The model card: ``<output stem>.json`` beside the checkpoint."""
        return self.output.with_suffix(".json")

    def resume_path_of(self, phase: str) -> Path:
        """The phase's resume file, rewritten after each of its epochs."""
        return self.output.with_suffix(".resume.pt" if phase == MAIN else f".{phase}.resume.pt")

    @property
    def resume_path(self) -> Path:
        """The resume file of the latest phase that has one (the one to name when a run is interrupted)."""
        names = [phase.name for phase in self.phases() if phase.schedule is not None]
        written = [name for name in names if self.resume_path_of(name).is_file()]
        return self.resume_path_of((written or names)[-1])

    @property
    def usable(self) -> Spec:
        """The defense spec that loads the trained checkpoint."""
        return Spec.of(self.defense_spec.name, **{**self.defense_spec.options, "weights": str(self.output)})

    def config(self, phase: Phase, runtime: Runtime) -> dict:
        """Everything that determines a phase's weights except its number of epochs (its resume file's identity)."""
        return {
            "phase": phase.name,
            "defense": str(self.defense_spec),
            "target": self._target_entry(),
            "data": {"dataset": str(self.dataset_spec), "split": self.split, "n": len(self.train),
                     "sample_seed": self.sample_seed, "fingerprint": self.train.fingerprint()},
            "schedule": {k: v for k, v in phase.schedule.to_json().items() if k != "epochs"},
            "augment": self.augment,
            "seed": self.seed,
            "autocast": runtime.autocast,
            "channels_last": runtime.channels_last,
            **phase.config,
        }

    def evaluation_command(self) -> str:
        """The ``robench run`` command that measures the card's clean and robust accuracy the same way."""
        ev = self.evaluation
        dataset, model, defense, attack = (shlex.quote(str(spec)) for spec in
                                           (self.dataset_spec, self.target_spec, self.usable, ev.attack))
        return (f"robench run --dataset {dataset} --model {model} --defense {defense} --attack {attack} "
                f"--norm {ev.threat.norm} --eps {format_fraction(ev.threat.eps)} -n {ev.n} --seed {ev.seed} "
                f"--batch-size {ev.batch_size} --eot {self.eval_eot} --draws 1")

    def run(self, *, runtime: Runtime = Runtime(), command: str = "") -> dict:
        """Train every phase (resuming each), write the checkpoint, check it reloads, write the card; returns it."""
        began = time.perf_counter()
        if self.target is not None:
            self.target.to(runtime.device)
            if runtime.channels_last:
                self.target.to(memory_format=torch.channels_last)
        evaluate = self._evaluator(runtime)
        histories = {}
        for phase in self.phases():
            trained = self.module if phase.networks is None else nn.ModuleDict({**phase.networks, **phase.persistent})
            histories[phase.name] = [] if phase.schedule is None else fit(
                trained, phase.step, self.train.x, self.train.y, schedule=phase.schedule, seed=phase.seed,
                resume_path=self.resume_path_of(phase.name), config=self.config(phase, runtime),
                augment=self.augment, evaluate=evaluate, runtime=runtime, groups=phase.networks,
                updates=phase.updates,
            )
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_torch(state, self.output)
        check_saved(self.output, state)
        sha256 = sha256_of(self.output)
        check_reloads(self.usable, self.module, self.build_defense(self.usable), probe=self.train.x[:2])
        card = self._card(histories, sha256, runtime, time.perf_counter() - began, command)
        save_json(card, self.card_path)
        return card

    def _evaluator(self, runtime: Runtime):
        if self.held_out is None:
            return None
        pipeline = Pipeline(self.target, self.module)
        # a non-differentiable defense is attacked through its BPDA view, as ``robench run`` does
        attacked = Pipeline(self.target, gradient_view(self.module))
        attacker = EOT(attacked, self.eval_eot) if self.eval_eot > 1 else attacked

        def evaluate() -> dict:
            return robust_accuracy(pipeline, self.held_out, self.evaluation, runtime.device, attacker=attacker)

        return evaluate

    def _target_entry(self) -> dict | None:
        if self.target is None:
            return None
        return {"spec": str(self.target_spec), "checkpoints": dict(getattr(self.target, "checkpoints", {}))}

    def _card(self, histories: dict, sha256: str, runtime: Runtime, wall_s: float, command: str) -> dict:
        phases = self.phases()
        final_records = histories[phases[-1].name]
        final = final_records[-1] if final_records else {}
        evaluation = None
        if self.held_out is not None:
            evaluation = {**self.evaluation.to_json(), "eot": self.eval_eot, "draws": 1,
                          "dataset": str(self.dataset_spec), "pipeline": f"{self.target_spec} behind {self.usable}",
                          "clean_acc": final.get("clean_acc"), "robust_acc": final.get("robust_acc"),
                          "command": self.evaluation_command()}
        return model_card(
            output=self.output, sha256=sha256, architecture=self.defense_spec, recipe=self.recipe,
            augment=self.augment, data=data_entry(self.dataset_spec, self.split, self.train, self.sample_seed),
            seed=self.seed, records=[r for records in histories.values() for r in records], runtime=runtime,
            environment=environment(runtime.device), wall_s=wall_s, command=command,
            defense=str(self.usable), target=self._target_entry(),
            schedule={p.name: None if p.schedule is None else p.schedule.to_json() for p in phases},
            epochs={name: len(records) for name, records in histories.items()},
            evaluation=evaluation, history=histories,
        )
