"""Accuracy against the attack budget: the eps-sweep figure of a leaderboard (RDP Fig. 4's layout)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robench.spec import parse_eps

SWEEP_FILE = "eps-sweep.png"


def sweep_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's computed rows whose (model, setting, defense, attack) is measured at two budgets or more."""
    done = frame[frame["status"] == "done"].copy()
    if done.empty:
        return done
    norm_eps = done["threat"].str.split(" ", n=1, expand=True)
    done["norm"] = norm_eps[0]
    done["eps"] = [parse_eps(eps, norm=norm) for norm, eps in zip(norm_eps[0], norm_eps[1])]
    curve = ["model", "setting", "norm", "defense", "attack"]
    budgets = done.groupby(curve)["eps"].transform("nunique")
    return done[budgets >= 2].sort_values([*curve, "eps"])


def write_eps_sweep(frame: pd.DataFrame, path: "str | Path") -> Path | None:
    """Plot robust accuracy (with its 95% interval) against eps, one panel per attack, one line per defense.

    Writes ``path`` (PNG) when the leaderboard has a sweep (:func:`sweep_rows`); returns None otherwise.
    """
    rows = sweep_rows(frame)
    if rows.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt

    panels = list(rows.groupby(["model", "setting", "norm", "attack"], sort=True))
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False, sharey=True)
    for axis, ((model, setting, norm, attack), panel) in zip(axes.flat, panels):
        scale = 255 if norm == "Linf" else 1
        for defense, curve in panel.groupby("defense", sort=True):
            x = curve["eps"] * scale
            axis.errorbar(x, 100 * curve["robust_acc"], yerr=[100 * (curve["robust_acc"] - curve["robust_ci_low"]),
                                                            100 * (curve["robust_ci_high"] - curve["robust_acc"])],
                          marker="o", capsize=3, label=defense)
        axis.set_title(f"{attack} ({setting}) on {model}", fontsize=9)
        axis.set_xlabel(f"{norm} eps" + (" (x/255)" if scale == 255 else ""))
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("robust accuracy (%)")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.tight_layout()
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=8, frameon=False)
    path = Path(path)
    figure.savefig(path, dpi=120, bbox_inches="tight")  # the legend below the panels, spec strings can be long
    plt.close(figure)
    return path
