"""The layering of DESIGN §1, checked on the source: no import cycles, and plugins and training never use the runner."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"robench": ROOT / "robench", "robench.defenses": ROOT / "defenses", "robench.attacks": ROOT / "attacks"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every robench module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{alias.name}" for alias in node.names} & set(modules)
            targets |= submodules or {base}
    return {_owner(t, modules) for t in targets if t.split(".")[0] == "robench"} - {name, None}


def _owner(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_real_imports():
    graph = _graph()
    assert "robench.scoring" in graph["robench.compute"] and "robench.compute" in graph["robench.runner"]
    assert "robench.threat" in graph["robench.attack"]
    assert "robench.defense" in graph["robench.defenses.jpeg"]


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("prefix", ["robench.defenses", "robench.attacks", "robench.train", "robench.models"])
def test_plugins_and_training_never_import_the_runner(prefix):
    offenders = {name: sorted(deps & {"robench.runner", "robench.cli"})
                 for name, deps in _graph().items() if name.startswith(prefix)}
    assert {name: deps for name, deps in offenders.items() if deps} == {}


def test_every_package_folder_is_listed_for_installation():
    """A package missing from setup.cfg works in an editable install and vanishes from a wheel."""
    import configparser

    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    folders = {"robench.benchmarks": ROOT / "benchmarks", **PACKAGES}
    found = {".".join([package, *init.parent.relative_to(folder).parts])
             for package, folder in folders.items() for init in folder.rglob("__init__.py")}
    assert found - listed == set(), "add these packages to setup.cfg's [options] packages"
