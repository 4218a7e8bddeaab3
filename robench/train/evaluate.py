"""Clean and robust accuracy of a classifier, measured exactly as ``robench run`` measures an undefended cell."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import torch
from torch import nn

from robench import registry
from robench.data import Examples
from robench.env import batch_seed
from robench.scoring import score_batch
from robench.spec import Spec, format_fraction, parse_spec
from robench.threat import ThreatModel


@dataclass(frozen=True)
class Evaluation:
    """What to measure after each epoch: ``n`` images of ``split`` (the first n), ``attack`` at ``threat``.

    The numbers equal ``robench run --dataset D --model M --defense none --attack ATTACK
    --eps EPS -n N --seed SEED --batch-size BATCH_SIZE`` on the same weights. ``n = 0`` measures nothing.
    """

    n: int = 1000
    split: str = "test"
    attack: Spec = parse_spec("pgd:steps=20")
    threat: ThreatModel = ThreatModel("Linf", 8 / 255)
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self):
        object.__setattr__(self, "attack", parse_spec(self.attack))
        for name, low in (("n", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"evaluation {name} must be an integer >= {low}, got {value!r}")

    def to_json(self) -> dict:
        return {"n": self.n, "split": self.split, "attack": str(self.attack), "threat": str(self.threat),
                "seed": self.seed, "batch_size": self.batch_size}

    def command(self, dataset: Spec, model: Spec, defense: Spec | None = None) -> str:
        """The ``robench run`` command that measures the same numbers (behind ``defense``: one draw, no EOT)."""
        dataset, model, attack = (shlex.quote(str(spec)) for spec in (dataset, model, self.attack))
        behind = "none" if defense is None else f"{shlex.quote(str(defense))} --eot 1 --draws 1"
        return (f"robench run --dataset {dataset} --model {model} --defense {behind} --attack {attack} "
                f"--norm {self.threat.norm} --eps {format_fraction(self.threat.eps)} -n {self.n} "
                f"--seed {self.seed} --batch-size {self.batch_size}")


def robust_accuracy(model: nn.Module, examples: Examples, evaluation: Evaluation, device: torch.device, *,
                    attacker: nn.Module | None = None) -> dict:
    """Clean accuracy and accuracy under ``evaluation.attack`` on ``examples`` (robench's runner, Madry et al. 2018).

    Batch by batch through :func:`robench.scoring.score_batch`, seeded as the runner seeds a
    cell, so the numbers equal ``evaluation.command``'s. ``attacker`` is the module the attack
    differentiates (default ``model``; e.g. the EOT view of a stochastic pipeline), ``model``
    the one scored; both are put in eval mode, and the caller's random state is left untouched.
    """
    attacker = model if attacker is None else attacker
    attack = registry.build("attacks", evaluation.attack)
    modes = {m: m.training for m in (*model.modules(), *attacker.modules())}
    model.eval()
    attacker.eval()
    clean_total = robust_total = 0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for batch, start in enumerate(range(0, len(examples), evaluation.batch_size)):
                torch.manual_seed(batch_seed(evaluation.seed, batch))
                x = examples.x[start : start + evaluation.batch_size].to(device)
                y = examples.y[start : start + evaluation.batch_size].to(device)
                score = score_batch(model, attacker, attack, x, y, evaluation.threat)
                clean_total += int(score.clean.sum())
                robust_total += int(score.robust.sum())
    finally:
        for m, training in modes.items():
            m.training = training
    n = len(examples)
    return {"clean_acc": clean_total / n, "robust_acc": robust_total / n}
