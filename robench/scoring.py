"""Scoring one batch as robench measures robust accuracy: attack only what is classified right, verify, re-score.

Shared by the runner (every cell) and the training loop's per-epoch evaluation, so the two
measure the same numbers (Madry et al. 2018's protocol with AutoAttack's checks at the boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from robench.attack import Attack
from robench.threat import ThreatModel


@dataclass(frozen=True)
class BatchScore:
    """Outcomes of one batch: per-draw ``clean`` / ``robust`` correctness ``(draws, B)``, ``attacked`` ``(B,)``."""

    clean: torch.Tensor
    attacked: torch.Tensor
    robust: torch.Tensor
    adv_prediction: torch.Tensor
    distance: torch.Tensor


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Predicted classes of ``draws`` independent passes, shape ``(draws, B)``."""
    return torch.stack([model(x).argmax(dim=1) for _ in range(draws)])


def score_batch(
    scorer: nn.Module,
    attacker: nn.Module,
    attack: Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    draws: int = 1,
    only: torch.Tensor | None = None,
) -> BatchScore:
    """Classify ``x`` ``draws`` times, attack the examples right in every draw, check and re-score them.

    ``attacker`` is the module the attack differentiates, ``scorer`` the one whose predictions
    count. The caller seeds the global generator; every adversarial example must lie in ``threat``.
    ``only`` (B,) bool restricts the attack to some examples (a cascade's survivors); the others
    that are right in every draw are re-scored unattacked.
    """
    clean = predict(scorer, x, draws) == y
    attacked = clean.all(dim=0) if only is None else clean.all(dim=0) & only
    x_adv = x.clone()
    if attacked.any():
        x_adv[attacked] = attack(attacker, x[attacked], y[attacked], threat)
    threat.check(x_adv, x)
    adv_prediction = predict(scorer, x_adv, draws)
    robust = (adv_prediction == y) & clean.all(dim=0)
    return BatchScore(clean, attacked, robust, adv_prediction, threat.distance(x_adv, x))

