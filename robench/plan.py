"""Planning a grid without running it: what to compute, the passes it will spend, and how long that takes.

A pass is one example through a pipeline once, forward or backward (an EOT view's forward is
``eot`` passes). Per cell, scoring spends ``draws`` forwards per example twice (clean and
re-scoring), the attack what its declared cost model says (:meth:`robench.attack.Attack.passes`,
with every example counted as attacked: an upper bound where some are misclassified clean),
and the sanity checks one gradient of a few examples. Time comes from a short calibration
of each pipeline on the current device, or from a throughput the user gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import torch
from tabulate import tabulate
from torch import nn

from robench.attack import Passes
from robench.batch_size import earlier_choices
from robench.cell import AUTO_BATCH, Cell
from robench.checks import CHECKED, GRADIENT_KINDS
from robench.compute import batch_count
from robench.missing import Expected, split_missing
from robench.resolve import Resolver
from robench.runner import cascades, describe_cell, prepare
from robench.store import Store
from robench.target import split_eot
from robench.views import attack_view, attacked_defense, scored_view

CALIBRATED = 16  # examples each pipeline's calibration passes through
BACKWARD_IN_FORWARDS = 2  # with a user's throughput, a backward pass costs two forward passes


@dataclass(frozen=True)
class CellPlan:
    """One cell of a plan: ``compute`` (its missing batches), ``stored`` or ``missing`` (with its reason)."""

    cell: Cell
    status: str
    key: str = ""
    reason: str = ""
    batches: int = 0
    scoring: Passes = field(default_factory=Passes)
    attack: Passes | None = None
    seconds: float | None = None

    @property
    def passes(self) -> Passes | None:
        """All passes of the cell; None when its attack declares no cost model."""
        return None if self.attack is None else self.scoring + self.attack


@dataclass(frozen=True)
class GridPlan:
    """A grid's plan and how its times were obtained (``calibrated on cpu`` or a given throughput)."""

    cells: list[CellPlan]
    timing: str
    device: torch.device


def cell_passes(cell: Cell, resolver: Resolver, batches: list[int], *, checks: bool = True
                ) -> tuple[Passes, Passes | None]:
    """(scoring, attack) passes of the given batches of a cell, the sanity checks' gradient with the attack."""
    attack = resolver.attack(cell.attack)
    restore = None if cell.restore_from is None else resolver.attack(cell.restore_from)
    scoring, spent = Passes(), Passes()
    for batch in batches:
        size = min(cell.batch_size, cell.n - batch * cell.batch_size)
        scoring = scoring + Passes(2 * cell.draws * size)
        parts = [attack.passes(size, cell.eot)] + ([] if restore is None else [restore.passes(size, cell.eot)])
        if any(part is None for part in parts):
            return scoring, None
        for part in parts:
            spent = spent + part
    if checks and attack.kind in GRADIENT_KINDS:
        checked = min(cell.batch_size, CHECKED, cell.n) * cell.eot
        spent = spent + Passes(checked, checked)
    return scoring, spent


def plan_grid(
    cells: list[Cell],
    store_path: "str | Path | None",
    *,
    device: torch.device,
    expected: Expected | None = None,
    objects: Mapping[str, nn.Module] | None = None,
    throughput: float | None = None,
    benchmark: str | None = None,
) -> GridPlan:
    """The plan of a grid against a store (which is only read; absent: everything is computed).

    ``benchmark`` names the grid in the store, where its ``auto`` cells find the batch sizes
    earlier runs chose.
    """
    cells, missing = split_missing(cells, expected)
    resolver = Resolver(device, objects)
    store = Store(store_path, create=False) if store_path is not None and Path(store_path).is_file() else None
    try:
        prepared = prepare(cells, resolver, {} if store is None else earlier_choices(store, benchmark, cells))
        cascades(prepared)  # a cascade missing one of its attacks is refused here as by the run
        timer = _Timer(resolver, throughput)
        plans = [_missing_plan(cell, reason, resolver, throughput) for cell, reason in missing.items()]
        for cell, key, _ in prepared:
            record = store.cell(key) if store is not None else None
            if record is not None and record.status == "done":
                plans.append(CellPlan(cell, "stored", key))
                continue
            done = store.completed_batches(key) if store is not None else set()
            todo = [b for b in range(batch_count(cell)) if b not in done]
            scoring, attack = cell_passes(cell, resolver, todo)
            seconds = None if attack is None else timer.seconds(cell, scoring, attack)
            plans.append(CellPlan(cell, "compute", key, "", len(todo), scoring, attack, seconds))
    finally:
        if store is not None:
            store.close()
    timing = f"{throughput:g} forward passes/s given" if throughput else f"calibrated on {device}"
    return GridPlan(plans, timing, device)


def _missing_plan(cell: Cell, reason: str, resolver: Resolver, throughput: float | None) -> CellPlan:
    """A missing cell's passes once it can run, from its attacks alone (nothing else of it can be built yet).

    Its draws and EOT count as given (not reduced for a deterministic defense): an upper bound.
    Timed only with a given throughput; an attack that is itself missing leaves it uncosted. An
    ``auto`` batch size, chosen once it can run, is costed as one batch.
    """
    if cell.batch_size == AUTO_BATCH:
        cell = replace(cell, batch_size=cell.n)
    try:
        scoring, attack = cell_passes(cell, resolver, list(range(batch_count(cell))))
    except Exception:  # the attack itself is a pending plugin: no cost model to read
        return CellPlan(cell, "missing", reason=reason)
    seconds = None
    if throughput and attack is not None:
        total = scoring + attack
        seconds = (total.forward + BACKWARD_IN_FORWARDS * total.backward) / throughput
    return CellPlan(cell, "missing", reason=reason, batches=batch_count(cell), scoring=scoring, attack=attack,
                    seconds=seconds)


class _Timer:
    """Seconds per pass of each pipeline, measured once on a few examples, or from a given throughput."""

    def __init__(self, resolver: Resolver, throughput: float | None):
        self.resolver, self.throughput = resolver, throughput
        self.measured: dict[tuple, tuple[float, float]] = {}

    def seconds(self, cell: Cell, scoring: Passes, attack: Passes) -> float:
        if self.throughput:
            total = scoring + attack
            return (total.forward + BACKWARD_IN_FORWARDS * total.backward) / self.throughput
        score_forward, _ = self._per_pass(("score", cell.dataset, cell.model, cell.defense, cell.setting == "restored"),
                                          cell, lambda: scored_view(cell, self.resolver), backward=False)
        attack_forward, attack_backward = self._per_pass(
            ("attack", cell.dataset, cell.model, cell.sources, attacked_defense(cell), cell.setting), cell,
            lambda: split_eot(attack_view(cell, self.resolver))[0], backward=True)
        return (scoring.forward * score_forward + attack.forward * attack_forward
                + attack.backward * attack_backward)

    def _per_pass(self, key: tuple, cell: Cell, module: Callable[[], nn.Module], *, backward: bool
                  ) -> tuple[float, float]:
        if key not in self.measured:
            examples = self.resolver.cell_examples(cell)
            x = examples.x[: min(cell.batch_size, CALIBRATED)].to(self.resolver.device)
            self.measured[key] = calibrate(module(), x, backward=backward)
        return self.measured[key]


def calibrate(module: nn.Module, x: torch.Tensor, *, backward: bool, repeats: int = 2) -> tuple[float, float]:
    """Seconds per example of a forward pass and of a backward pass (0 unless ``backward``), after one warm-up."""
    def forward_only():
        with torch.no_grad():
            module(x)

    def forward_backward():  # the input's gradient only, as attacks take it: no parameter .grad is touched
        inputs = x.clone().requires_grad_(True)
        torch.autograd.grad(module(inputs).sum(), inputs)

    forward = _timed(forward_only, repeats, x.device) / len(x)
    both = _timed(forward_backward, repeats, x.device) / len(x) if backward else forward
    return forward, max(both - forward, 0.0)


def _timed(work: Callable[[], None], repeats: int, device: torch.device) -> float:
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - began) / repeats


def render_plan(plan: GridPlan, title: str, *, list_missing: bool = True) -> str:
    """The plan as text: counts, missing cells with reasons (unless not ``list_missing``), passes and time per
    cell, per defense and in total."""
    computed = [p for p in plan.cells if p.status == "compute"]
    stored = [p for p in plan.cells if p.status == "stored"]
    missing = [p for p in plan.cells if p.status == "missing"]
    lines = [f"plan for {title}: {len(computed)} cells to compute, {len(stored)} found in the store, "
             f"{len(missing)} missing"]
    for p in missing if list_missing else []:
        lines.append(f"  missing: {describe_cell(p.cell)}: {p.reason}")
    if computed:
        rows = [[describe_cell(p.cell), p.batches, *_work(p.passes, p.seconds)] for p in computed]
        lines += ["", tabulate(rows, headers=["cell", "batches", "forward", "backward", "time"],
                               tablefmt="simple", disable_numparse=True)]
        by_defense: dict[str, list[CellPlan]] = {}
        for p in computed:
            by_defense.setdefault(str(p.cell.defense), []).append(p)
        rows = [[name, len(group), *_work(*_summed(group))] for name, group in by_defense.items()]
        rows.append(["total", len(computed), *_work(*_summed(computed))])
        lines += ["", tabulate(rows, headers=["defense", "cells", "forward", "backward", "time"],
                               tablefmt="simple", disable_numparse=True)]
        passes, seconds = _summed(computed)
        kind = "GPU" if plan.device.type == "cuda" else "CPU"
        hours = "unknown" if seconds is None else f"{seconds / 3600:.3g}"
        lines += ["", f"total: {hours} {kind}-hours ({plan.timing}); attacks count every example as attacked, "
                      "so this is an upper bound"]
        undeclared = sorted({str(p.cell.attack) for p in computed if p.attack is None})
        if undeclared:
            lines.append(f"no cost model declared by: {', '.join(undeclared)} (their cells are left out of the sums)")
    if missing:
        passes, seconds = _summed(missing)
        if passes is not None:
            when = "" if seconds is None else f", {_duration(seconds)} at the given throughput"
            lines.append(f"the {len(missing)} missing cells, once they can run: {passes.forward:,} forward and "
                         f"{passes.backward:,} backward passes at most{when}")
    return "\n".join(lines) + "\n"


def _summed(plans: list[CellPlan]) -> tuple[Passes | None, float | None]:
    known = [p for p in plans if p.passes is not None]
    if not known:
        return None, None
    total = Passes()
    for p in known:
        total = total + p.passes
    times = [p.seconds for p in known]
    return total, None if None in times else sum(times)


def _work(passes: Passes | None, seconds: float | None) -> list[str]:
    if passes is None:
        return ["?", "?", "?"]
    return [f"{passes.forward:,}", f"{passes.backward:,}", _duration(seconds)]


def _duration(seconds: float) -> str:
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.2g} s"
