"""The computation of one cell's missing batches, as rows: no store, no global state (DESIGN §5).

An executor runs :func:`run_task` wherever it likes (in process, on a Ray worker) and streams
its events back; only the driver (:func:`robench.runner.run_grid`) writes the store.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Union

import torch

from robench import checks
from robench.cell import Cell
from robench.env import batch_seed
from robench.guard import Guard, Guarded, ObjectModified, fingerprint
from robench.resolve import Resolver
from robench.scoring import score_batch
from robench.views import attack_view, restored_points, scored_view


@dataclass(frozen=True)
class Stage:
    """Some batches of one cell to compute; ``checks`` asks for the cell's sanity flags too."""

    cell: Cell
    key: str
    batches: tuple[int, ...]
    checks: bool = True


@dataclass(frozen=True)
class Task:
    """The unit an executor runs: one stage, or a cascade's stages in order (each attacks what the earlier left).

    ``survivors`` holds, for (stage key, batch) pairs already stored, the ``robust_correct`` of
    each example, so later stages of a cascade know what is left without recomputing them.
    """

    stages: tuple[Stage, ...]
    survivors: Mapping[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchDone:
    """One computed batch: its per-example rows (the store's ``examples`` columns) and its wall time."""

    key: str
    batch: int
    rows: list[dict]
    wall_s: float


@dataclass(frozen=True)
class TaskDone:
    """A task finished; ``flags`` is None when it was not asked for them."""

    key: str
    flags: list[str] | None


@dataclass(frozen=True)
class TaskFailed:
    """A task raised: the cell becomes an error row (DESIGN §5)."""

    key: str
    message: str
    error: str


Event = Union[BatchDone, TaskDone, TaskFailed]


def batch_count(cell: Cell) -> int:
    """Number of batches of a cell."""
    return -(-cell.n // cell.batch_size)


def batch_size_of(cell: Cell, batch: int) -> int:
    """Number of examples in one batch of a cell (the last may be short)."""
    return min(cell.batch_size, cell.n - batch * cell.batch_size)


def cell_guard(cell: Cell, resolver: Resolver) -> Guard:
    """Fingerprints of the models and defenses a cell uses, with the plugins that could change each."""
    attacks = [f"attack {cell.attack}"] + ([f"attack {cell.restore_from}"] if cell.restore_from is not None else [])
    models = [Guarded("models", spec, resolver.model(spec), tuple(attacks))
              for spec in dict.fromkeys((cell.model, *cell.sources))]
    defenses = [Guarded("defenses", spec, resolver.defense(spec), (f"defense {spec}", *attacks))
                for spec in dict.fromkeys(filter(None, (cell.defense, cell.attack_defense)))]
    return Guard(models + defenses, original=lambda module: resolver.remembered(("fingerprint", module),
                                                                               lambda: fingerprint(module)))


def evaluate_cell(cell: Cell, key: str, resolver: Resolver, batches: "tuple[int, ...] | None" = None, *,
                  only: torch.Tensor | None = None) -> Iterator[BatchDone]:
    """Yield the rows of the given batches of one cell (default: all), each as soon as it is computed.

    ``only`` (one batch given): which of its examples may be attacked (a cascade's survivors).
    """
    examples = resolver.cell_examples(cell)
    scorer = scored_view(cell, resolver)
    attacker = attack_view(cell, resolver)
    attack = resolver.attack(cell.attack)
    device = resolver.device
    for batch in range(batch_count(cell)) if batches is None else batches:
        began = time.perf_counter()
        start = batch * cell.batch_size
        torch.manual_seed(batch_seed(cell.seed, batch))
        x = examples.x[start : start + cell.batch_size].to(device)
        y = examples.y[start : start + cell.batch_size].to(device)
        if cell.setting == "restored":
            x = restored_points(cell, resolver, x, y)
        score = score_batch(scorer, attacker, attack, x, y, cell.threat, draws=cell.draws,
                            only=None if only is None else only.to(device))
        rows = [
            {
                "example_id": examples.ids[start + i],
                "batch": batch,
                "label": int(y[i]),
                "clean_correct": int(score.clean[:, i].all()),
                "clean_draw_acc": float(score.clean[:, i].float().mean()),
                "attacked": int(score.attacked[i]),
                "robust_correct": int(score.robust[:, i].all()),
                "robust_draw_acc": float(score.robust[:, i].float().mean()),
                "adv_prediction": int(score.adv_prediction[0, i]),
                "perturbation": float(score.distance[i]),
            }
            for i in range(len(y))
        ]
        yield BatchDone(key, batch, rows, time.perf_counter() - began)


def run_task(task: Task, resolver: Resolver) -> Iterator[Event]:
    """Flags (if asked) and the task's batches as events; an exception fails every stage of the task.

    A batch is handed on only after the stage's guard finds its models and defenses unchanged
    (fingerprints taken when the resolver first guarded them, before any sanity check or attack
    ran on them); a plugin that changed one fails the task, and the changed object is rebuilt
    for the next task.
    """
    try:
        guards = {s.key: cell_guard(s.cell, resolver) for s in task.stages}
        flags = {s.key: checks.run_checks(s.cell, resolver) for s in task.stages if s.checks}
        for stage in task.stages:
            if not stage.batches:  # no batch of the stage follows whose check would catch a change the checks made
                guards[stage.key].check()
        if len(task.stages) == 1:
            (stage,) = task.stages
            batches = evaluate_cell(stage.cell, stage.key, resolver, stage.batches)
        else:
            batches = _cascade(task, resolver)
        for done in batches:
            guards[done.key].check()
            yield done
        for stage in task.stages:
            yield TaskDone(stage.key, flags.get(stage.key))
    except Exception as err:  # one broken cell (or cascade) must not stop the grid (DESIGN §5)
        if isinstance(err, ObjectModified):
            resolver.forget(err.kind, err.spec, str(err))
        for stage in task.stages:
            yield TaskFailed(stage.key, f"{type(err).__name__}: {err}",
                             f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}")


def _cascade(task: Task, resolver: Resolver) -> Iterator[BatchDone]:
    """Batch by batch, each stage attacks only the examples every earlier stage left robust."""
    for batch in sorted({b for stage in task.stages for b in stage.batches}):
        last = max(i for i, stage in enumerate(task.stages) if batch in stage.batches)
        alive = None
        for stage in task.stages[: last + 1]:
            if batch in stage.batches:
                (done,) = evaluate_cell(stage.cell, stage.key, resolver, (batch,), only=alive)
                yield done
                robust = [row["robust_correct"] for row in done.rows]
            else:
                robust = task.survivors[(stage.key, batch)]
            left = torch.tensor(robust, dtype=torch.bool)
            alive = left if alive is None else alive & left
