"""Figures of a leaderboard: accuracy against the attack budget (eps or steps) and the worst case per defense.

The sweep figures follow RDP Fig. 4's layout: one panel per attack, one line per defense x setting,
the 95% interval as a band. Each figure is written as PNG and SVG. matplotlib comes with the
``plots`` extra; without it :func:`write_plots` writes nothing and returns :data:`PLOTS_NOTE`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from robench.pivot import worst_cases
from robench.spec import Spec, parse_eps, parse_spec

SWEEP_FILE = "eps-sweep.png"
STEPS_FILE = "steps-sweep.png"
WORST_FILE = "worst-case.png"
PLOTS_NOTE = "no plots: matplotlib is not installed (pip install 'robench[plots]' draws them)"
LINESTYLES = ("-", "--", ":", "-.")


def sweep_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's computed rows whose (model, setting, defense, attack) is measured at two budgets or more."""
    done = _done(frame)
    if done.empty:
        return done
    curve = ["model", "setting", "norm", "defense", "attack"]
    budgets = done.groupby(curve)["eps"].transform("nunique")
    return done[budgets >= 2].sort_values([*curve, "eps"])


def steps_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The computed rows whose attack, the same but for its ``steps``, is measured at two step counts or more."""
    done = _done(frame)
    if done.empty:
        return done
    specs = [parse_spec(a) for a in done["attack"]]
    done["steps"] = [s.options.get("steps") for s in specs]
    done["family"] = [str(Spec(s.name, tuple((k, v) for k, v in s.kwargs if k != "steps"))) for s in specs]
    done = done[done["steps"].notna()]
    curve = ["model", "setting", "threat", "defense", "family"]
    counts = done.groupby(curve)["steps"].transform("nunique")
    return done[counts >= 2].sort_values([*curve, "steps"])


def plots_note() -> str | None:
    """:data:`PLOTS_NOTE` when matplotlib (the ``plots`` extra) is missing, else None."""
    return None if importlib.util.find_spec("matplotlib") else PLOTS_NOTE


def write_plots(frame: pd.DataFrame, folder: "str | Path") -> tuple[list[Path], str | None]:
    """Every figure the leaderboard has data for, written into ``folder``; (paths, note when none can be drawn)."""
    if plots_note():
        return [], plots_note()
    folder = Path(folder)
    written = [write_eps_sweep(frame, folder / SWEEP_FILE), write_steps_sweep(frame, folder / STEPS_FILE),
               write_worst_case_bars(frame, folder / WORST_FILE)]
    return [p for p in written if p is not None], None


def write_eps_sweep(frame: pd.DataFrame, path: "str | Path") -> Path | None:
    """Plot robust accuracy (with its 95% band) against eps, one panel per attack, one line per defense x setting.

    Writes ``path`` (PNG) and the same figure as SVG beside it when the leaderboard has a sweep
    (:func:`sweep_rows`); returns the PNG's path, or None when there is no sweep.
    """
    rows = sweep_rows(frame)
    if rows.empty:
        return None
    rows = rows.assign(x=[e * (255 if n == "Linf" else 1) for e, n in zip(rows["eps"], rows["norm"])])
    unit = {"Linf": "Linf eps (x/255)"}
    return _curves(rows, ["model", "norm", "attack"], lambda key: unit.get(key[1], f"{key[1]} eps"), path)


def write_steps_sweep(frame: pd.DataFrame, path: "str | Path") -> Path | None:
    """Plot robust accuracy (with its 95% band) against attack steps, as :func:`write_eps_sweep` does against eps."""
    rows = steps_rows(frame)
    if rows.empty:
        return None
    rows = rows.assign(x=rows["steps"].astype(float), attack=rows["family"])
    return _curves(rows, ["model", "threat", "attack"], lambda key: "attack steps", path)


def write_worst_case_bars(frame: pd.DataFrame, path: "str | Path") -> Path | None:
    """Bar chart of each defense's worst-case robust accuracy with its 95% interval, one panel per model x threat."""
    worst = worst_cases(frame)
    if worst.empty:
        return None
    plt = _pyplot()
    panels = list(worst.groupby(["dataset", "model", "threat"], sort=True))
    height = max(2.2, 0.32 * max(len(p) for _, p in panels) + 1.2)
    figure, axes = plt.subplots(len(panels), 1, figsize=(7.5, height * len(panels)), squeeze=False)
    for axis, ((dataset, model, threat), panel) in zip(axes[:, 0], panels):
        panel = panel.sort_values("robust_acc")
        value = 100 * panel["robust_acc"].astype(float)
        low = (value - 100 * panel["robust_ci_low"]).clip(lower=0)  # rounding can make a zero width negative
        high = (100 * panel["robust_ci_high"] - value).clip(lower=0)
        axis.barh(panel["defense"], value, xerr=[low, high], capsize=3, color="#4c72b0")
        axis.set_xlim(0, 100)
        axis.set_xlabel("worst-case robust accuracy (%), 95% interval")
        axis.set_title(f"{model} on {dataset}, {threat}", fontsize=9)
        axis.tick_params(axis="y", labelsize=8)
        axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def _curves(rows: pd.DataFrame, panel_keys: list[str], xlabel, path) -> Path:
    plt = _pyplot()
    panels = list(rows.groupby(panel_keys, sort=True))
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.4 * lines), squeeze=False, sharey=True)
    defenses = sorted(rows["defense"].unique())
    settings = sorted(rows["setting"].unique())
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (key, panel) in zip(axes.flat, panels):
        for (defense, setting), curve in panel.groupby(["defense", "setting"], sort=True):
            colour = colours[defenses.index(defense) % len(colours)]
            style = LINESTYLES[settings.index(setting) % len(LINESTYLES)]
            axis.plot(curve["x"], 100 * curve["robust_acc"], marker="o", markersize=3, color=colour, linestyle=style,
                      label=f"{defense} ({setting})" if len(settings) > 1 else defense)
            axis.fill_between(curve["x"], 100 * curve["robust_ci_low"], 100 * curve["robust_ci_high"], color=colour,
                              alpha=0.15, linewidth=0)
        axis.set_title(f"{key[-1]} on {key[0]}", fontsize=9)
        axis.set_xlabel(xlabel(key))
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    for axis in axes[:, 0]:
        axis.set_ylabel("robust accuracy (%)")
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    handles, labels = {}, []
    for axis in axes.flat:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = sorted(handles)
    figure.tight_layout()
    figure.legend([handles[k] for k in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 0), fontsize=8,
                  frameon=False, ncol=min(3, len(labels)))
    return _save(figure, path)  # the legend below the panels: spec strings can be long


def _done(frame: pd.DataFrame) -> pd.DataFrame:
    done = frame[frame["status"] == "done"].copy()
    if done.empty:
        return done
    norm_eps = done["threat"].str.split(" ", n=1, expand=True)
    done["norm"] = norm_eps[0]
    done["eps"] = [parse_eps(eps, norm=norm) for norm, eps in zip(norm_eps[0], norm_eps[1])]
    return done


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    pyplot.rcParams["svg.hashsalt"] = "robench"  # SVG ids stay the same from one run to the next
    pyplot.rcParams["svg.fonttype"] = "none"  # SVG text stays text: smaller files, selectable labels
    return pyplot


def _save(figure, path: "str | Path") -> Path:
    from matplotlib import pyplot

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    figure.savefig(path.with_suffix(".svg"), bbox_inches="tight", metadata={"Date": None, "Creator": None})
    pyplot.close(figure)
    return path
