"""The leaderboard as papers and RobustBench print it: defenses x attacks, grouped by setting, worst case last.

Rows are defenses (with their clean accuracy), columns are the attacks of each setting, cells are
robust accuracy; the last column is the defense's worst case: within a setting, the per-example AND
over its attacks (the leaderboard's ``worst-case`` rows), and over settings the lowest of those.
Rows are sorted by it, most robust first (ties: higher clean accuracy first). A leaderboard with several datasets, models or threats
gets one pivot per combination, so a cell is never compared across budgets.
"""

from __future__ import annotations

import math
from typing import Callable

import pandas as pd

from robench.document import Item, Table, marks_of

WORST_CASE = "worst-case"
SPLIT = ("dataset", "model", "threat")
WORST_COLUMN = "worst case"


def worst_cases(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, model, threat, defense): the lowest per-setting worst case, with its interval and setting."""
    done = frame[frame["status"] == "done"]
    rows = []
    for key, group in done.groupby([*SPLIT, "defense"], sort=False):
        candidates = []
        for _, in_setting in group.groupby("setting", sort=True):
            worst = in_setting[in_setting["attack"] == WORST_CASE]
            candidates.append(worst if len(worst) else in_setting)
        pool = pd.concat(candidates)
        lowest = pool.loc[pool["robust_acc"].astype(float).idxmin()]
        rows.append({**dict(zip([*SPLIT, "defense"], key)), **{
            k: lowest[k] for k in ("setting", "attack", "robust_acc", "robust_ci_low", "robust_ci_high", "n")}})
    columns = [*SPLIT, "defense", "setting", "attack", "robust_acc", "robust_ci_low", "robust_ci_high", "n"]
    return pd.DataFrame(rows, columns=columns)


def pivot_tables(frame: pd.DataFrame, flags: tuple = (), cell_href: Callable[[str], str] | None = None) -> list[Table]:
    """One pivot :class:`Table` per (dataset, model, threat) of the leaderboard; ``flags`` from :func:`flag_notes`."""
    split = [k for k in SPLIT if frame[k].astype(str).nunique() > 1]
    worst = worst_cases(frame)
    tables = []
    groups = frame.groupby(split, sort=True) if split else [((), frame)]
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = ", ".join(str(k) for k in key)
        mine = worst
        for name, value in zip(split, key):
            mine = mine[mine[name].astype(str) == str(value)]
        tables.append(_pivot(part, mine, flags, cell_href, label, f"pivot-{len(tables) + 1}"))
    return tables


def _pivot(part: pd.DataFrame, worst: pd.DataFrame, flags, cell_href, label: str, name: str) -> Table:
    cells = part[part["attack"] != WORST_CASE]
    columns = list(dict.fromkeys(zip(cells["setting"], cells["attack"])))
    columns.sort(key=lambda c: c[0])  # stable: attacks keep the leaderboard's order within a setting
    found = {}
    for row in cells.itertuples(index=False):
        found.setdefault((row.defense, row.setting, row.attack), row)
    worst_by_defense = {row.defense: row for row in worst.itertuples(index=False)}
    rows = []
    for defense in dict.fromkeys(cells["defense"]):
        mine = [found.get((defense, s, a)) for s, a in columns]
        items = [Item(defense, sort=defense), _clean(r for r in mine if r is not None)]
        items += [_robust(r, flags, cell_href) for r in mine]
        items.append(_worst(worst_by_defense.get(defense)))
        rows.append(tuple(items))
    rows.sort(key=lambda r: (-r[-1].sort, -r[1].sort))  # most robust first; ties: higher clean accuracy first
    settings = list(dict.fromkeys(s for s, _ in columns))
    groups = (("", 2), *((s, sum(c[0] == s for c in columns)) for s in settings), ("", 1))
    names = ("defense", "clean %", *(a for _, a in columns), WORST_COLUMN)
    caption = "Robust accuracy (%) by attack, most robust defense first" + (f": {label}" if label else "")
    return Table(name, caption, names, tuple(rows), groups, frozenset(names[1:]))


def _clean(rows) -> Item:
    """The clean accuracy most of the row's cells share (a restored or stochastic cell may differ)."""
    values = [float(r.clean_acc) for r in rows if r.status == "done" and not _nan(r.clean_acc)]
    if not values:
        return Item("", sort=-1.0)
    shared = max(sorted(set(values), reverse=True), key=values.count)
    title = "clean accuracy of the defended model"
    if len(set(values)) > 1:
        title += f"; over this row's cells it ranges {_pct(min(values))} to {_pct(max(values))}"
    return Item(_pct(shared), title=title, sort=shared)


def _robust(row, flags, cell_href) -> Item:
    if row is None:
        return Item("", title="not in this benchmark", sort=-1.0)
    href = cell_href(row.key) if cell_href and isinstance(row.key, str) and row.key else ""
    if row.status != "done":
        reason = row.reason if isinstance(row.reason, str) and row.reason else row.status
        return Item(row.status, title=reason, sort=-1.0, href=href)
    names = [f for f in str(row.flags).split(";") if f]
    title = f"95% CI [{_pct(row.robust_ci_low)}, {_pct(row.robust_ci_high)}], n={row.n}"
    title += f"; flags: {', '.join(names)}" if names else ""
    return Item(_pct(row.robust_acc), title=title, sort=row.robust_acc, marks=marks_of(row.flags, flags), href=href)


def _worst(row) -> Item:
    if row is None:
        return Item("", sort=-1.0)
    if _nan(row.robust_acc):
        return Item("", sort=-1.0)
    title = (f"95% CI [{_pct(row.robust_ci_low)}, {_pct(row.robust_ci_high)}], n={row.n}; lowest over settings, "
             f"here {row.setting} ({'every attack' if row.attack == WORST_CASE else row.attack})")
    return Item(_pct(row.robust_acc), title=title, sort=row.robust_acc)


def _pct(value) -> str:
    return "" if _nan(value) else f"{100 * float(value):.1f}"


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


