"""Running cells: clean pass, attack of the clean-correct examples, verification, re-scoring, storing.

``evaluate_cell`` is a function of the cell and the store only (no global state), so an
executor that ships cells elsewhere (Ray) can call it unchanged.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from robench import checks
from robench.cell import Cell, cell_key
from robench.env import batch_seed, environment
from robench.errors import ConfigError
from robench.missing import Expected, missing_key, split_missing
from robench.resolve import Resolver
from robench.scoring import score_batch
from robench.store import MissingRecord, Store
from robench.views import attack_view, attacked_defense, restored_points, restoring_defense, scored_view


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


def evaluate_cell(cell: Cell, key: str, resolver: Resolver, store: Store, *, progress: bool = False) -> dict:
    """Evaluate the missing batches of one cell into the store and return its summary."""
    examples = resolver.cell_examples(cell)
    scorer = scored_view(cell, resolver)
    attacker = attack_view(cell, resolver)
    attack = resolver.attack(cell.attack)
    device = resolver.device
    done = store.completed_batches(key)
    starts = range(0, len(examples), cell.batch_size)
    for batch, start in enumerate(tqdm(starts, desc="batches", leave=False, disable=not progress)):
        if batch in done:
            continue
        began = time.perf_counter()
        torch.manual_seed(batch_seed(cell.seed, batch))
        x = examples.x[start : start + cell.batch_size].to(device)
        y = examples.y[start : start + cell.batch_size].to(device)
        if cell.setting == "restored":
            x = restored_points(cell, resolver, x, y)
        score = score_batch(scorer, attacker, attack, x, y, cell.threat, draws=cell.draws)
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
        store.add_batch(key, batch, rows, time.perf_counter() - began)
    return summarise(store.examples(key))


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


def prepare(cells: list[Cell], resolver: Resolver) -> list[tuple[Cell, str, dict]]:
    """Check every cell and compute its key; any configuration error stops the grid before it runs."""
    prepared, problems = [], []
    for cell in cells:
        try:
            cell = normalise(cell, resolver)
            resolver.check(cell)
            provenance = resolver.provenance(cell)
        except Exception as err:  # every configuration problem is reported, then the grid stops
            problems.append(f"{_describe(cell)}: {err}")
            continue
        prepared.append((cell, cell_key(cell, provenance), provenance))
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
) -> GridResult:
    """Evaluate every cell not yet in the store; failures become error rows and the grid goes on.

    Cells naming a plugin or checkpoint that ``expected`` declares may be absent, and is, are
    stored as missing cells with their reason; ``labels`` (cell -> paper labels) are stored with
    the benchmark's latest grid for paper-layout reports; ``objects`` (name -> in-memory model
    or defense) take precedence over registered plugins of the same name.
    """
    cells, missing = split_missing(cells, expected)
    resolver = Resolver(device, objects)
    prepared = prepare(cells, resolver)
    result = GridResult(missing={missing_key(cell): reason for cell, reason in missing.items()})
    env = environment(device)
    run_id = store.start_run(command, env)
    store.set_members(benchmark, [key for _, key, _ in prepared])
    store.set_missing(benchmark, [MissingRecord(missing_key(c), c.to_json(), r) for c, r in missing.items()])
    keys = [(cell, key) for cell, (_, key, _) in zip(cells, prepared)] + [(c, missing_key(c)) for c in missing]
    store.set_labels(benchmark, _labels_by_key(keys, labels or {}))
    bar = tqdm(prepared, desc=benchmark, unit="cell", disable=not progress)
    for cell, key, provenance in bar:
        bar.set_postfix_str(_describe(cell)[:60])
        stored = store.cell(key)
        if stored is not None and stored.status == "done":
            store.tag(key, benchmark)
            result.cached.append(key)
            continue
        spec = cell.to_json()
        record = {**provenance, "environment": env}
        try:
            store.begin_cell(key, spec, record, run_id, benchmark)
            flags = checks.run_checks(cell, resolver)
            summary = evaluate_cell(cell, key, resolver, store, progress=progress)
            store.finish_cell(key, summary, flags)
            result.computed.append(key)
        except Exception as err:  # one broken cell must not stop the grid (DESIGN §5)
            message = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            store.fail_cell(key, spec, record, run_id, benchmark, message)
            result.failed[key] = f"{type(err).__name__}: {err}"
    store.finish_run(run_id)
    return result


def _labels_by_key(keys: list[tuple[Cell, str]], labels: Mapping[Cell, Sequence[dict]]) -> dict[str, list[dict]]:
    by_key: dict[str, list[dict]] = {}
    for cell, key in keys:
        found = by_key.setdefault(key, [])
        found += [label for label in labels.get(cell, ()) if label not in found]
    return by_key


def _describe(cell: Cell) -> str:
    return f"{cell.defense} | {cell.attack} | {cell.setting} | {cell.model} | {cell.threat}"
