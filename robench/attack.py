"""The Attack base class: the public call owns the invariants, subclasses own the algorithm."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robench.threat import ThreatModel


class AttackNotApplicable(ValueError):
    """The attack cannot run under the requested threat model (e.g. an unsupported norm)."""


@dataclass(frozen=True)
class Passes:
    """Work in passes of single examples through the attacked pipeline: ``forward`` ones, ``backward`` ones."""

    forward: int = 0
    backward: int = 0

    def __add__(self, other: "Passes") -> "Passes":
        return Passes(self.forward + other.forward, self.backward + other.backward)

    def __mul__(self, times: int) -> "Passes":
        return Passes(self.forward * times, self.backward * times)


def gradient_steps(n: int, steps: int) -> Passes:
    """``steps`` forward+backward passes of ``n`` examples: one gradient step each."""
    return Passes(n * steps, n * steps)


class Attack:
    """An adversarial attack with keyword-only hyperparameters; the threat model is a call argument.

    The public call is final: it validates the inputs, seeds, switches the model to eval mode,
    runs the attack, then checks the attack's raw output against the threat model (a violation
    beyond float rounding raises :class:`~robench.threat.ThreatModelViolation` naming the attack)
    and projects only the rounding. Subclasses implement :meth:`run` and declare ``norms``
    (supported norms), ``kind`` (``white-box``, ``transfer`` or ``black-box``), ``version`` (bump
    when outputs change) and ``averages_draws`` (True when the attack does its own EOT over a
    stochastic defense's draws, so the runner hands it the plain pipeline instead of an EOT view).
    """

    norms: tuple[str, ...] = ("Linf", "L2")
    kind: str = "white-box"
    version: str = "1"
    averages_draws: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__call__" in vars(cls):
            raise TypeError(
                f"{cls.__qualname__} defines __call__, but Attack.__call__ owns the checks every attack must pass; "
                "implement run(model, x, y, threat) instead"
            )

    def __call__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        threat: ThreatModel,
        *,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Attack ``model`` on images ``x`` (B, C, H, W) in [0, 1] with labels ``y`` (B,); returns x_adv in ``threat``.

        Raises :class:`~robench.threat.ThreatModelViolation` when the attack's own output leaves
        ``threat`` by more than float rounding.
        """
        if threat.norm not in self.norms:
            raise AttackNotApplicable(
                f"{type(self).__name__} supports {', '.join(self.norms)}, not {threat.norm}"
            )
        lo, hi = threat.bounds
        if x.numel() and (x.min() < lo or x.max() > hi):
            raise ValueError(f"images must lie in {threat.bounds}; got [{x.min().item():.3g}, {x.max().item():.3g}]")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        if len(x) == 0:
            return x.clone()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            modes = {module: module.training for module in model.modules()}
            model.eval()
            try:
                x_adv = self.run(model, x.detach().clone(), y, threat)
            finally:
                for module, training in modes.items():
                    module.training = training
        x_adv = x_adv.detach()
        threat.check(x_adv, x, source=f"attack {type(self).__name__}")
        return threat.project(x_adv, x)  # moves no example further than rounding: the check passed

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        raise NotImplementedError

    def passes(self, n: int, eot: int = 1) -> Passes | None:
        """The cost model: passes one call on ``n`` examples spends (at most), each EOT draw a pass; None: undeclared.

        Counted on the module the attack is given: with ``eot`` draws, one forward of the EOT
        view is ``eot`` passes. ``robench run --dry-run`` plans a grid's cost with it.
        """
        return None

    def unsupported(self, setting: str, defense: nn.Module) -> str | None:
        """Why this attack cannot run in ``setting`` against ``defense`` (None when it can)."""
        return None
