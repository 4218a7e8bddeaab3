"""Benchmark grids: a YAML file (or command-line axes) expanded into cells.

A grid file holds axes (lists) and scalars; ``grids:`` may list several blocks that override
the top-level values, for tables whose parts use different settings::

    name: smoke
    dataset: cifar10
    n: 64
    models: [resnet18-standard]
    defenses: [none, jpeg, bit-depth]
    attacks: [fgsm, "pgd:steps=10"]
    settings: [oblivious, adaptive]
    norm: Linf
    eps: [8/255]
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from robench import registry
from robench.cell import Cell
from robench.spec import SpecError, parse_eps, parse_spec
from robench.threat import ThreatModel

AXES = ("models", "defenses", "attacks", "settings", "eps")
SCALARS = {
    "dataset": str, "split": str, "n": int, "sample_seed": (int, type(None)), "seed": int, "draws": int,
    "eot": int, "batch_size": int, "norm": str, "sources": list, "attack_defense": (str, type(None)),
    "restore_from": (str, type(None)),
}
META = ("name", "description", "grids", "paper")
DEFAULTS = {"settings": ["adaptive"], "split": "test", "n": 64, "sample_seed": None, "seed": 0, "draws": 10, "eot": 10,
            "batch_size": 64, "norm": "Linf", "sources": [], "attack_defense": None,
            "restore_from": None}


@dataclass(frozen=True)
class Benchmark:
    """A named grid and the cells it expands to."""

    name: str
    description: str
    cells: tuple[Cell, ...]


def load_benchmark(name_or_path: str, overrides: dict[str, Any] | None = None) -> Benchmark:
    """Load a registered benchmark by name, or a grid file by path, with scalar overrides (e.g. ``n``)."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = registry.benchmark_path(name_or_path)
    with open(path) as handle:
        try:
            data = yaml.safe_load(handle)
        except yaml.YAMLError as err:
            raise SpecError(f"grid file {path.name} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(f"grid file {path.name} must be a mapping of axes and values")
    name = data.get("name", path.stem)
    return Benchmark(name, data.get("description", ""), expand(data, overrides or {}, where=path.name))


def expand(data: dict, overrides: dict[str, Any], *, where: str = "grid") -> tuple[Cell, ...]:
    """Expand a grid mapping (with optional ``grids:`` blocks) into cells."""
    unknown = set(data) - set(AXES) - set(SCALARS) - set(META)
    if unknown:
        raise SpecError(f"{where}: unknown keys {sorted(unknown)}; allowed: {', '.join([*AXES, *SCALARS])}")
    base = {k: v for k, v in data.items() if k != "grids"}
    blocks = data.get("grids") or [{}]
    cells: list[Cell] = []
    for i, block in enumerate(blocks):
        merged = {**DEFAULTS, **base, **block, **{k: v for k, v in overrides.items() if v is not None}}
        cells += _expand_block(merged, where=f"{where}" + (f", grids[{i}]" if "grids" in data else ""))
    return tuple(dict.fromkeys(cells))


def _expand_block(block: dict, *, where: str) -> list[Cell]:
    missing = [axis for axis in ("dataset", *AXES) if not block.get(axis)]
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    for key, kinds in SCALARS.items():
        if key in block and not isinstance(block[key], kinds):
            raise SpecError(f"{where}: {key} = {block[key]!r} has the wrong type")
    axes = {axis: block[axis] if isinstance(block[axis], list) else [block[axis]] for axis in AXES}
    threats = [ThreatModel(block["norm"], parse_eps(str(e), norm=block["norm"])) for e in axes["eps"]]
    cells = []
    for model, defense, attack, setting, threat in itertools.product(
        axes["models"], axes["defenses"], axes["attacks"], axes["settings"], threats
    ):
        transfers = setting in ("transfer", "surrogate-defense")
        cells.append(
            Cell(
                dataset=parse_spec(block["dataset"]), split=block["split"], n=block["n"],
                sample_seed=block["sample_seed"], model=parse_spec(model), defense=parse_spec(defense),
                attack=parse_spec(attack), setting=setting, threat=threat, seed=block["seed"],
                draws=block["draws"], eot=block["eot"], batch_size=block["batch_size"],
                sources=tuple(parse_spec(s) for s in block["sources"]) if transfers else (),
                attack_defense=block["attack_defense"] if setting == "surrogate-defense" else None,
                restore_from=block["restore_from"] if setting == "restored" else None,
            )
        )
    return cells
