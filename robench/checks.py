"""Sanity checks run on every cell; each raised flag is stored with the cell and shown in tables.

Seen in spirit in AutoAttack's ``checks.py``: an evaluation that looks suspicious says so
loudly instead of printing a clean-looking number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLAG_DOCS = {
    "undeclared-randomness": (
        "The defense returned different outputs for two identical calls while it declares "
        "stochastic = False. Results were scored with one draw and attacked without EOT, so the "
        "robust accuracy may be overstated. Declare stochastic = True (or seed the defense)."
    ),
    "nonfinite-gradient": (
        "The input gradient of the loss through the attacked model contains NaN or inf on the "
        "first batch. Gradient attacks are then meaningless; the defense likely needs a BPDA "
        "surrogate (differentiable = False) or a numerically stable implementation."
    ),
    "zero-gradient": (
        "More than half of the first batch has an all-zero input gradient through the attacked "
        "model: a sign of gradient masking (obfuscated gradients, Athalye et al. 2018). Robust "
        "accuracy from gradient attacks is not trustworthy; try BPDA or a gradient-free attack."
    ),
}

GRADIENT_KINDS = ("white-box", "transfer")


def run_checks(cell, resolver) -> list[str]:
    """Flags for one cell, computed on its first batch with a fixed seed."""
    from robench.runner import attack_view  # the runner imports this module

    examples = resolver.cell_examples(cell)
    x = examples.x[: min(cell.batch_size, 16)].to(resolver.device)
    y = examples.y[: len(x)].to(resolver.device)
    flags = []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(cell.seed)
        defense = resolver.defense(cell.defense)
        if not defense.stochastic and undeclared_randomness(defense, x):
            flags.append("undeclared-randomness")
        if resolver.attack(cell.attack).kind in GRADIENT_KINDS:
            flags += gradient_flags(attack_view(cell, resolver), x, y)
    return flags


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
