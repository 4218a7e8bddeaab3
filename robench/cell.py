"""Cells: one frozen evaluation (dataset x model x defense x attack x setting x threat), and its key."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from robench.spec import Spec, SpecError, brief, parse_spec
from robench.threat import ThreatModel

SETTINGS = ("adaptive", "oblivious", "transfer", "surrogate-defense", "restored")
# Documented upper bounds (README, Reliability): far above any paper's grid, low enough that a typo
# fails at once instead of allocating without end.
LIMITS = {"n": 10_000_000, "draws": 10_000, "eot": 10_000, "batch_size": 65_536}
SEED_LIMIT = 2**63  # seeds are int64 for torch and numpy
AUTO_BATCH = "auto"  # batch_size chosen by the runner for the device (robench.batch_size)


@dataclass(frozen=True)
class Cell:
    """Everything that determines one evaluation's numbers (DESIGN §5).

    Settings are views the runner builds (DESIGN §4): ``adaptive`` attacks the defended
    pipeline (BPDA / EOT as the defense declares); ``oblivious`` attacks the bare model;
    ``transfer`` attacks the ``sources`` (an ensemble averages logits); ``surrogate-defense``
    attacks the ``sources`` behind ``attack_defense`` with BPDA. All score the defended model,
    except ``restored`` (DIR Eq. 9): its points are the defense's restorations ``g(x')`` of
    ``x'`` (the ``restore_from`` attack on the pipeline, or the natural image when None), and the
    attack and the scoring see the bare model, inside the threat model around ``g(x')``.
    ``cascade`` names the attacks run before this one on the same examples (a grid's
    ``cascade: true``): this attack then attacks only the examples still robust after them, and
    counts the others as robust (its accuracy is an upper bound; the worst case stays exact).
    """

    dataset: Spec
    model: Spec
    defense: Spec
    attack: Spec
    threat: ThreatModel
    setting: str = "adaptive"
    n: int = 64
    split: str = "test"
    sample_seed: int | None = None
    seed: int = 0
    draws: int = 1
    eot: int = 1
    batch_size: int | str = 64  # or AUTO_BATCH until the runner chooses it
    sources: tuple[Spec, ...] = field(default=())
    attack_defense: Spec | None = None
    restore_from: Spec | None = None
    cascade: tuple[Spec, ...] = field(default=())

    def __post_init__(self):
        for name in ("dataset", "model", "defense", "attack"):
            object.__setattr__(self, name, parse_spec(getattr(self, name)))
        object.__setattr__(self, "sources", tuple(parse_spec(s) for s in self.sources))
        object.__setattr__(self, "cascade", tuple(parse_spec(s) for s in self.cascade))
        if self.attack in self.cascade:
            raise SpecError(f"attack {self.attack} cannot come before itself in its cascade")
        if self.attack_defense is not None:
            object.__setattr__(self, "attack_defense", parse_spec(self.attack_defense))
        if self.restore_from is not None:
            object.__setattr__(self, "restore_from", parse_spec(self.restore_from))
        if self.setting not in SETTINGS:
            raise SpecError(f"unknown setting {brief(self.setting)}; choose one of {', '.join(SETTINGS)}")
        if self.setting in ("transfer", "surrogate-defense") and not self.sources:
            raise SpecError(f"setting {brief(self.setting)} needs at least one source model")
        if self.setting not in ("transfer", "surrogate-defense") and self.sources:
            raise SpecError(f"setting {brief(self.setting)} takes no source models")
        if (self.setting == "surrogate-defense") != (self.attack_defense is not None):
            raise SpecError("an attacker-side defense is given exactly for the 'surrogate-defense' setting")
        if self.restore_from is not None and self.setting != "restored":
            raise SpecError(f"restore_from belongs to the 'restored' setting, not {brief(self.setting)}")
        for name, most in LIMITS.items():
            value = getattr(self, name)
            if name == "batch_size" and value == AUTO_BATCH:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                auto = f" or {AUTO_BATCH}" if name == "batch_size" else ""
                raise SpecError(f"{name} must be a positive integer (at most {most:,}){auto}, got {brief(value)}")
        for name in ("seed", "sample_seed"):
            value = getattr(self, name)
            if value is None and name == "sample_seed":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SEED_LIMIT:
                raise SpecError(f"{name} must be an integer in [0, 2**63), got {brief(value)}")

    def to_json(self) -> dict:
        """Canonical JSON form (specs as strings, eps as a float); ``restore_from`` only in its setting."""
        data = {
            "dataset": str(self.dataset),
            "split": self.split,
            "n": self.n,
            "sample_seed": self.sample_seed,
            "model": str(self.model),
            "defense": str(self.defense),
            "attack": str(self.attack),
            "setting": self.setting,
            "sources": [str(s) for s in self.sources],
            "attack_defense": None if self.attack_defense is None else str(self.attack_defense),
            "threat": self.threat.to_json(),
            "seed": self.seed,
            "draws": self.draws,
            "eot": self.eot,
            "batch_size": self.batch_size,
        }
        if self.setting == "restored":
            data["restore_from"] = None if self.restore_from is None else str(self.restore_from)
        if self.cascade:  # absent when empty: keys of cells without a cascade stay as they were
            data["cascade"] = [str(s) for s in self.cascade]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Cell":
        """Inverse of :meth:`to_json`."""
        threat = data["threat"]
        return cls(
            dataset=data["dataset"], split=data["split"], n=data["n"], sample_seed=data["sample_seed"],
            model=data["model"], defense=data["defense"], attack=data["attack"], setting=data["setting"],
            sources=tuple(data["sources"]), attack_defense=data["attack_defense"],
            threat=ThreatModel(threat["norm"], threat["eps"], tuple(threat["bounds"])),
            seed=data["seed"], draws=data["draws"], eot=data["eot"], batch_size=data["batch_size"],
            restore_from=data.get("restore_from"), cascade=tuple(data.get("cascade", ())),
        )

    def normalised(self, *, draws_matter: bool, eot_matters: bool) -> "Cell":
        """The same cell with draw counts that cannot change its numbers fixed to 1 (one key per result)."""
        return replace(self, draws=self.draws if draws_matter else 1, eot=self.eot if eot_matters else 1)


def cell_key(cell: Cell, provenance: dict) -> str:
    """Hash of the cell's canonical JSON plus versions, checkpoint hashes and data fingerprint."""
    payload = json.dumps({"cell": cell.to_json(), "provenance": provenance}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
