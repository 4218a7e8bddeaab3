"""``robench verify``: find the damage in a store, and with ``repair`` mend what can be mended.

Two kinds of damage: what SQLite's ``integrity_check`` finds (a broken index, a damaged page),
and done cells whose rows or record disagree with their summary (rows lost, values altered:
counts, sums and the sha256 of the rows and of the record taken when the cell finished).
Repair rebuilds the indexes (``REINDEX``; where tables are damaged, it copies every readable row
into a new file), marks the damaged cells for recomputation (only their incomplete batches where
that can be told, all of their rows otherwise) and computes them again from their stored specs,
each batch's surviving rows checked against the new ones; a cell whose record is damaged is
removed, for its benchmark's next run to compute. Run it while no other process uses the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from robench.salvage import restore_schema, salvage
from robench.store import Store, StoreError


@dataclass
class Verification:
    """What ``verify`` found and did: SQLite's problems, damaged cells, marked batches, recomputed cells."""

    repair: bool
    restored_schema: list[str] = field(default_factory=list)
    integrity: list[str] = field(default_factory=list)
    integrity_after_repair: list[str] = field(default_factory=list)
    salvaged_from: Path | None = None
    damaged: dict[str, str] = field(default_factory=dict)
    marked: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[str]] = field(default_factory=dict)
    recomputed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def sound(self) -> bool:
        """True when nothing is (still) wrong: no damage found, or all of it repaired."""
        if self.integrity and (not self.repair or self.integrity_after_repair):
            return False
        return set(self.recomputed) | set(self.removed) == set(self.damaged) and not self.failed

    def lines(self, path) -> list[str]:
        """The report ``robench verify`` prints for the store at ``path``."""
        lines = [f"schema of table {table} was damaged: restored" for table in self.restored_schema]
        lines += [f"integrity: {problem}" for problem in self.integrity]
        if self.integrity and self.repair:
            after = self.integrity_after_repair
            done = "indexes rebuilt" if self.salvaged_from is None else (
                f"every readable row copied into a new file (the damaged one is kept as {self.salvaged_from})")
            lines.append(f"{done}: " + (f"still damaged ({'; '.join(after[:3])}); move the file away or restore a "
                                        "backup" if after else "SQLite finds the file sound now"))
        for key, problem in self.damaged.items():
            lines.append(f"damaged cell {key[:12]}: {problem}")
            if key in self.marked:
                lines.append(f"  batches {self.marked[key]} marked for recomputation")
            if key in self.removed:
                lines.append(f"  removed: rerun {' or '.join(self.removed[key]) or 'its benchmark'} to compute it again")
        lines += [f"recomputed {key[:12]}" for key in self.recomputed]
        lines += [f"could not recompute {key[:12]}: {message}" for key, message in self.failed.items()]
        if self.sound:
            repaired = self.damaged or self.integrity or self.restored_schema
            return lines + [f"{path}: sound" + (" after repair" if repaired else "")]
        if not self.repair:
            lines.append(f"{path} is damaged; `robench verify --repair --store {path}` repairs what it can")
        return lines


def verify(path: "str | Path", *, repair: bool = False, device=None, command: str = "") -> Verification:
    """Check the store at ``path`` (and with ``repair``, restore, reindex, salvage, mark and recompute on ``device``).

    Raises :class:`robench.store.StoreError` when the file cannot be opened as a store.
    """
    found = Verification(repair, restored_schema=restore_schema(path) if repair and Path(path).is_file() else [])
    try:
        store = Store(path, create=False)
    except StoreError as err:
        if not repair or not Path(path).is_file():
            raise
        raise StoreError(f"{str(err).split('; ')[0]}, and repair cannot open it either: move it away (or restore a "
                         "backup) and rerun to start a new store") from None
    try:
        found.integrity = store.integrity_problems(full=True)
        if found.integrity:
            if not repair:
                return found  # the rows cannot be read reliably to tell which cells are damaged
            found.integrity_after_repair = store.reindex()
            if found.integrity_after_repair:  # damaged tables: keep what can be read, recompute the rest
                store.close()
                found.salvaged_from = salvage(path)
                store = Store(path, create=False)
                found.integrity_after_repair = store.integrity_problems(full=True)
                if found.integrity_after_repair:
                    return found
        found.damaged = store.damage(full=True)
        if repair and found.damaged:
            _repair_cells(store, found, device, command)
        return found
    finally:
        store.close()


def _repair_cells(store: Store, found: Verification, device, command: str) -> None:
    for key, problem in found.damaged.items():
        benchmarks = store.memberships(key)
        batches = store.mark_for_recompute(key, problem)
        if batches is None:
            found.removed[key] = [f"`robench run {name}`" for name in benchmarks]
        else:
            found.marked[key] = batches
    if not found.marked:
        return
    from robench.runner import recompute  # torch is imported only when there is something to compute

    result = recompute(list(found.marked), store, device=device, command=command)
    found.recomputed, found.failed = result.computed, result.failed
