"""Building the objects a cell names, once per spec, and checking they fit before anything runs."""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping

import torch
from torch import nn

import robench
from robench import registry
from robench.attack import Attack
from robench.cell import Cell
from robench.data import Examples
from robench.defense import Defense
from robench.errors import ConfigError
from robench.spec import Spec
from robench.views import attacked_defense


class Resolver:
    """Builds and caches datasets, models, defenses and attacks for cells on one device.

    ``objects`` maps names (:func:`robench.objects.object_name`) to in-memory models and
    defenses; a spec with such a name gets the object instead of a registered plugin.
    """

    def __init__(self, device: torch.device, objects: Mapping[str, nn.Module] | None = None):
        self.device = device
        self.objects = dict(objects or {})
        self.modified: dict[str, str] = {}  # in-memory objects a plugin changed (they cannot be rebuilt), and how
        self._cache: dict[tuple[str, Spec], nn.Module] = {}
        self._remembered: dict[tuple, object] = {}
        self.attack = lru_cache(maxsize=None)(self._attack)
        self.examples = lru_cache(maxsize=None)(self._examples)

    def model(self, spec: Spec) -> nn.Module:
        """The classifier of ``spec`` on the device in eval mode, built once."""
        return self._cached("models", spec, self._model)

    def defense(self, spec: Spec) -> Defense:
        """The defense of ``spec`` on the device in eval mode, built once."""
        return self._cached("defenses", spec, self._defense)

    def _cached(self, kind: str, spec: Spec, build) -> nn.Module:
        if (kind, spec) not in self._cache:
            self._cache[kind, spec] = build(spec)
        return self._cache[kind, spec]

    def remembered(self, key: tuple, compute):
        """``compute()``, once per ``key`` for this resolver (a key holding modules is identified by them)."""
        if key not in self._remembered:
            self._remembered[key] = compute()
        return self._remembered[key]

    def forget(self, kind: str, spec: Spec, why: str) -> None:
        """Drop a changed model or defense, and what was remembered of it: a plugin is rebuilt on next use, an in-memory object is refused."""
        module = self._cache.pop((kind, spec), None)
        self._remembered = {key: value for key, value in self._remembered.items() if module not in key}
        if str(spec) in self.objects:
            self.modified[str(spec)] = why

    def _model(self, spec: Spec) -> nn.Module:
        return self._built("models", spec).to(self.device).eval()

    def _defense(self, spec: Spec) -> Defense:
        defense = self._built("defenses", spec)
        if not isinstance(defense, Defense):
            raise ConfigError(
                f"defense {spec} is of type {type(defense).__name__}, not a robench.Defense; "
                "wrap a purifier module in robench.objects.ModuleDefense"
            )
        return defense.to(self.device).eval()

    def _built(self, kind: str, spec: Spec) -> nn.Module:
        if str(spec) in self.modified:
            raise ConfigError(f"{spec} was modified by an earlier cell and an in-memory object cannot be rebuilt; "
                              f"pass a fresh copy ({self.modified[str(spec)]})")
        found = self.objects.get(str(spec))
        return found if found is not None else registry.build(kind, spec)

    def _attack(self, spec: Spec) -> Attack:
        return registry.build("attacks", spec)

    def _examples(self, dataset: Spec, split: str, n: int, sample_seed: int | None) -> tuple[Examples, object]:
        data = registry.build("datasets", dataset)
        return data.load(split=split, n=n, seed=sample_seed), data

    def cell_examples(self, cell: Cell) -> Examples:
        return self.examples(cell.dataset, cell.split, cell.n, cell.sample_seed)[0]

    def check(self, cell: Cell) -> None:
        """Raise :class:`ConfigError` if the cell's parts do not fit together."""
        examples, data = self.examples(cell.dataset, cell.split, cell.n, cell.sample_seed)
        attacked = attacked_defense(cell) or cell.defense
        self._check_attack(cell.attack, cell.setting, attacked, cell.threat.norm)
        if cell.restore_from is not None:
            self._check_attack(cell.restore_from, "adaptive", cell.defense, cell.threat.norm)
        self.defense(cell.defense)
        if cell.attack_defense is not None:
            self.defense(cell.attack_defense)
        for spec in (cell.model, *cell.sources):
            model = self.model(spec)
            shape = tuple(getattr(model, "input_shape", data.image_shape))
            if shape != tuple(data.image_shape):
                raise ConfigError(
                    f"model {spec} takes inputs shaped {shape}, but {cell.dataset} images are {tuple(data.image_shape)}"
                )
            classes = getattr(model, "num_classes", data.num_classes)
            if classes != data.num_classes:
                raise ConfigError(f"model {spec} has {classes} classes, {cell.dataset} has {data.num_classes}")

    def _check_attack(self, spec: Spec, setting: str, defense: Spec, norm: str) -> None:
        attack = self.attack(spec)
        if norm not in attack.norms:
            raise ConfigError(f"attack {spec} supports {', '.join(attack.norms)}, not {norm}")
        reason = attack.unsupported(setting, self.defense(defense))
        if reason:
            raise ConfigError(f"attack {spec} cannot run here: {reason}")

    def provenance(self, cell: Cell) -> dict:
        """What besides the cell determines its numbers: versions, checkpoint hashes, data fingerprint."""
        defenses = [cell.defense] + ([cell.attack_defense] if cell.attack_defense else [])
        restore = {} if cell.restore_from is None else {"restore_attack_version": self.attack(cell.restore_from).version}
        examples = self.cell_examples(cell)
        return {
            **restore,
            "robench": robench.__version__,
            "attack_version": self.attack(cell.attack).version,
            "defense_versions": {str(s): self.defense(s).version for s in defenses},
            "checkpoints": {
                **{str(s): getattr(self.model(s), "checkpoints", {}) for s in (cell.model, *cell.sources)},
                **{str(s): self.defense(s).checkpoints for s in defenses},
            },
            "data": self.remembered(("data", id(examples)), examples.fingerprint),
        }
