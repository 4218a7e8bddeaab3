"""``robench.evaluate``: the benchmark from a script, with registered names or your own model and defense objects.

The call expands into the same cells as ``robench run`` with the same options, runs them with
the same runner into the same store, and returns the leaderboard rows. Registered names give
the same cell keys as the command line, so each serves the other's cache; objects are named by
a fingerprint of their code, attributes and weights (:mod:`robench.objects`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
from torch import nn

from robench.defense import Defense
from robench.destinations import check_benchmark_name
from robench.env import pick_device
from robench.errors import ConfigError
from robench.grid import adhoc_name, expand
from robench.objects import ModuleDefense, object_name
from robench.report import leaderboard
from robench.runner import run_grid
from robench.spec import Spec, SpecError
from robench.store import DEFAULT_RESULTS, Store, store_in


def evaluate(
    model: nn.Module | str,
    defense: nn.Module | str | None = None,
    *,
    attacks: str | Sequence[str],
    dataset: str,
    eps: float | str | Sequence[float | str],
    norm: str = "Linf",
    setting: str | Sequence[str] = "adaptive",
    sources: Sequence[nn.Module | str] | None = None,
    attack_defense: nn.Module | str | None = None,
    restore_from: str | None = None,
    n: int = 64,
    sample_seed: int | None = None,
    seed: int = 0,
    draws: int = 10,
    eot: int = 10,
    batch_size: int | str = 64,
    differentiable: bool | None = None,
    stochastic: bool | None = None,
    device: str = "auto",
    store: str | Path | Store | None = None,
    name: str | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Evaluate ``model`` behind ``defense`` against ``attacks`` and return the leaderboard rows (the CSV's columns).

    ``model`` (and each of ``sources``) is a classifier ``nn.Module`` taking images in [0, 1]
    (normalisation inside) or a model spec such as ``"resnet18-standard"``; ``defense`` (and
    ``attack_defense``) is a :class:`robench.Defense`, a plain ``nn.Module`` purifier, a spec
    such as ``"jpeg:quality=75"``, or None for no defense. A plain purifier is declared by
    ``differentiable`` (default True; False: attacks use BPDA through the identity) and
    ``stochastic`` (default False; True: EOT over ``eot`` draws when attacking, ``draws``
    re-scorings). ``attacks``, ``setting`` and ``eps`` take one value or a list; the other
    arguments mean what the ``robench run`` options of the same name mean. Objects are moved to
    the device and put in eval mode. Results go to ``store`` (default: the command line's
    store), under the benchmark ``name`` (default: ``adhoc-<dataset>-<hash of the cells>``);
    a cell already there is not recomputed. Bad arguments raise :class:`robench.SpecError` or
    :class:`robench.errors.ConfigError` before anything runs; a cell that fails becomes a row
    with status ``error`` and its ``reason``, and a warning.
    """
    parts = _Parts(differentiable=differentiable, stochastic=stochastic)
    arguments = {
        "dataset": dataset, "models": [parts.model(model, "model")], "defenses": [parts.defense(defense, "defense")],
        "attacks": _listed(attacks), "settings": _listed(setting), "eps": [str(e) for e in _listed(eps)],
        "norm": norm, "sources": [parts.model(s, "sources") for s in _listed(sources)],
        "attack_defense": None if attack_defense is None else parts.defense(attack_defense, "attack_defense"),
        "restore_from": None if restore_from is None else str(restore_from), "n": n, "sample_seed": sample_seed,
        "seed": seed, "draws": draws, "eot": eot, "batch_size": batch_size,
    }
    parts.check_declarations_used()
    cells = expand(arguments, {}, where="robench.evaluate")
    benchmark = check_benchmark_name(name) if name is not None else adhoc_name(cells)
    torch_device = pick_device(device)
    command = "robench.evaluate(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"
    with _opened(store) as opened:
        result = run_grid(list(cells), opened, benchmark=benchmark, device=torch_device, command=command,
                          progress=progress, objects=parts.objects, additive=True)
        frame = leaderboard(opened, benchmark)
    if result.failed:
        failures = "; ".join(f"{key[:12]}: {message}" for key, message in result.failed.items())
        warnings.warn(f"{len(result.failed)} of {len(cells)} cells failed: {failures}", RuntimeWarning, stacklevel=2)
    return frame


class _Parts:
    """Spec names for the arguments of one call, and the objects behind the names that are objects."""

    def __init__(self, *, differentiable: bool | None, stochastic: bool | None):
        self.declared = {k: v for k, v in (("differentiable", differentiable), ("stochastic", stochastic))
                         if v is not None}
        self.objects: dict[str, Any] = {}
        self.plain_purifiers = 0

    def model(self, value: Any, argument: str) -> str:
        if isinstance(value, nn.Module):
            return self._named(object_name(value), value)
        return _spec_text(value, argument, "a classifier nn.Module or a model spec like 'resnet18-standard'")

    def defense(self, value: Any, argument: str) -> str:
        if value is None:
            return "none"
        if isinstance(value, Defense):
            return self._named(object_name(value), value)
        if isinstance(value, nn.Module):
            self.plain_purifiers += 1
            wrapped = ModuleDefense(value, **self.declared)
            return self._named(object_name(value, wrapped), wrapped)
        return _spec_text(value, argument, "a robench.Defense, an nn.Module purifier or a defense spec like 'jpeg'")

    def check_declarations_used(self) -> None:
        if self.declared and not self.plain_purifiers:
            given = " and ".join(self.declared)
            raise ConfigError(
                f"{given} describe a plain nn.Module purifier, but no defense given is one; a robench.Defense or "
                "a registered defense declares its own attributes (see `robench ls defenses`)"
            )

    def _named(self, name: str, obj: Any) -> str:
        self.objects[name] = obj
        return name


def _spec_text(value: Any, argument: str, expected: str) -> str:
    if isinstance(value, (str, Spec)):
        return str(value)
    raise SpecError(f"{argument} must be {expected}; got a {type(value).__name__}")


def _listed(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@contextmanager
def _opened(store: Any) -> Iterator[Store]:
    if isinstance(store, Store):
        yield store
        return
    with Store(store if store is not None else store_in(DEFAULT_RESULTS)) as opened:
        yield opened
