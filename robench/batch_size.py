"""``batch_size: auto``: the batch a cell's attack runs at, chosen for the device by a short probe.

On CUDA, the largest batch that fits: one attack step (forward and backward through the cell's
attack view, the defense's gradient view and the model) at doubling sizes until the device runs
out of memory, then a bisection between the last size that fitted and the first that did not,
less a safety margin for what one step does not hold (an attack's own state, fragmentation). On
CPU, where memory is rarely the limit, the fastest: attack steps timed at each of ``CPU_SIZES``
(once, or for ``CPU_MIN_S`` when a step is shorter), the smallest size within ``CPU_TOLERANCE``
of the best images per second (a smaller batch resumes at a finer grain and needs less memory).
No size above the cell's ``n`` is tried. Either probe runs once per attack view of a grid; on
CPU it costs a few hundred examples' gradients (``sum(CPU_SIZES)`` plus a warm-up).

The batch size is part of a cell (each batch has its own seed), so the chosen size enters the
cell's key; it is recorded in the cell's provenance with how it was chosen. A rerun of the same
grid takes the size an earlier run of the benchmark chose for the cell, so an interrupted run
resumes instead of starting over at a size a new probe would pick.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from robench.cell import AUTO_BATCH, LIMITS, Cell
from robench.views import attack_view, attack_view_parts

CUDA_START = 16
MARGIN = 0.8  # of the largest batch one probe step fitted
BISECTIONS = 3  # rounds between the last size that fitted and the first that did not
CPU_SIZES = (16, 32, 64, 128)  # CPU throughput of the models here levels off within these
CPU_TOLERANCE = 0.05
CPU_MIN_S = 0.05  # each CPU size is timed over at least this long

Step = Callable[[int], None]


def largest_fitting(step: Step, *, limit: int, start: int = CUDA_START, margin: float = MARGIN,
                    out_of_memory: type[BaseException] = torch.cuda.OutOfMemoryError,
                    cleanup: Callable[[], None] = torch.cuda.empty_cache) -> tuple[int, dict]:
    """The batch size for a device whose memory limits it: ``step(size)`` raises ``out_of_memory`` when too large."""
    tried: dict[int, bool] = {}

    def fits(size: int) -> bool:
        try:
            step(size)
            tried[size] = True
        except out_of_memory:
            tried[size] = False
        if not tried[size]:  # outside the except clause: its traceback no longer holds the step's tensors
            cleanup()
        return tried[size]

    size, good, bad = min(start, limit), 0, None
    while good < limit:
        if fits(size):
            good, size = size, min(2 * size, limit)
            if bad is not None:
                break
        elif good:
            bad = size
            break
        elif size == 1:
            raise RuntimeError("a batch of one example does not fit the device's memory for this cell's attack")
        else:  # even the first size is too large: halve until one fits
            bad, size = size, size // 2
    for _ in range(BISECTIONS if bad is not None else 0):
        middle = (good + bad) // 2
        if middle == good:
            break
        good, bad = (middle, bad) if fits(middle) else (good, middle)
    chosen = good if bad is None else max(1, int(good * margin))
    return chosen, {"rule": "largest batch one attack step fits, less a margin", "fits": good,
                    "out_of_memory_at": bad, "margin": margin if bad is not None else None,
                    "tried": {str(size): ok for size, ok in sorted(tried.items())}}


def fastest(step: Step, sizes: Iterable[int], *, clock: Callable[[], float] = time.perf_counter,
            tolerance: float = CPU_TOLERANCE, min_s: float = CPU_MIN_S) -> tuple[int, dict]:
    """The smallest of ``sizes`` within ``tolerance`` of the best images/s of ``step``, timed after an untimed warm-up.

    Each size runs at least once and until ``min_s`` seconds have passed (a small model's step is
    too short to time once).
    """
    sizes = sorted(set(sizes))
    step(sizes[0])
    rates = {}
    for size in sizes:
        began, steps = clock(), 0
        while not steps or clock() - began < min_s:
            step(size)
            steps += 1
        rates[size] = size * steps / max(clock() - began, 1e-9)
    best = max(rates.values())
    chosen = min(size for size, rate in rates.items() if rate >= (1 - tolerance) * best)
    return chosen, {"rule": f"smallest batch within {tolerance:.0%} of the best images/s of an attack step",
                    "images_per_s": {str(size): round(rate, 2) for size, rate in rates.items()}}


def attack_step(cell: Cell, resolver) -> Step:
    """One attack step of the cell at a given batch size: cross-entropy gradient through its attack view."""
    view = attack_view(cell, resolver)
    examples = resolver.cell_examples(cell)
    device = resolver.device

    def step(size: int) -> None:
        index = torch.arange(size) % len(examples)
        x = examples.x[index].to(device).requires_grad_(True)
        y = examples.y[index].to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.autograd.grad(F.cross_entropy(view(x), y), x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def choose(cell: Cell, resolver) -> tuple[int, dict]:
    """The batch size for an ``auto`` cell on the resolver's device, and how it was chosen."""
    device = resolver.device
    if device.type == "cuda":
        return largest_fitting(attack_step(cell, resolver), limit=min(cell.n, LIMITS["batch_size"]))
    sizes = [size for size in CPU_SIZES if size < cell.n] + [min(cell.n, max(CPU_SIZES))]
    if len(sizes) == 1:
        return sizes[0], {"rule": "the whole cell: no larger batch than its n is tried"}
    return fastest(attack_step(cell, resolver), sizes)


def resolve_auto(cell: Cell, resolver, earlier: dict[str, dict]) -> tuple[Cell, dict]:
    """The cell with its batch size chosen, and the provenance entry saying how (``batch_size``).

    The choice is ``earlier``'s record for the cell (from :func:`earlier_choices`), else a probe's,
    made once for the cells of a grid that share an attack view.
    """
    if cell.batch_size != AUTO_BATCH:
        return cell, {}
    record = earlier.get(auto_signature(cell.to_json()))
    if record is None:
        key = ("batch size", resolver.device, cell.n, *attack_view_parts(cell, resolver),
               id(resolver.cell_examples(cell)))
        size, how = resolver.remembered(key, lambda: choose(cell, resolver))
        record = {"requested": AUTO_BATCH, "chosen": size, "device": str(resolver.device), **how}
    return replace(cell, batch_size=record["chosen"]), {"batch_size": record}


def auto_signature(spec: dict) -> str:
    """A cell's spec (:meth:`Cell.to_json`, or as stored) without its batch size: an ``auto`` cell across runs."""
    return json.dumps({k: v for k, v in spec.items() if k != "batch_size"}, sort_keys=True)


def earlier_choices(store, benchmark: str | None, cells: list[Cell]) -> dict[str, dict]:
    """The provenance entry of the size each ``auto`` cell of the benchmark was given in the store, by signature.

    Read only when one of ``cells`` asks for ``auto``.
    """
    if benchmark is None or all(cell.batch_size != AUTO_BATCH for cell in cells):
        return {}
    chosen = {}
    for record in store.benchmark_cells(benchmark):
        entry = record.provenance.get("batch_size")
        if isinstance(entry, dict) and entry.get("requested") == AUTO_BATCH:
            chosen[auto_signature(record.spec)] = entry
    return chosen
