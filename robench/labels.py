"""Paper labels: which row and column of a paper's table a benchmark cell fills.

A grid block may carry a ``paper`` mapping; the labels of a cell are the block's own plus those
given for the cell's value on each axis (later axes add row labels and may set the columns)::

    paper:
      table: dir_table1_whitebox          # a paper CSV (file stem)
      row: {Dataset: CIFAR-10}            # row labels shared by the block
      defenses:                           # per axis value: a spec string, or a bare plugin name
        none: {row: {Defense: None}}
        dir: {row: {Defense: DIR(Our)}}
      attacks:
        "pgd:steps=20,step_size=2/255": {robust: PGD, clean: Natural}
        autoattack: {robust: AA}

``robust`` names the paper column robench's robust accuracy fills, ``clean`` the column its
clean accuracy fills. A cell with neither is not in the paper's table.
"""

from __future__ import annotations

from typing import Any, Mapping

from robench.spec import SpecError, brief, parse_eps, parse_spec

AXES = ("models", "defenses", "attacks", "settings", "eps")
COLUMNS = ("robust", "clean")
_SPEC_AXES = ("models", "defenses", "attacks")


class Labeller:
    """The labels of one grid block's cells, checked once when the block is read."""

    def __init__(self, paper: Any, axes: Mapping[str, list], *, norm: str, where: str):
        where = f"{where}: paper"
        if not isinstance(paper, Mapping):
            raise SpecError(f"{where} must be a mapping with table, row, {', '.join(COLUMNS)} and per-axis labels")
        unknown = set(paper) - {"table", "row", *COLUMNS, *AXES}
        if unknown:
            raise SpecError(f"{where} has unknown keys {brief(sorted(map(str, unknown)))}; allowed: table, row, {', '.join(COLUMNS)}, "
                            f"{', '.join(AXES)}")
        if not isinstance(paper.get("table"), str):
            raise SpecError(f"{where}.table must name a paper table (a CSV file stem)")
        shared = {k: paper[k] for k in ("row", *COLUMNS) if k in paper}
        self.base = {"table": paper["table"], **_entry(shared, where)}
        self.by_axis: dict[str, dict[int, dict]] = {}
        for axis in AXES:
            if axis not in paper:
                continue
            if not isinstance(paper[axis], Mapping):
                raise SpecError(f"{where}.{axis} must map values of {axis} to labels")
            matched: dict[int, dict] = {}
            for key, entry in paper[axis].items():
                hits = [i for i, value in enumerate(axes[axis]) if _matches(axis, key, value, norm)]
                if not hits:
                    raise SpecError(f"{where}.{axis} labels {brief(key)}, which is not in this block's {axis}: {brief(axes[axis], 200)}")
                for i in hits:
                    if i in matched:
                        raise SpecError(f"{where}.{axis}: {brief(axes[axis][i])} is labelled twice")
                    matched[i] = _entry(entry, f"{where}.{axis}[{brief(key)}]")
            self.by_axis[axis] = matched

    def __call__(self, index: Mapping[str, int]) -> dict | None:
        """Labels of the cell at these axis positions, or None if it fills no paper column."""
        labels = {"table": self.base["table"], "row": dict(self.base.get("row", {}))}
        labels.update({c: self.base[c] for c in COLUMNS if c in self.base})
        for axis, entries in self.by_axis.items():
            entry = entries.get(index[axis], {})
            labels["row"].update(entry.get("row", {}))
            labels.update({c: entry[c] for c in COLUMNS if c in entry})
        return labels if any(c in labels for c in COLUMNS) else None


def _entry(entry: Any, where: str) -> dict:
    if not isinstance(entry, Mapping):
        raise SpecError(f"{where} must be a mapping with some of row, {', '.join(COLUMNS)}")
    out: dict = {}
    for key, value in entry.items():
        if key == "row":
            if not isinstance(value, Mapping):
                raise SpecError(f"{where}.row must map paper column names to row labels")
            out["row"] = {str(k): str(v) for k, v in value.items()}
        elif key in COLUMNS:
            if not isinstance(value, str):
                raise SpecError(f"{where}.{key} must name a paper column, got {brief(value)}")
            out[key] = value
        else:
            raise SpecError(f"{where} has unknown key {brief(key)}; allowed: row, {', '.join(COLUMNS)}")
    return out


def _matches(axis: str, key: Any, value: Any, norm: str) -> bool:
    if axis == "eps":
        return parse_eps(str(key), norm=norm) == parse_eps(str(value), norm=norm)
    if axis not in _SPEC_AXES:
        return str(key) == str(value)
    wanted, given = parse_spec(str(key)), parse_spec(str(value))
    return wanted == given or (not wanted.kwargs and wanted.name == given.name)
