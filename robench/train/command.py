"""``robench train NAME``: a thin click front end over :mod:`robench.train.targets` and learned defenses' trainers.

NAME is a target-model recipe (:data:`~robench.train.recipes.RECIPES`) or a registered defense
whose class declares ``trainer``: a :class:`~robench.train.trainer.DefenseTrainer` subclass or
its import path ``"module:Class"``, whose ``plan(...)`` checks a run and whose ``run(runtime=,
command=)`` trains it and returns its model card (with the ``defense`` spec that loads it).
"""

from __future__ import annotations

import os
import shlex
import sys
from importlib import import_module

import click

from robench import registry
from robench.device_options import resolve
from robench.env import pick_device
from robench.spec import parse_eps, parse_spec
from robench.threat import ThreatModel
from robench.train.augment import AUGMENTATIONS
from robench.train.evaluate import Evaluation
from robench.train.loop import Runtime, TrainingError
from robench.train.recipes import RECIPES
from robench.train.targets import plan_training, train_target

# What planning raises on bad input: TrainingError, SpecError, ConfigError, CheckpointError and the
# hyperparameter checks are ValueErrors; unknown plugins are PluginErrors; missing data FileNotFoundErrors.
BAD_INPUT = (ValueError, registry.PluginError, FileNotFoundError)


def _milestones(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of epochs, e.g. 75,90") from None


def defense_trainer(name: str):
    """The trainer a learned defense's class declares in ``trainer`` (DESIGN 4), or None when NAME is no defense."""
    if name in RECIPES or name not in registry.names("defenses"):
        return None
    declared = getattr(registry.load("defenses", name), "trainer", None)
    if not declared:
        raise TrainingError(f"defense {name!r} declares no trainer; robench train runs the recipes "
                            f"{', '.join(RECIPES)} and the trainers of learned defenses that declare one")
    if not isinstance(declared, str):
        return declared
    module, _, attribute = declared.partition(":")
    try:
        return getattr(import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise TrainingError(f"defense {name!r} names the trainer {declared!r}, which failed to load: {err!r}") from None


@click.command(
    "train",
    help=f"Train a target model with RECIPE ({', '.join(RECIPES)}; options as a spec, e.g. trades:beta=6), or a "
    "learned defense that declares a trainer (e.g. dir: --model dir --target MODEL:weights=PATH). "
    "Writes a state_dict checkpoint, usable as --model MODEL:weights=PATH (--defense NAME:weights=PATH for a "
    "defense), and a JSON model card beside it. Rerunning the same command resumes from the last completed epoch.",
)
@click.argument("recipe")
@click.option("--model", required=True, help="Model spec, e.g. resnet18 (fresh) or small-cnn; a defense spec for a "
              "defense's trainer (dir:mask_ratio=0.3).")
@click.option("--target", help="Fixed classifier spec a learned defense is trained in front of.")
@click.option("--input-defense", help="Defense spec whose outputs a recipe trains --model on, inside the loop "
              "(ME-Net's classifiers: --input-defense me-net); attacked through BPDA when not differentiable.")
@click.option("--dataset", required=True, help="Dataset spec, e.g. cifar10.")
@click.option("--epochs", type=int, help="Epochs (default: the recipe's).")
@click.option("--batch-size", type=int, help="Mini-batch size (default 128).")
@click.option("--lr", type=float, help="Initial learning rate (default: the recipe's).")
@click.option("--momentum", type=float, help="SGD momentum (default 0.9).")
@click.option("--weight-decay", type=float, help="Weight decay (default: the recipe's).")
@click.option("--milestones", callback=_milestones, help="Epochs from which the lr is x --gamma, e.g. 75,90.")
@click.option("--gamma", type=float, help="Learning-rate factor at each milestone (default 0.1).")
@click.option("--split", default="train", show_default=True, help="Split to train on.")
@click.option("-n", "--n", "n", type=int, help="Train on the first n images of the split (all by default).")
@click.option("--sample-seed", type=int, help="Train on a seeded random subset of n images instead.")
@click.option("--augment", type=click.Choice(AUGMENTATIONS), help="Default: crop-flip for CIFAR, crop for SVHN.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds init, shuffling, augmentation, attacks.")
@click.option("--eval-n", type=int, default=1000, show_default=True, help="Held-out images per evaluation (0: none).")
@click.option("--eval-split", default="test", show_default=True)
@click.option("--eval-attack", default="pgd:steps=20", show_default=True, help="Attack spec of the robust accuracy.")
@click.option("--eval-eps", default="8/255", show_default=True, help="Linf budget of the evaluation.")
@click.option("--eval-batch-size", type=int, default=128, show_default=True)
@click.option("--eval-eot", type=int, help="EOT draws of the evaluation attack on a stochastic learned defense "
              "(the trainer's default; dir: 10).")
@click.option("--output", type=click.Path(), help="Checkpoint (default checkpoints/<model>-<recipe>-<dataset>.pt).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@click.option("--autocast", type=click.Choice(["auto", "bf16", "off"]), default="auto", show_default=True,
              help="bf16 autocast; auto: on for CUDA, off on CPU.")
@click.option("--channels-last", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="channels_last memory format; auto: on for CUDA, off on CPU.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder with the datasets (or set ROBENCH_DATA).")
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_command(recipe, model, target, input_defense, dataset, epochs, batch_size, lr, momentum, weight_decay, milestones, gamma,
                  split, n, sample_seed, augment, seed, eval_n, eval_split, eval_attack, eval_eps, eval_batch_size,
                  eval_eot, output, device, autocast, channels_last, data_root, progress):
    if data_root:
        os.environ["ROBENCH_DATA"] = data_root
    try:
        torch_device = pick_device(device)
        chosen = resolve(torch_device, autocast=autocast,
                         channels_last={"auto": "auto", "on": True, "off": False}[channels_last])
        runtime = Runtime(device=torch_device, autocast=chosen.autocast, channels_last=chosen.channels_last,
                          progress=progress)
        evaluation = Evaluation(n=eval_n, split=eval_split, attack=parse_spec(eval_attack),
                                threat=ThreatModel("Linf", parse_eps(eval_eps)), batch_size=eval_batch_size)
        options = dict(model=model, dataset=dataset, output=output, split=split, n=n, sample_seed=sample_seed,
                       seed=seed, augment=augment, evaluation=evaluation, epochs=epochs, batch_size=batch_size, lr=lr,
                       momentum=momentum, weight_decay=weight_decay, milestones=milestones, gamma=gamma)
        trainer = defense_trainer(parse_spec(recipe).name)
        if trainer is not None:
            if input_defense is not None:
                raise TrainingError(f"--input-defense is for the recipes {', '.join(RECIPES)}: they train --model "
                                    f"on a defense's outputs; {recipe!r} trains a defense")
            plan = trainer.plan(recipe, target=target, eval_eot=eval_eot, **options)
        else:
            for flag, value in (("--target", target), ("--eval-eot", eval_eot)):
                if value is not None:
                    raise TrainingError(f"{flag} is for learned defenses' trainers (e.g. robench train dir); "
                                        f"recipe {recipe!r} trains --model itself")
            plan = plan_training(recipe, input_defense=input_defense, **options)
    except BAD_INPUT as err:
        raise click.UsageError(str(err)) from None
    unreached = plan.schedule.unreached_milestones()
    if epochs is not None and milestones is None and unreached:  # the recipe's milestones assume its own length
        click.echo(f"note: --epochs {epochs} ends before the recipe's lr milestones {','.join(map(str, unreached))}: "
                   "the learning rate never decays there; pass --milestones to decay it", err=True)
    command = "robench " + shlex.join(sys.argv[1:])
    try:
        card = plan.run(runtime=runtime, command=command) if trainer else train_target(plan, runtime=runtime,
                                                                                        command=command)
    except TrainingError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; completed epochs are kept in {plan.resume_path}: rerun the same command to resume",
                   err=True)
        sys.exit(130)
    click.echo(f"checkpoint {plan.output} (sha256 {card['checkpoint']['sha256'][:16]}...), card {plan.card_path}")
    if card["evaluation"] is not None:
        ev = card["evaluation"]
        click.echo(f"{ev['split']} n={ev['n']}: clean {ev['clean_acc']:.4f}, {ev['attack']} at {ev['threat']}: "
                   f"robust {ev['robust_acc']:.4f}")
    usage = f"--model {shlex.quote(card['model'])}" if "model" in card else f"--defense {shlex.quote(card['defense'])}"
    if card.get("input_defense"):
        usage += f" behind --defense {shlex.quote(card['input_defense']['spec'])}"
    click.echo(f"use it as {usage}")
