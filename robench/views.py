"""Settings as views (DESIGN §4): what the attack differentiates and what is scored, for each setting.

This is the only place that maps a cell's setting to modules; the runner, the per-cell checks
and the resolver's fit checks all ask here.
"""

from __future__ import annotations

import torch
from torch import nn

from robench.cell import Cell
from robench.spec import Spec
from robench.target import Ensemble, Pipeline, adaptive_view


def attacked_defense(cell: Cell) -> Spec | None:
    """The defense inside the attacked view (BPDA / EOT apply to it), or None when the attack sees a bare model."""
    if cell.setting == "adaptive":
        return cell.defense
    if cell.setting == "surrogate-defense":
        return cell.attack_defense
    return None


def restoring_defense(cell: Cell) -> Spec | None:
    """In the ``restored`` setting with ``restore_from``, the defense that restoring attack sees through."""
    return cell.defense if cell.setting == "restored" and cell.restore_from is not None else None


def attack_view(cell: Cell, resolver) -> nn.Module:
    """The module the attack differentiates, by setting (DESIGN §4)."""
    if cell.setting in ("transfer", "surrogate-defense"):
        sources = [resolver.model(s) for s in cell.sources]
        model = sources[0] if len(sources) == 1 else Ensemble(sources)
    else:
        model = resolver.model(cell.model)
    defense = attacked_defense(cell)
    if defense is None:
        return model
    return adaptive_view(model, resolver.defense(defense), eot_draws=cell.eot)


def attack_view_parts(cell: Cell, resolver) -> tuple:
    """What a cell's attack view is made of (setting, EOT draws, models, attacked defense): equal parts, equal views."""
    attacked = attacked_defense(cell)
    return (cell.setting, cell.eot, *map(resolver.model, (cell.model, *cell.sources)),
            None if attacked is None else resolver.defense(attacked))


def scored_view(cell: Cell, resolver) -> nn.Module:
    """The module whose predictions count: the defended pipeline, or the bare model in ``restored`` (DIR Eq. 9)."""
    model = resolver.model(cell.model)
    return model if cell.setting == "restored" else Pipeline(model, resolver.defense(cell.defense))


def restored_points(cell: Cell, resolver, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DIR Eq. 9's starting points: the defense's restoration ``g(x')``, ``x'`` from ``restore_from`` or ``x``."""
    defense = resolver.defense(cell.defense)
    if cell.restore_from is not None:
        pipeline = adaptive_view(resolver.model(cell.model), defense, eot_draws=cell.eot)
        x = resolver.attack(cell.restore_from)(pipeline, x, y, cell.threat)
    with torch.no_grad():
        return defense(x)
