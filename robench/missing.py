"""Missing cells: benchmark cells that name something a benchmark file declares may not exist yet.

A benchmark file that reproduces a paper lists every row of the paper's tables, including
baselines robench does not provide yet and checkpoints a user has not trained yet. It declares
them (``pending`` plugins, ``checkpoints`` with the command that produces each); a cell naming
one that is absent becomes a *missing* cell with its reason, stored and shown in every table
instead of being dropped. Nothing undeclared is ever missing: an unknown plugin name, a bad
option or a model/dataset mismatch still stops the grid before anything runs, and ad-hoc
command-line grids declare nothing, so they stay strict.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from robench import registry
from robench.cell import Cell
from robench.spec import Spec, SpecError, brief, parse_spec

KINDS = ("defenses", "attacks", "models", "datasets")


@dataclass(frozen=True)
class Expected:
    """What a benchmark declares may be absent: plugin names by kind, and checkpoint path -> how to make it."""

    pending: Mapping[str, frozenset[str]] = field(default_factory=dict)
    checkpoints: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_grid(cls, data: Mapping[str, Any], *, where: str) -> "Expected":
        """Read a grid file's ``pending:`` and ``checkpoints:`` entries, checking their shape."""
        pending = data.get("pending") or {}
        if not isinstance(pending, Mapping) or set(pending) - set(KINDS):
            raise SpecError(f"{where}: pending must map some of {', '.join(KINDS)} to lists of plugin names")
        for kind, names in pending.items():
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise SpecError(f"{where}: pending.{kind} must be a list of plugin names, got {brief(names)}")
        checkpoints = data.get("checkpoints") or {}
        if not isinstance(checkpoints, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in checkpoints.items()
        ):
            raise SpecError(f"{where}: checkpoints must map each checkpoint path to how to produce it")
        return cls({k: frozenset(v) for k, v in pending.items()}, dict(checkpoints))


def missing_reason(cell: Cell, expected: Expected) -> str | None:
    """Why a cell cannot run because a declared plugin or checkpoint is absent (None when it can)."""
    reasons = []
    for kind, spec in _specs(cell):
        if spec.name in expected.pending.get(kind, ()) and spec.name not in registry.names(kind):
            reasons.append(f"{kind[:-1]} {spec.name!r} is not registered")
        for path in _strings(spec):
            if path in expected.checkpoints and not Path(path).expanduser().is_file():
                reasons.append(f"checkpoint {path} not found: {expected.checkpoints[path]}")
    return "; ".join(dict.fromkeys(reasons)) or None


def split_missing(cells: Iterable[Cell], expected: Expected | None) -> tuple[list[Cell], dict[Cell, str]]:
    """Separate the cells that can be tried from the missing ones (cell -> reason)."""
    runnable, missing = [], {}
    for cell in cells:
        reason = missing_reason(cell, expected) if expected is not None else None
        if reason:
            missing[cell] = reason
        else:
            runnable.append(cell)
    return runnable, missing


def missing_key(cell: Cell) -> str:
    """A missing cell's key: the hash of its canonical JSON (nothing was built, so no provenance)."""
    return hashlib.sha256(json.dumps({"missing": cell.to_json()}, sort_keys=True).encode()).hexdigest()


def _specs(cell: Cell) -> Iterator[tuple[str, Spec]]:
    yield "datasets", cell.dataset
    yield "models", cell.model
    yield "defenses", cell.defense
    yield "attacks", cell.attack
    yield from (("models", s) for s in cell.sources)
    if cell.attack_defense is not None:
        yield "defenses", cell.attack_defense
    if getattr(cell, "restore_from", None) is not None:
        yield "attacks", cell.restore_from


def _strings(value: Any) -> Iterator[str]:
    """Every string option inside a spec, also inside nested specs (``compose:defenses=[...]``)."""
    if isinstance(value, Spec):
        for option in value.options.values():
            yield from _strings(option)
    elif isinstance(value, str):
        yield value
        if ":" in value:
            try:
                yield from _strings(parse_spec(value))
            except SpecError:
                pass
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
