"""Plugin registries over entry-point groups: lazy, strict about collisions, helpful on typos.

Entry points are the single source of truth (DESIGN §3): robench's own plugins are declared
in its ``setup.cfg`` exactly like a third party's. Names are listed without importing;
a plugin is imported on first use and checked against its group's base class.
``ROBENCH_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only the plugins of robench's own distribution.
"""

from __future__ import annotations

import difflib
import inspect
import os
import typing
from dataclasses import dataclass
from functools import lru_cache
from importlib import import_module, metadata, resources
from pathlib import Path
from typing import Any

from robench.options import check_options
from robench.spec import Spec, brief, parse_spec

GROUPS = {
    "defenses": "robench.defenses",
    "attacks": "robench.attacks",
    "models": "robench.models",
    "datasets": "robench.datasets",
    "benchmarks": "robench.benchmarks",
}
OWN_DISTRIBUTION = "robench"
AUTOLOAD_ENV = "ROBENCH_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(LookupError):
    """An unknown, colliding or broken plugin; the message says what to do."""


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin: its name, entry-point value and providing distribution."""

    kind: str
    name: str
    value: str
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        return f"{self.distribution} {self.version}"


@lru_cache(maxsize=None)
def _discover(kind: str, own_only: bool) -> tuple[dict[str, PluginInfo], dict[str, tuple[PluginInfo, ...]]]:
    if kind not in GROUPS:
        raise PluginError(f"unknown plugin kind {kind!r}; choose one of {', '.join(GROUPS)}")
    found: dict[str, list[PluginInfo]] = {}
    seen: set[tuple[str, str, str]] = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or "?"
        if own_only and _normalise(dist_name) != OWN_DISTRIBUTION:
            continue
        for ep in dist.entry_points:
            if ep.group != GROUPS[kind]:
                continue
            ident = (_normalise(dist_name), ep.name, ep.value)
            if ident in seen:  # the same distribution found twice on sys.path
                continue
            seen.add(ident)
            info = PluginInfo(kind, ep.name, ep.value, dist_name, dist.version or "?")
            found.setdefault(ep.name, []).append(info)
    plugins = {name: infos[0] for name, infos in found.items() if len(infos) == 1}
    collisions = {name: tuple(infos) for name, infos in found.items() if len(infos) > 1}
    return plugins, collisions


def _own_only() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _normalise(dist_name: str) -> str:
    return dist_name.lower().replace("_", "-")


def names(kind: str) -> list[str]:
    """Registered plugin names of one kind, sorted, without importing any of them."""
    plugins, collisions = _discover(kind, _own_only())
    return sorted([*plugins, *collisions])


def info(kind: str, name: str) -> PluginInfo:
    """The entry-point record of one plugin; raises on unknown or colliding names."""
    plugins, collisions = _discover(kind, _own_only())
    if name in collisions:
        providers = " and ".join(f"{p.provider} ({p.value})" for p in collisions[name])
        raise PluginError(
            f"{kind[:-1]} name {name!r} is registered twice, by {providers}; uninstall one of them"
        )
    if name not in plugins:
        close = difflib.get_close_matches(name, list(plugins), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise PluginError(
            f"unknown {kind[:-1]} {brief(name)}{hint} (`robench ls {kind}` lists all {len(plugins)})"
        )
    return plugins[name]


@lru_cache(maxsize=None)
def load(kind: str, name: str) -> Any:
    """Import and return the object behind a plugin name, checked against its base class."""
    if kind == "benchmarks":
        return benchmark_path(name)
    record = info(kind, name)
    module_name, _, attr = record.value.partition(":")
    try:
        obj = import_module(module_name.strip())
        for part in attr.strip().split(".") if attr.strip() else []:
            obj = getattr(obj, part)
    except Exception as err:  # a broken third-party plugin must not hide which one broke
        raise PluginError(f"{kind[:-1]} {name!r} from {record.provider} failed to load: {err!r}") from err
    _check_base(kind, name, obj)
    return obj


def _check_base(kind: str, name: str, obj: Any) -> None:
    from robench.attack import Attack
    from robench.defense import Defense

    base = {"defenses": Defense, "attacks": Attack}.get(kind)
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise PluginError(f"{kind[:-1]} {name!r} is {obj!r}, not a subclass of {base.__module__}.{base.__name__}")
    if base is None and not callable(obj):
        raise PluginError(f"{kind[:-1]} {name!r} is {obj!r}, which is not callable")


def build(kind: str, spec: "str | Spec") -> Any:
    """Construct the plugin a spec names, passing its keyword arguments."""
    spec = parse_spec(spec)
    factory = load(kind, spec.name)
    _check_options(kind, spec, factory)
    try:
        return factory(**spec.options)
    except TypeError as err:
        raise PluginError(f"cannot build {kind[:-1]} {brief(str(spec))}: {err}") from err


def options_of(factory: Any) -> dict[str, inspect.Parameter] | None:
    """The keyword options a plugin's class or factory accepts (None: unknown, so any).

    ``**kwargs`` of a class's ``__init__`` are taken as passed on to the next ``__init__`` of its
    MRO, and those of a factory function to the class it is annotated to return.
    """
    if isinstance(factory, type):
        return _class_options(factory)
    parameters = _parameters(factory)
    if parameters is None:
        return None
    named = _named(parameters)
    if all(p.kind is not p.VAR_KEYWORD for p in parameters):
        return named
    returned = returned_class(factory)
    forwarded = options_of(returned) if returned is not None else None
    return None if forwarded is None else {**forwarded, **named}


def _class_options(cls: type) -> dict[str, inspect.Parameter] | None:
    named: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return named
        parameters = _parameters(init)
        if parameters is None:
            return None
        named = {**_named(parameters[1:]), **named}  # parameters[0] is self; a subclass's default wins
        if all(p.kind is not p.VAR_KEYWORD for p in parameters):
            return named
    return named


def _parameters(function: Any) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # a builtin or C-extension callable without a signature
        return None


def _named(parameters: list[inspect.Parameter]) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def returned_class(factory: Any) -> type | None:
    """The class a factory function is annotated to return (None for classes, or when not annotated)."""
    if not inspect.isfunction(factory):
        return None
    try:
        returned = typing.get_type_hints(factory).get("return")
    except Exception:  # an annotation that does not resolve: the options cannot be known
        return None
    return returned if isinstance(returned, type) else None


def _check_options(kind: str, spec: Spec, factory: Any) -> None:
    accepted = options_of(factory)
    unknown = sorted(set(spec.options) - set(accepted)) if accepted is not None else []
    if not unknown:
        check_options(f"{kind[:-1]} {spec.name}", spec.options, accepted or {})
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(accepted), n=1, cutoff=0.5)
        hints.append(brief(key) + (f" (did you mean {close[0]!r}?)" if close else ""))
    valid = ", ".join(accepted) or "none"
    raise PluginError(
        f"cannot build {kind[:-1]} {brief(str(spec))}: {spec.name} has no option {', '.join(hints)}; "
        f"its options: {valid} (`robench ls {kind} {spec.name}` documents them)"
    )


def benchmark_path(name: str) -> Path:
    """The grid file a benchmark entry point (``package:relative/path.yaml``) points to."""
    record = info("benchmarks", name)
    package, _, relative = record.value.partition(":")
    if not relative:
        raise PluginError(f"benchmark {name!r} from {record.provider}: {record.value!r} is not 'package:path'")
    path = resources.files(package.strip()).joinpath(relative.strip())
    if not path.is_file():
        raise PluginError(f"benchmark {name!r} from {record.provider}: file {relative!r} not found in {package}")
    return Path(str(path))
