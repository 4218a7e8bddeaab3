"""Driving a grid: check and key its cells, hand their missing batches to an executor, store what comes back.

The computation itself is :mod:`robench.compute` (rows, no store); executors
(:mod:`robench.executors`) decide where it runs; this module alone writes the store.

Several runs may share a store: each claims a cell before computing it. A cell another live
run holds is put aside and taken up after the rest of the grid: by then it is usually done
(read from the store), or failed (its error is reported), or its owner died (computed here).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from robench import checks, device_options
from robench.batch_size import earlier_choices, resolve_auto
from robench.cell import Cell, cell_key
from robench.compute import BatchDone, Event, Stage, Task, TaskFailed, batch_count, batch_size_of
from robench.env import environment
from robench.errors import ConfigError
from robench.executors import Executor, LocalExecutor
from robench.missing import Expected, missing_key, split_missing
from robench.resolve import Resolver
from robench.store import MissingRecord, Store, new_owner
from robench.views import attacked_defense, restoring_defense

WAIT_S = 1.0  # how often a run polls a cell another run is computing
Chain = list[tuple[Cell, str, dict]]  # one cell, or a cascade's cells in attack order, with keys and provenance


@dataclass
class GridResult:
    """What a grid run did: keys computed, skipped (cached), failed and missing (with messages)."""

    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def summarise(rows: list[dict]) -> dict:
    """Counts and accuracies of a cell's example rows."""
    n = len(rows)
    clean = sum(r["clean_correct"] for r in rows)
    robust = sum(r["robust_correct"] for r in rows)
    return {
        "n": n,
        "clean_correct": clean,
        "robust_correct": robust,
        "clean_acc": clean / n if n else float("nan"),
        "robust_acc": robust / n if n else float("nan"),
        "clean_draw_acc": sum(r["clean_draw_acc"] for r in rows) / n if n else float("nan"),
        "robust_draw_acc": sum(r["robust_draw_acc"] for r in rows) / n if n else float("nan"),
        "attacked": sum(r["attacked"] for r in rows),
        "max_perturbation": max((r["perturbation"] for r in rows), default=0.0),
    }


def normalise(cell: Cell, resolver: Resolver) -> Cell:
    """Fix draws to 1 where scoring has no randomness, and EOT to 1 where no attacked view has any."""
    attacked, attack = attacked_defense(cell), cell.attack
    if restoring_defense(cell) is not None:
        attacked, attack = restoring_defense(cell), cell.restore_from
    eot_matters = (
        attacked is not None
        and resolver.defense(attacked).stochastic
        and not resolver.attack(attack).averages_draws
    )
    draws_matter = resolver.defense(cell.defense).stochastic and cell.setting != "restored"
    return cell.normalised(draws_matter=draws_matter, eot_matters=eot_matters)


def prepare(cells: list[Cell], resolver: Resolver, earlier: dict[str, dict] | None = None
            ) -> list[tuple[Cell, str, dict]]:
    """Check every cell, choose its batch size if ``auto`` (as ``earlier`` runs did, see :mod:`robench.batch_size`)
    and compute its key; any configuration error stops the grid before it runs."""
    prepared, problems = [], []
    for cell in cells:
        try:
            cell = normalise(cell, resolver)
            resolver.check(cell)
            cell, chosen = resolve_auto(cell, resolver, earlier or {})
            provenance = resolver.provenance(cell)
        except Exception as err:  # every configuration problem is reported, then the grid stops
            problems.append(f"{describe_cell(cell)}: {err}")
            continue
        prepared.append((cell, cell_key(cell, provenance), {**provenance, **chosen}))
    if problems:
        listed = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigError(f"{len(problems)} of {len(cells)} cells cannot run:\n  {listed}")
    return prepared


def run_grid(
    cells: list[Cell],
    store: Store,
    *,
    benchmark: str,
    device: torch.device,
    command: str = "",
    progress: bool = True,
    labels: Mapping[Cell, Sequence[dict]] | None = None,
    expected: Expected | None = None,
    objects: Mapping[str, nn.Module] | None = None,
    executor: Executor | None = None,
    additive: bool = False,
) -> GridResult:
    """Evaluate every cell not yet in the store; failures become error rows and the grid goes on.

    Cells naming a plugin or checkpoint that ``expected`` declares may be absent, and is, are
    stored as missing cells with their reason; ``labels`` (cell -> paper labels) are stored with
    the benchmark's latest grid for paper-layout reports; ``objects`` (name -> in-memory model
    or defense) take precedence over registered plugins of the same name. ``executor`` computes
    the cells' missing batches (default: :class:`~robench.executors.LocalExecutor`); this
    function alone writes the store, as the executor's events arrive. The grid replaces the
    benchmark's cells, or adds to them (``additive``: an ad-hoc grid other runs may share). A
    damaged store stops the run before anything runs.
    """
    store.check_integrity()
    cells, missing = split_missing(cells, expected)
    resolver = Resolver(device, objects)
    prepared = prepare(cells, resolver, earlier_choices(store, benchmark, cells))
    store.check_cells([key for _, key, _ in prepared], full=True)
    chains = cascades(prepared)
    result = GridResult(missing={missing_key(cell): reason for cell, reason in missing.items()})
    env = environment(device)
    run_id = store.start_run(command, env)
    store.set_members(benchmark, [key for _, key, _ in prepared], replace=not additive)
    store.set_missing(benchmark, [MissingRecord(missing_key(c), c.to_json(), r) for c, r in missing.items()],
                      replace=not additive)
    keys = [(cell, key) for cell, (_, key, _) in zip(cells, prepared)] + [(c, missing_key(c)) for c in missing]
    store.set_labels(benchmark, _labels_by_key(keys, labels or {}), replace=not additive)
    executor = executor or LocalExecutor()
    driver = _Driver(store, result, run_id, benchmark, resolver, env, new_owner())
    with store.heartbeats(driver.owner):
        tasks, elsewhere = [], []
        for chain in chains:
            claims = driver.claim(chain)
            if claims is None:
                elsewhere.append(chain)
            else:
                tasks += driver.admit(chain, claims, executor.batches_per_task)
        driver.execute(tasks, executor, len(prepared), progress)
        for chain in elsewhere:  # held by other runs: read their results, or compute what they left
            driver.execute(driver.admit(chain, driver.await_claims(chain), executor.batches_per_task),
                           executor, len(chain), progress)
    store.finish_run(run_id)
    return result


def recompute(keys: list[str], store: Store, *, device: torch.device, command: str = "") -> GridResult:
    """Compute again the stored cells ``keys`` (marked for recomputation) from their stored specs.

    A cell whose key the current plugins, checkpoints and data no longer give (a version
    changed since) cannot be recomputed here: it is reported failed with the benchmark to rerun.
    """
    resolver = Resolver(device)
    result = GridResult()
    env = environment(device)
    run_id = store.start_run(command, env)
    driver = _Driver(store, result, run_id, None, resolver, env, new_owner())
    with store.heartbeats(driver.owner):
        for key in keys:
            try:
                ((cell, now, provenance),) = prepare([Cell.from_json(store.spec(key))], resolver)
            except ConfigError as err:
                result.failed[key] = f"cannot be rebuilt here: {err}"
                continue
            if now != key:
                result.failed[key] = ("the current plugins, checkpoints or data give this cell another key; "
                                      "rerun the benchmark it belongs to")
                continue
            chosen = {k: v for k, v in store.cell(key).provenance.items() if k == "batch_size"}  # an auto cell's
            tasks = driver.admit([(cell, key, {**provenance, **chosen})], {key: driver.wait_for_claim(key)}, None)
            driver.execute(tasks, LocalExecutor(), 1, False)
    store.finish_run(run_id)
    return result


def cascades(prepared: list[tuple[Cell, str, dict]]) -> list[list[tuple[Cell, str, dict]]]:
    """The prepared cells as chains: a cascade's cells in attack order, every other cell alone."""
    groups = [_cascade_group(cell) for cell, _, _ in prepared]
    heads = {(group, cell.cascade[0]) for (cell, _, _), group in zip(prepared, groups) if cell.cascade}
    chains: dict[str, list[tuple[Cell, str, dict]]] = {}
    for entry, group in zip(prepared, groups):
        cell, key, _ = entry
        chains.setdefault(group if cell.cascade or (group, cell.attack) in heads else key, []).append(entry)
    for chain in chains.values():
        chain.sort(key=lambda entry: len(entry[0].cascade))
        for position, (cell, _, _) in enumerate(chain):
            if cell.cascade != tuple(c.attack for c, _, _ in chain[:position]):
                raise ConfigError(f"{describe_cell(cell)} cascades after {', '.join(map(str, cell.cascade))}, "
                                  f"but the grid runs {', '.join(str(c.attack) for c, _, _ in chain[:position])} "
                                  "before it; list every attack of a cascade in the grid")
    return list(chains.values())


def _cascade_group(cell: Cell) -> str:
    """What the cells of one cascade share: everything but the attack (and its EOT draws)."""
    return json.dumps({k: v for k, v in cell.to_json().items() if k not in ("attack", "cascade", "eot")},
                      sort_keys=True)


class _Driver:
    """Writes the store from a grid's task events: claims, batches once each, a cell done when all its tasks are."""

    def __init__(self, store: Store, result: GridResult, run_id: int, benchmark: str | None, resolver: Resolver,
                 env: dict, owner: str):
        self.store, self.result, self.run_id, self.benchmark = store, result, run_id, benchmark
        self.resolver, self.env, self.owner = resolver, env, owner
        self.cells: dict[str, tuple[Cell, dict]] = {}
        self.open_tasks: dict[str, int] = {}
        self.flags: dict[str, list[str]] = {}
        self.stored: dict[str, set[int]] = {}
        self.robust: dict[str, dict[int, dict[str, int]]] = {}  # stored robust_correct by batch, read once per cell
        self.cell_bar = self.batch_bar = None

    def claim(self, chain: Chain) -> dict[str, str] | None:
        """Claim every cell of a chain (``'claimed'`` or ``'done'`` each), or none when another run holds one."""
        claims = {key: self.store.claim(key, self.owner) for _, key, _ in chain}
        if "busy" not in claims.values():
            return claims
        for key, claim in claims.items():
            if claim == "claimed":
                self.store.release(key, self.owner)
        return None

    def await_claims(self, chain: Chain) -> dict[str, str]:
        """Claim a chain's cells, waiting while other live runs hold them; cells they failed are reported as failed."""
        claims = {}
        for cell, key, _ in chain:
            claim = self.wait_for_claim(key)
            stored = self.store.cell(key)
            if claim == "claimed" and stored is not None and stored.status == "error":
                self.store.release(key, self.owner)
                self.store.tag(key, self.benchmark)
                self.result.failed[key] = stored.error.splitlines()[0]
                claim = "failed elsewhere"
            claims[key] = claim
        if len(chain) > 1 and "failed elsewhere" in claims.values():  # a cascade needs every earlier stage
            for _, key, _ in chain:
                if claims[key] == "claimed":
                    self.store.release(key, self.owner)
                    self.result.failed[key] = "an earlier attack of its cascade failed in another run"
            return {key: "failed elsewhere" for _, key, _ in chain}
        return claims

    def wait_for_claim(self, key: str) -> str:
        """Claim a cell, waiting while another live run holds it: ``'claimed'`` or ``'done'``."""
        while (claim := self.store.claim(key, self.owner)) == "busy":
            time.sleep(WAIT_S)
        return claim

    def admit(self, chain: Chain, claims: dict[str, str], per_task: int | None) -> list[Task]:
        """Record the chain's done cells as cached, begin the claimed ones, and return the tasks of their batches."""
        for cell, key, provenance in chain:
            if claims[key] == "done":
                self.store.tag(key, self.benchmark)
                self.result.cached.append(key)
            elif claims[key] == "claimed":
                self.begin(cell, key, {**provenance, "environment": self.env, **self.device_record(cell)})
        return self.tasks([(cell, key) for cell, key, _ in chain], per_task)

    def device_record(self, cell: Cell) -> dict:
        """The device options the cell's attack runs with, for its provenance (never its key)."""
        options = device_options.record(self.resolver.attack(cell.attack), self.resolver.device)
        return {} if options is None else {"device_options": options}

    def begin(self, cell: Cell, key: str, record: dict) -> None:
        """Mark a cell running and note the batches a previous run stored whole (a partly stored one is redone)."""
        self.store.begin_cell(key, cell.to_json(), record, self.run_id, self.benchmark)
        self.cells[key] = (cell, record)
        rows = self.store.stored_rows(key)
        self.stored[key] = {b for b in self.store.completed_batches(key) if rows.get(b) == batch_size_of(cell, b)}
        self.open_tasks[key] = 0

    def execute(self, tasks: list[Task], executor: Executor, cells: int, progress: bool) -> None:
        """Run tasks on the executor and store their events as they arrive."""
        self.open_bars(self.benchmark or "recompute", cells, progress)
        try:
            for event in executor.run(tasks, self.resolver):
                self.receive(event)
        finally:
            self.close_bars()

    def tasks(self, chain: list[tuple[Cell, str]], per_task: int | None) -> list[Task]:
        """A chain's missing batches in tasks of ``per_task`` batches (one task at least per open cell, for its flags)."""
        todo = {key: {b for b in range(batch_count(cell)) if b not in self.stored[key]}
                for cell, key in chain if key in self.open_tasks}
        if not todo:
            return []
        batches = sorted(set().union(*todo.values()))
        size = per_task or max(len(batches), 1)
        tasks = []
        for i, chunk in enumerate([batches[i : i + size] for i in range(0, len(batches), size)] or [[]]):
            stages = tuple(Stage(cell, key, tuple(b for b in chunk if b in todo.get(key, ())), i == 0 and key in todo)
                           for cell, key in chain)
            survivors = {(s.key, b): self._survivors(s.cell, s.key, b)
                         for s in stages[:-1] for b in chunk if b not in s.batches}
            tasks.append(Task(stages, survivors))
            for key in todo:
                self.open_tasks[key] += 1
        return tasks

    def _survivors(self, cell: Cell, key: str, batch: int) -> tuple[int, ...]:
        """A stored batch's ``robust_correct`` per example, in the batch's order."""
        if key not in self.robust:
            self.robust[key] = {}
            for row in self.store.examples(key):
                self.robust[key].setdefault(row["batch"], {})[row["example_id"]] = row["robust_correct"]
        robust = self.robust[key][batch]
        ids = self.resolver.cell_examples(cell).ids[batch * cell.batch_size : (batch + 1) * cell.batch_size]
        return tuple(robust[i] for i in ids)

    def open_bars(self, benchmark: str, cells: int, progress: bool) -> None:
        batches = sum(batch_count(cell) - len(self.stored[key]) for key, (cell, _) in self.cells.items()
                      if key in self.open_tasks)
        self.cell_bar = tqdm(total=cells, initial=min(len(self.result.cached), cells), desc=benchmark, unit="cell",
                             disable=not progress)
        self.batch_bar = tqdm(total=batches, desc="batches", unit="batch", leave=False, disable=not progress)

    def close_bars(self) -> None:
        self.batch_bar.close()
        self.cell_bar.close()

    def receive(self, event: Event) -> None:
        """Store one event; a batch already stored (a retried task) is ignored."""
        key = event.key
        if key not in self.open_tasks:  # the cell already failed: later events of its other tasks are dropped
            return
        if isinstance(event, BatchDone):
            if event.batch not in self.stored[key]:
                self.store.add_batch(key, event.batch, event.rows, event.wall_s)
                self.stored[key].add(event.batch)
                self.batch_bar.update()
        elif isinstance(event, TaskFailed):
            cell, record = self.cells[key]
            self.store.fail_cell(key, cell.to_json(), record, self.run_id, self.benchmark, event.error)
            self.store.release(key, self.owner)
            self.result.failed[key] = event.message
            del self.open_tasks[key]
            self.cell_bar.update()
        else:
            if event.flags is not None:
                self.flags[key] = event.flags
            self.open_tasks[key] -= 1
            if not self.open_tasks[key]:
                del self.open_tasks[key]
                cell = self.cells[key][0]
                rows = self.store.examples(key)
                flags = self.flags.get(key, []) + (["cascaded"] if cell.cascade else [])
                flags += checks.outcome_flags(rows, deterministic=not _scoring_is_random(cell, self.resolver))
                self.store.finish_cell(key, summarise(rows), flags)
                self.store.release(key, self.owner)
                self.result.computed.append(key)
                self.cell_bar.set_postfix_str(describe_cell(self.cells[key][0])[:60])
                self.cell_bar.update()


def _scoring_is_random(cell: Cell, resolver: Resolver) -> bool:
    return cell.setting != "restored" and resolver.defense(cell.defense).stochastic


def _labels_by_key(keys: list[tuple[Cell, str]], labels: Mapping[Cell, Sequence[dict]]) -> dict[str, list[dict]]:
    by_key: dict[str, list[dict]] = {}
    for cell, key in keys:
        found = by_key.setdefault(key, [])
        found += [label for label in labels.get(cell, ()) if label not in found]
    return by_key


def describe_cell(cell: Cell) -> str:
    """One line naming a cell's defense, attack, setting, model and threat model."""
    return f"{cell.defense} | {cell.attack} | {cell.setting} | {cell.model} | {cell.threat}"
