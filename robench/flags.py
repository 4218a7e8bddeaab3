"""What each sanity flag means, and the flags that compare the cells of one table.

Per-cell flags are raised by :mod:`robench.checks` while a cell runs; the flags here are
computed when a table is made, from its stored summaries alone (no torch). Seen in spirit in
AutoAttack's ``flags_doc.md``: a suspicious evaluation says so loudly, in every table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robench.checks import CHECKED

if TYPE_CHECKING:
    import pandas as pd

FLAG_DOCS = {
    "cascaded": (
        "This attack ran in a cascade (a grid's cascade: true): it attacked only the examples that the "
        "attacks listed before it left robust, and counts the others as robust. Its own accuracy is "
        "therefore an upper bound on what it would leave alone; the worst case over the cascade is exact, "
        "as in AutoAttack, at a fraction of the work."
    ),
    "undeclared-randomness": (
        "The defense returned different outputs for two identical calls while it declares "
        "stochastic = False. Results were scored with one draw and attacked without EOT, so the "
        "robust accuracy may be overstated. Declare stochastic = True (or seed the defense)."
    ),
    "nonfinite-gradient": (
        "The input gradient of the loss through the attacked model contains NaN or inf on the "
        f"first {CHECKED} examples. Gradient attacks are then meaningless; the defense likely needs a BPDA "
        "surrogate (differentiable = False) or a numerically stable implementation."
    ),
    "surrogate-mismatch": (
        "The BPDA surrogate of a non-differentiable defense in the attacked view differs from the "
        f"real defense by more than 0.1 per pixel on average (in [0, 1] units) on the first {CHECKED} examples. "
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
    "impossible-outcomes": (
        "Some stored example rows cannot happen in a sound evaluation: an example robust but not "
        "clean, or (with scoring that has no randomness) an example classified correctly, attacked "
        "with zero perturbation, and then misclassified. The model or defense changed during the "
        "cell, or a plugin keeps hidden state between calls: the cell's numbers are not trustworthy."
    ),
    "zero-gradient": (
        f"More than half of the first {CHECKED} examples have an all-zero input gradient through the attacked "
        "model: a sign of gradient masking (obfuscated gradients, Athalye et al. 2018). Robust "
        "accuracy from gradient attacks is not trustworthy; try BPDA or a gradient-free attack."
    ),
}


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
