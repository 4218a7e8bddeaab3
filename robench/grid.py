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

Grid files are untrusted input: at most :data:`MAX_GRID_BYTES` of UTF-8 YAML (safe tags only),
expanding to at most :data:`MAX_GRID_VALUES` values once aliases are followed (an alias bomb is
refused, not expanded) and to at most :data:`MAX_CELLS` cells.

A benchmark that reproduces a paper may also declare ``pending`` plugins and ``checkpoints``
(path -> how to produce it) whose absence makes a cell *missing* rather than an error
(:mod:`robench.missing`), and give blocks ``paper`` labels (:mod:`robench.labels`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from robench import registry
from robench.cell import Cell
from robench.destinations import check_benchmark_name
from robench.labels import Labeller
from robench.missing import Expected
from robench.spec import SpecError, brief, parse_eps, parse_spec
from robench.threat import ThreatModel

AXES = ("models", "defenses", "attacks", "settings", "eps")
SCALARS = {
    "dataset": str, "split": str, "n": int, "sample_seed": (int, type(None)), "seed": int, "draws": int,
    "eot": int, "batch_size": (int, str), "norm": str, "sources": list, "attack_defense": (str, type(None)),
    "restore_from": (str, type(None)), "cascade": bool,
}
META = ("name", "description", "grids", "paper", "pending", "checkpoints")
MAX_GRID_BYTES = 1_000_000
MAX_GRID_VALUES = 100_000
MAX_CELLS = 100_000
DEFAULTS = {"settings": ["adaptive"], "split": "test", "n": 64, "sample_seed": None, "seed": 0, "draws": 10, "eot": 10,
            "batch_size": 64, "norm": "Linf", "sources": [], "attack_defense": None,
            "restore_from": None, "cascade": False}


@dataclass(frozen=True)
class Benchmark:
    """A named grid, the cells it expands to, their paper labels, and what it declares may be missing."""

    name: str
    description: str
    cells: tuple[Cell, ...]
    labels: Mapping[Cell, tuple[dict, ...]] = field(default_factory=dict)
    expected: Expected = field(default_factory=Expected)

    def __post_init__(self):
        check_benchmark_name(self.name)


def adhoc_name(cells: "tuple[Cell, ...] | list[Cell]") -> str:
    """Name of an ad-hoc grid from its content: ``adhoc-<dataset>-<8 hex>``, the same for the same cells."""
    canonical = sorted(json.dumps(cell.to_json(), sort_keys=True) for cell in cells)
    digest = hashlib.sha256("\n".join(canonical).encode()).hexdigest()[:8]
    datasets = sorted({str(cell.dataset).split(":")[0] for cell in cells})
    return f"adhoc-{'-'.join(datasets)}-{digest}"


def load_benchmark(name_or_path: str, overrides: dict[str, Any] | None = None) -> Benchmark:
    """Load a registered benchmark by name, or a grid file by path, with scalar overrides (e.g. ``n``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        if not path.is_file():
            raise SpecError(f"grid file {name_or_path} not found (relative paths start at {Path.cwd()}); give the "
                            "path of a grid .yaml file or a registered benchmark name (`robench ls benchmarks`)")
    else:
        path = registry.benchmark_path(name_or_path)
    data = read_grid_file(path)
    name = check_benchmark_name(data.get("name", path.stem), where=f"grid file {path.name}: name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SpecError(f"grid file {path.name}: description must be text, got {brief(description)}")
    cells, labels = expand_labelled(data, overrides or {}, where=path.name)
    return Benchmark(name, description, cells, labels, Expected.from_grid(data, where=path.name))


def read_grid_file(path: Path) -> dict:
    """The mapping in a grid file, refused with a clear error when it is too big, not UTF-8 or not safe YAML."""
    if path.stat().st_size > MAX_GRID_BYTES:
        raise SpecError(f"grid file {path.name} is {path.stat().st_size:,} bytes; grid files hold at most "
                        f"{MAX_GRID_BYTES:,}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"grid file {path.name} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                        f"{err.start}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"grid file {path.name} is not valid (safe) YAML: {_one_line(err)}") from None
    except ValueError as err:  # from converting a scalar: an integer past 4300 digits, a date like 2001-13-45
        raise SpecError(f"grid file {path.name} holds a value that cannot be converted: {_one_line(err)}") from None
    except RecursionError:
        raise SpecError(f"grid file {path.name} nests lists or mappings too deeply to read") from None
    if not isinstance(data, dict):
        raise SpecError(f"grid file {path.name} must be a mapping of axes and values, not {type(data).__name__}")
    if _expanded_size(data, MAX_GRID_VALUES) > MAX_GRID_VALUES:
        raise SpecError(f"grid file {path.name} expands to more than {MAX_GRID_VALUES:,} values once its YAML "
                        "aliases (*name) are followed; a grid file is a few axes of a few values each")
    return data


def _one_line(err: Exception, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _expanded_size(data: object, limit: int) -> int:
    """How many values ``data`` holds, shared (aliased) parts counted each time they appear; stops past ``limit``."""
    count, stack = 0, [data]
    while stack and count <= limit:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return count


def expand(data: dict, overrides: dict[str, Any], *, where: str = "grid") -> tuple[Cell, ...]:
    """Expand a grid mapping (with optional ``grids:`` blocks) into cells."""
    return expand_labelled(data, overrides, where=where)[0]


def expand_labelled(
    data: dict, overrides: dict[str, Any], *, where: str = "grid"
) -> tuple[tuple[Cell, ...], dict[Cell, tuple[dict, ...]]]:
    """Expand a grid mapping into cells and their paper labels (dropped when an axis is overridden)."""
    unknown = set(data) - set(AXES) - set(SCALARS) - set(META)
    if unknown:
        raise SpecError(f"{where}: unknown keys {brief(sorted(map(str, unknown)), 200)}; "
                        f"allowed: {', '.join([*AXES, *SCALARS, *META])}")
    base = {k: v for k, v in data.items() if k != "grids"}
    blocks = data.get("grids") or [{}]
    if not isinstance(blocks, list):
        raise SpecError(f"{where}: grids must be a list of blocks (mappings), got {brief(blocks)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    labels: dict[Cell, list[dict]] = {}
    for i, block in enumerate(blocks):
        here = f"{where}" + (f", grids[{i}]" if "grids" in data else "")
        if not isinstance(block, dict) or set(block) - {*AXES, *SCALARS, "paper"}:
            raise SpecError(f"{here}: a block may set {', '.join([*AXES, *SCALARS, 'paper'])}; got {brief(block)}")
        merged = {**DEFAULTS, **base, **block, **given}
        if set(given) & set(AXES):
            merged["paper"] = None
        for cell, label in _expand_block(merged, where=here):
            found = labels.setdefault(cell, [])
            if label is not None and label not in found:
                found.append(label)
    return tuple(labels), {cell: tuple(found) for cell, found in labels.items() if found}


def _expand_block(block: dict, *, where: str) -> list[tuple[Cell, dict | None]]:
    missing = [axis for axis in ("dataset", *AXES) if not block.get(axis)]
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    for key, kinds in SCALARS.items():
        if key in block and not isinstance(block[key], kinds):
            raise SpecError(f"{where}: {key} = {brief(block[key])} has the wrong type")
    axes = {axis: block[axis] if isinstance(block[axis], list) else [block[axis]] for axis in AXES}
    for axis, values in axes.items():
        wrong = [v for v in values if not isinstance(v, str) and not (axis == "eps" and isinstance(v, (int, float)))]
        if wrong:
            raise SpecError(f"{where}: {axis} holds {brief(wrong[0])}; each entry is a spec string such as jpeg:quality=75")
    size = 1
    for values in axes.values():
        size *= len(values)
    if size > MAX_CELLS:
        raise SpecError(f"{where}: {' x '.join(str(len(v)) for v in axes.values())} = {size:,} cells; a grid holds "
                        f"at most {MAX_CELLS:,}")
    threats = [ThreatModel(block["norm"], parse_eps(str(e), norm=block["norm"])) for e in axes["eps"]]
    labeller = Labeller(block["paper"], axes, norm=block["norm"], where=where) if block.get("paper") else None
    cells = []
    for index in itertools.product(*(range(len(axes[axis])) for axis in AXES)):
        model, defense, attack, setting, _ = (axes[axis][i] for axis, i in zip(AXES, index))
        threat = threats[index[-1]]
        transfers = setting in ("transfer", "surrogate-defense")
        cells.append((
            Cell(
                dataset=parse_spec(block["dataset"]), split=block["split"], n=block["n"],
                sample_seed=block["sample_seed"], model=parse_spec(model), defense=parse_spec(defense),
                attack=parse_spec(attack), setting=setting, threat=threat, seed=block["seed"],
                draws=block["draws"], eot=block["eot"], batch_size=block["batch_size"],
                sources=tuple(parse_spec(s) for s in block["sources"]) if transfers else (),
                attack_defense=block["attack_defense"] if setting == "surrogate-defense" else None,
                restore_from=block["restore_from"] if setting == "restored" else None,
            ),
            labeller(dict(zip(AXES, index))) if labeller else None,
        ))
    if block["cascade"]:  # each attack runs after the ones listed before it, on what they left robust
        attacks = [parse_spec(a) for a in axes["attacks"]]
        cells = [(replace(cell, cascade=tuple(attacks[: attacks.index(cell.attack)])), label) for cell, label in cells]
    return cells
