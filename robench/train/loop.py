"""The shared training loop: seeded epochs of SGD on any module with any per-batch loss, resumable.

A caller (a target-model recipe, a learned defense's trainer) hands :func:`fit` the module whose
parameters train, a ``step`` function computing one mini-batch's loss, the training tensors and
an optional ``evaluate`` hook run after every epoch. :func:`fit` owns everything else: shuffling
and augmentation from one ``torch.Generator``, SGD with momentum (or Adam) and a multi-step
learning rate, one optimiser per trained network when a step has several losses (a GAN's),
bf16 autocast and channels_last, a progress bar, and a resume file written atomically after
every epoch so that rerunning the same command continues from the last completed epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from robench.device_options import DeviceOptions
from robench.train.augment import augment as apply_augmentation
from robench.train.files import save_torch

RESUME_FORMAT = 2
TRAINING_AUTOCAST = (None, "bf16")  # fp16 would need a GradScaler for the weights
OPTIMIZERS = ("sgd", "adam")
MAIN_GROUP = "main"


class TrainingError(ValueError):
    """A training run that cannot start or go on as configured; the message says what to change."""


@dataclass(frozen=True)
class Schedule:
    """SGD with momentum (or Adam) over ``epochs``; the learning rate is multiplied by ``gamma`` from each milestone on.

    ``optimizer="adam"`` uses Adam with ``betas`` (default (0.9, 0.999); ComDefend's trainer uses
    (0.5, 0.999)) and ignores ``momentum``; SGD ignores ``betas``.

    ``milestones`` are 1-based epochs, as in the reference scripts' ``if epoch >= 75: lr *= 0.1``
    (TRADES, MART): with ``(75, 90)`` epochs 1-74 use ``lr``, 75-89 ``lr * gamma``, 90 on ``lr * gamma**2``.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    milestones: tuple[int, ...] = (75, 90)
    gamma: float = 0.1
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(self.milestones))
        betas = self.betas
        if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        ):
            raise TrainingError(f"betas must be two numbers in [0, 1) (Adam's beta1 and beta2), got {betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        if self.optimizer not in OPTIMIZERS:
            raise TrainingError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TrainingError(f"{name} must be a positive integer, got {value!r}")
        ranges = {
            "lr": lambda v: v > 0, "momentum": lambda v: 0 <= v < 1, "weight_decay": lambda v: v >= 0,
            "gamma": lambda v: 0 < v <= 1,
        }
        for name, ok in ranges.items():
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or not ok(value):
                raise TrainingError(f"{name}={value!r} is out of range (lr > 0, 0 <= momentum < 1, "
                                    "weight_decay >= 0, 0 < gamma <= 1)")
        ms = self.milestones
        if any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in ms) or list(ms) != sorted(set(ms)):
            raise TrainingError(f"milestones must be increasing positive epoch numbers, got {list(ms)}")

    def unreached_milestones(self) -> tuple[int, ...]:
        """The milestones after the last epoch: the learning-rate decays the run never reaches."""
        return tuple(m for m in self.milestones if m > self.epochs)

    def with_overrides(self, **overrides: Any) -> "Schedule":
        """A copy with the given fields replaced; None values keep the default."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise TrainingError(f"unknown schedule fields {sorted(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_json(self) -> dict:
        return {**asdict(self), "milestones": list(self.milestones), "betas": list(self.betas)}

    def optimizer_for(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimiser this schedule names, over ``params``."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class StepResult(NamedTuple):
    """One mini-batch: the scalar ``loss`` to minimise and, optionally, ``logits`` (B, K) for the accuracy shown.

    When :func:`fit` trains several networks (``groups``), ``loss`` maps each group's name to the
    loss its optimiser minimises (the first group's is the one shown as ``train_loss``). A group
    that :func:`fit` updates more than once per batch (``updates``) needs ``recompute``: the same
    batch's losses computed again with the current weights.
    """

    loss: "torch.Tensor | dict[str, torch.Tensor]"
    logits: torch.Tensor | None = None
    recompute: "Callable[[], dict[str, torch.Tensor]] | None" = None


Step = Callable[[torch.Tensor, torch.Tensor, torch.Generator], StepResult]


@dataclass(frozen=True)
class Runtime:
    """Where and how the loop computes: device, bf16 autocast (None or ``"bf16"``), channels_last, progress bar.

    ``autocast`` and ``channels_last`` are :mod:`robench.device_options`' options: the step, and
    so the recipes' inner attacks inside it, runs under them (:attr:`options`).
    """

    device: torch.device = torch.device("cpu")
    autocast: str | None = None
    channels_last: bool = False
    progress: bool = True

    def __post_init__(self):
        if self.autocast not in TRAINING_AUTOCAST:
            raise TrainingError(f"autocast must be None or 'bf16', got {self.autocast!r}")

    @property
    def options(self) -> DeviceOptions:
        """The device options the step runs under (never compiled: training modules change every step)."""
        return DeviceOptions(autocast=self.autocast, channels_last=self.channels_last)


def fit(
    module: nn.Module,
    step: Step,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    schedule: Schedule,
    seed: int,
    resume_path: "str | Path",
    config: dict,
    augment: str = "none",
    evaluate: Callable[[], dict] | None = None,
    runtime: Runtime = Runtime(),
    groups: Mapping[str, nn.Module] | None = None,
    updates: Mapping[str, int] | None = None,
) -> list[dict]:
    """Train ``module``'s parameters on ``step``'s loss(es); returns the per-epoch history (robench).

    Args:
        module: what trains and what the resume file holds (its trainable parameters are optimised).
        groups: name -> sub-module of ``module`` trained by its own optimiser on the step's loss of
            that name, each loss differentiated with respect to its group's parameters only
            (default: one group, ``module``, and a single loss).
        updates: group name -> optimiser steps per batch (default 1), the extra ones on
            ``StepResult.recompute`` (DCGAN's and APE-GAN's generator is updated twice per batch).
        step: ``step(x_batch, y_batch, generator) -> StepResult``, called with ``module`` in train mode
            and under autocast when enabled; it may switch modes itself (e.g. attack in eval mode).
        x, y: training images (N, C, H, W) in [0, 1] and labels (N,) (or any per-example targets).
        schedule: optimiser and learning-rate schedule.
        seed: seeds the generator for shuffling, augmentation and the step's randomness, and the
            global RNG inside the run (which is restored afterwards): same seed, same weights on CPU.
        resume_path: the resume file, written atomically after every epoch and read on start.
        config: JSON description of everything that determines the weights except ``epochs``;
            a resume file written under a different config is refused.
        augment: one of ``augment.AUGMENTATIONS``, applied to each batch before ``step``.
        evaluate: called after every epoch with ``module`` in eval mode; its dict joins the history.
        runtime: device, autocast, channels_last, progress bar.
    """
    device = runtime.device
    resume_path = Path(resume_path)
    module.to(device)
    if runtime.channels_last:
        module.to(memory_format=torch.channels_last)
    optimizers = {}
    for name, part in (groups or {MAIN_GROUP: module}).items():
        params = [p for p in part.parameters() if p.requires_grad]
        if not params:
            raise TrainingError(f"{type(part).__name__} ({name}) has no trainable parameters")
        optimizers[name] = schedule.optimizer_for(params)
    updates = dict(updates or {})
    unknown = [name for name in updates if name not in optimizers]
    if unknown or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in updates.values()):
        raise TrainingError(f"updates must map trained groups ({list(optimizers)}) to integers >= 1, got {updates}")
    # MultiStepLR counts completed epochs from 0, so "from 1-based epoch m on" is its milestone m - 1.
    schedulers = {name: torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[m - 1 for m in schedule.milestones], gamma=schedule.gamma
    ) for name, optimizer in optimizers.items()}
    generator = torch.Generator(device=device).manual_seed(seed)
    x, y = x.to(device), y.to(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        history = _resume(resume_path, config, schedule, module, optimizers, schedulers, generator, device)
        for epoch in range(len(history) + 1, schedule.epochs + 1):
            began = time.perf_counter()
            record = _train_epoch(module, step, x, y, optimizers, generator, schedule, epoch, augment, runtime,
                                  updates)
            for scheduler in schedulers.values():
                scheduler.step()
            if evaluate is not None:
                module.eval()
                evaluated = time.perf_counter()
                record.update(evaluate())
                record["eval_seconds"] = round(time.perf_counter() - evaluated, 3)
            record["seconds"] = round(time.perf_counter() - began, 3)
            history.append(record)
            _save_resume(resume_path, config, history, module, optimizers, schedulers, generator, device)
            if runtime.progress:
                tqdm.write(_summary(record, schedule.epochs))
    module.eval()
    return history


def _losses(result: StepResult, optimizers: dict) -> dict[str, torch.Tensor]:
    """The step's loss per optimised group, checked against the groups."""
    losses = result.loss if isinstance(result.loss, dict) else {MAIN_GROUP: result.loss}
    if list(losses) != list(optimizers):
        raise TrainingError(f"the step returned losses for {list(losses)}, but the trained networks are "
                            f"{list(optimizers)}")
    return {name: loss.float() for name, loss in losses.items()}


def _update(losses: dict[str, torch.Tensor], optimizers: dict, only: bool = False) -> None:
    """One optimiser step per group, each on its own loss's gradient with respect to its own parameters.

    ``only``: these groups are a part of the trained networks (their gradient must not reach the others).
    """
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    if len(losses) == 1 and not only:
        next(iter(losses.values())).backward()
    else:
        for name, loss in losses.items():
            params = [p for group in optimizers[name].param_groups for p in group["params"]]
            torch.autograd.backward(loss, inputs=params, retain_graph=True)
    for optimizer in optimizers.values():
        optimizer.step()


def _train_epoch(module, step, x, y, optimizers, generator, schedule, epoch, augment, runtime, updates) -> dict:
    module.train()
    order = torch.randperm(len(x), generator=generator, device=x.device)
    # A last batch of one image is dropped: BatchNorm cannot normalise a single example in training.
    batches = [order[i : i + schedule.batch_size] for i in range(0, len(x), schedule.batch_size)]
    batches = [b for b in batches if len(b) > 1] or batches
    options = runtime.options
    loss_sums = {name: torch.zeros((), device=x.device) for name in optimizers}
    correct = torch.zeros((), device=x.device)
    seen = scored = 0
    bar = tqdm(batches, desc=f"epoch {epoch}/{schedule.epochs}", leave=False, disable=not runtime.progress)
    for index, batch in enumerate(bar):
        xb = apply_augmentation(x[batch], augment, generator)
        yb = y[batch]
        with options.autocast_context(x.device.type):
            result = step(options.layout(xb), yb, generator)
        losses = _losses(result, optimizers)
        for name, loss in losses.items():
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss {'' if name == MAIN_GROUP else f'of {name} '}became {loss.item()} at epoch {epoch}, "
                    f"batch {index + 1}; training diverged (lower the learning rate, now {_lr(optimizers):g})"
                )
        _update(losses, optimizers)
        for name, count in updates.items():
            for _ in range(count - 1):
                if result.recompute is None:
                    raise TrainingError(f"{name} is updated {count} times per batch, but the step gives no recompute")
                with options.autocast_context(x.device.type):
                    again = result.recompute()[name].float()
                _update({name: again}, {name: optimizers[name]}, only=True)
        for name, loss in losses.items():
            loss_sums[name] += loss.detach() * len(batch)
        seen += len(batch)
        if result.logits is not None:
            correct += (result.logits.detach().argmax(dim=1) == yb).sum()
            scored += len(batch)
        if runtime.progress:
            bar.set_postfix(loss=f"{next(iter(loss_sums.values())).item() / seen:.4f}",
                            acc=f"{correct.item() / scored:.3f}" if scored else "-")
    means = {name: total.item() / seen for name, total in loss_sums.items()}
    first, *others = means
    return {
        "epoch": epoch,
        "lr": _lr(optimizers),
        "train_loss": means[first],
        **{f"train_loss_{name}": means[name] for name in others},
        "train_acc": correct.item() / scored if scored else None,
    }


def _lr(optimizers: dict) -> float:
    return next(iter(optimizers.values())).param_groups[0]["lr"]


def _summary(record: dict, epochs: int) -> str:
    parts = [f"epoch {record['epoch']}/{epochs}", f"lr {record['lr']:g}", f"loss {record['train_loss']:.4f}"]
    parts += [f"{key} {value:.4f}" for key, value in record.items()
              if key not in ("epoch", "lr", "train_loss", "seconds", "eval_seconds") and isinstance(value, float)]
    return "  ".join(parts + [f"{record['seconds']:.1f} s"])


def _rng_states(generator: torch.Generator, device: torch.device) -> dict:
    states = {"generator": generator.get_state(), "cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _save_resume(path, config, history, module, optimizers, schedulers, generator, device) -> None:
    save_torch(
        {
            "format": RESUME_FORMAT,
            "config": config,
            "history": history,
            "module": module.state_dict(),
            "optimizers": {name: optimizer.state_dict() for name, optimizer in optimizers.items()},
            "schedulers": {name: scheduler.state_dict() for name, scheduler in schedulers.items()},
            "rng": _rng_states(generator, device),
        },
        path,
    )


def _resume(path: Path, config, schedule, module, optimizers, schedulers, generator, device) -> list[dict]:
    """Load the resume file into the run's objects and return its history; ``[]`` when there is none."""
    if not path.is_file():
        return []
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and what to do
        raise TrainingError(f"resume file {path} cannot be read ({err}); delete it to start over") from err
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise TrainingError(f"{path} is not a robench resume file (format {RESUME_FORMAT}); delete it or move it away")
    differences = _differences(state["config"], config)
    if differences:
        raise TrainingError(
            f"resume file {path} belongs to a different training run ({'; '.join(differences[:5])}); "
            "rerun with the same options to resume it, or delete it / choose another output to start over"
        )
    history = state["history"]
    if len(history) > schedule.epochs:
        raise TrainingError(
            f"resume file {path} already holds {len(history)} epochs, more than the {schedule.epochs} asked for; "
            f"ask for at least {len(history)} epochs, or delete it to start over"
        )
    module.load_state_dict(state["module"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][name])
        schedulers[name].load_state_dict(state["schedulers"][name])
    generator.set_state(state["rng"]["generator"].cpu())
    torch.set_rng_state(state["rng"]["cpu"].cpu())
    if "cuda" in state["rng"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
    return list(history)


def _differences(saved: dict, wanted: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} in the file, {b!r} now")
    return found
