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
    "surrogate-mismatch": (
        "The BPDA surrogate of a non-differentiable defense in the attacked view differs from the "
        "real defense by more than 0.1 per pixel on average (in [0, 1] units) on the first batch. "
        "Gradients of a surrogate that far from the defense guide the attack poorly: the adaptive "
        "accuracy is then an upper bound; a closer surrogate may break the defense further."
    ),
    "adaptive-weaker-than-oblivious": (
        "An oblivious attack (on the bare model) left lower accuracy than the adaptive attack on the "
        "defended pipeline, with the same attack and examples. A correct adaptive attack sees more, "
        "so it should do at least as well: the adaptive attack is likely misled (masked gradients, "
        "a poor BPDA surrogate, too few EOT draws)."
    ),
    "adaptive-weaker-than-transfer": (
        "A transfer attack from another model left lower accuracy than every adaptive attack on the "
        "same examples: a black-box adversary did better than the white-box one, a classic sign of "
        "gradient masking (Athalye et al. 2018)."
    ),
    "accuracy-rises-with-eps": (
        "Robust accuracy is higher at this eps than at a smaller eps with the same attack and "
        "examples (by more than 2 examples). A larger budget can only help the attacker, so the "
        "attack is not converging or the defense masks gradients."
    ),
    "accuracy-rises-with-steps": (
        "Robust accuracy is higher with more attack steps than with fewer, all else equal (by more "
        "than 2 examples): the attack is not converging."
    ),
    "unbounded-attack-fails": (
        "At a budget large enough to change any image completely (Linf eps >= 0.5 or L2 eps >= 16) "
        "more than 5% of examples remain correctly classified. An attack that cannot break a model "
        "with an unlimited budget is broken or blocked by obfuscated gradients."
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
        attacked = {"adaptive": cell.defense, "surrogate-defense": cell.attack_defense}.get(cell.setting)
        if attacked is not None and surrogate_mismatch(resolver.defense(attacked), x):
            flags.append("surrogate-mismatch")
    return flags


SURROGATE_TOLERANCE = 0.1


@torch.no_grad()
def surrogate_mismatch(defense, x: torch.Tensor) -> bool:
    """True when a non-differentiable defense's surrogate is far (mean |diff| > 0.1) from its output."""
    if defense.differentiable:
        return False
    return (defense.surrogate(x) - defense(x)).abs().mean().item() > SURROGATE_TOLERANCE


def derived_flags(cells: "pd.DataFrame") -> dict[int, list[str]]:
    """Flags that compare cells of one table (settings, eps and steps sweeps, huge budgets), by row index.

    ``cells`` has one row per finished cell with the leaderboard's columns plus ``norm``, ``eps``,
    ``attack_name``, ``steps`` and ``robust_correct``.
    """
    flags: dict[int, list[str]] = {}
    same_examples = ["dataset", "split", "n", "sample_seed", "model", "defense", "seed", "draws"]
    for _, group in cells.groupby(same_examples + ["norm", "eps"], dropna=False):
        _compare_settings(group, flags)
    for _, group in cells.groupby(same_examples + ["norm", "setting", "sources", "attack"], dropna=False):
        _rising(group, "eps", "accuracy-rises-with-eps", flags)
    for _, group in cells.groupby(same_examples + ["norm", "eps", "setting", "sources", "attack_family"],
                                  dropna=False):
        _rising(group, "steps", "accuracy-rises-with-steps", flags)
    huge = ((cells["norm"] == "Linf") & (cells["eps"] >= 0.5)) | ((cells["norm"] == "L2") & (cells["eps"] >= 16))
    for index in cells.index[huge & (cells["robust_acc"] > 0.05)]:
        flags.setdefault(index, []).append("unbounded-attack-fails")
    return flags


def _compare_settings(group, flags) -> None:
    adaptive = group[group["setting"] == "adaptive"]
    if adaptive.empty:
        return
    for _, row in group[group["setting"] == "oblivious"].iterrows():
        same = adaptive[adaptive["attack"] == row["attack"]]
        for index in same.index[same["robust_correct"] > row["robust_correct"]]:
            flags.setdefault(index, []).append("adaptive-weaker-than-oblivious")
    transfer = group[group["setting"] == "transfer"]
    if not transfer.empty and adaptive["robust_correct"].min() > transfer["robust_correct"].min():
        for index in adaptive.index:
            flags.setdefault(index, []).append("adaptive-weaker-than-transfer")


def _rising(group, axis: str, flag: str, flags) -> None:
    ordered = group.dropna(subset=[axis]).sort_values(axis)
    best_so_far = None
    for index, row in ordered.iterrows():
        if best_so_far is not None and row["robust_correct"] > best_so_far + 2:
            flags.setdefault(index, []).append(flag)
        best_so_far = row["robust_correct"] if best_so_far is None else min(best_so_far, row["robust_correct"])


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
