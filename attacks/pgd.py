"""PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)."""

import torch
import torchattacks
from torch import nn

from robench.attack import Attack
from robench.threat import ThreatModel


class PGD(Attack):
    """Projected gradient ascent on the cross-entropy, through torchattacks.PGD (Linf) / PGDL2 (L2).

    Args:
        steps: iterations (DIR evaluates with 20 and trains with 5; RDP Table 4 uses 10).
        step_size: per-step size; None means 2/255 for Linf (DIR, torchattacks) and eps/5 for L2
            (torchattacks' PGDL2 ratio).
        random_start: start uniformly in the eps-ball (Madry et al.; torchattacks' default).
        restarts: independent runs; an example counts as broken by the first run that breaks it.
        targeted: descend the cross-entropy of a target label drawn uniformly among the wrong
            classes (Xie et al. 2019a, RDP Table 4); robustness is still scored on the true label.
    """

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        targeted: bool = False,
    ):
        for name, value in (("steps", steps), ("restarts", restarts)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if step_size is not None and not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size!r}")
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.restarts = restarts
        self.targeted = targeted

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        attack = self._torchattack(model, threat)
        goal = self._targets(model, x, y) if self.targeted else y
        best = x.clone()
        pending = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            if self.targeted:
                attack.set_mode_targeted_by_function(lambda inputs, labels, g=goal[pending]: g, quiet=True)
            x_adv = attack(x[pending], y[pending])
            index = pending.nonzero().flatten()
            best[index] = x_adv
            if self.restarts == 1:
                break
            with torch.no_grad():
                prediction = model(x_adv).argmax(dim=1)
            done = prediction == goal[index] if self.targeted else prediction != y[index]
            pending[index[done]] = False
            if not pending.any():
                break
        return best

    @staticmethod
    def _targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Target labels drawn uniformly among the classes other than ``y``."""
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        return (y + torch.randint(1, classes, y.shape, device=y.device)) % classes

    def _torchattack(self, model: nn.Module, threat: ThreatModel) -> torchattacks.attack.Attack:
        if threat.norm == "Linf":
            alpha = 2 / 255 if self.step_size is None else self.step_size
            return torchattacks.PGD(model, eps=threat.eps, alpha=alpha, steps=self.steps,
                                    random_start=self.random_start)
        alpha = threat.eps / 5 if self.step_size is None else self.step_size
        return torchattacks.PGDL2(model, eps=threat.eps, alpha=alpha, steps=self.steps,
                                  random_start=self.random_start)
