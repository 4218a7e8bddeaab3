"""Sanity checks run on every cell; each raised flag is stored with the cell and shown in tables.

What each flag means is in :mod:`robench.flags`, beside the flags computed across cells.

Seen in spirit in AutoAttack's ``checks.py``: an evaluation that looks suspicious says so
loudly instead of printing a clean-looking number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robench.views import attack_view, attack_view_parts, attacked_defense

GRADIENT_KINDS = ("white-box", "transfer")
CHECKED = 8  # examples the checks look at: the first of the cell's first batch


def run_checks(cell, resolver) -> list[str]:
    """Flags for one cell, computed on the first ``CHECKED`` examples of its first batch with a fixed seed.

    Each check's answer depends only on the modules it runs, those examples and the seed, so the
    resolver remembers it: the cells of a grid that share them (other attacks, other budgets)
    reuse it instead of running the check again. A module the guard found changed is rebuilt,
    and so checked anew.
    """
    examples = resolver.cell_examples(cell)
    x = examples.x[: min(cell.batch_size, CHECKED)].to(resolver.device)
    y = examples.y[: len(x)].to(resolver.device)

    def once(name: str, modules: tuple, check):
        def seeded():
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(cell.seed)
                return check()

        return resolver.remembered((name, id(examples), len(x), cell.seed, *modules), seeded)

    flags = []
    defense, attacked = resolver.defense(cell.defense), attacked_defense(cell)
    if not defense.stochastic and once("randomness", (defense,), lambda: undeclared_randomness(defense, x)):
        flags.append("undeclared-randomness")
    if resolver.attack(cell.attack).kind in GRADIENT_KINDS:
        flags += once("gradient", attack_view_parts(cell, resolver),
                      lambda: gradient_flags(attack_view(cell, resolver), x, y))
    if attacked is not None:
        surrogate = resolver.defense(attacked)
        if once("surrogate", (surrogate,), lambda: surrogate_mismatch(surrogate, x)):
            flags.append("surrogate-mismatch")
    return flags


def outcome_flags(rows: list[dict], *, deterministic: bool) -> list[str]:
    """``impossible-outcomes`` when a stored row cannot happen: robust but not clean, or (scoring
    without randomness) an attacked example lost with no perturbation at all."""
    robust_not_clean = any(r["robust_correct"] > r["clean_correct"] for r in rows)
    lost_unperturbed = deterministic and any(
        r["attacked"] and not r["robust_correct"] and r["perturbation"] == 0 for r in rows
    )
    return ["impossible-outcomes"] if robust_not_clean or lost_unperturbed else []


SURROGATE_TOLERANCE = 0.1


@torch.no_grad()
def surrogate_mismatch(defense, x: torch.Tensor) -> bool:
    """True when a non-differentiable defense's surrogate is far (mean |diff| > 0.1) from its output."""
    if defense.differentiable:
        return False
    return (defense.surrogate(x) - defense(x)).abs().mean().item() > SURROGATE_TOLERANCE


@torch.no_grad()
def undeclared_randomness(defense, x: torch.Tensor) -> bool:
    """True when two identical calls of a defense give different outputs."""
    return not torch.equal(defense(x), defense(x))


def gradient_flags(model, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """``nonfinite-gradient`` / ``zero-gradient`` flags of the cross-entropy input gradient."""
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    if grad is None:
        return ["zero-gradient"]
    flags = []
    if not torch.isfinite(grad).all():
        flags.append("nonfinite-gradient")
    zero = (grad.flatten(1).abs().amax(dim=1) == 0).float().mean().item()
    if zero > 0.5:
        flags.append("zero-gradient")
    return flags
