"""Running cells: clean pass, attack of the clean-correct examples, verification, re-scoring, storing.

``evaluate_cell`` is a function of the cell and the store only (no global state), so an
executor that ships cells elsewhere (Ray) can call it unchanged.

Several runs may share a store: each claims a cell before computing it. A cell another live
run holds is put aside and taken up after the rest of the grid: by then it is usually done
(read from the store), or failed (its error is reported), or its owner died (computed here).
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
from robench.guard import Guard, Guarded, ObjectModified
from robench.missing import Expected, missing_key, split_missing
from robench.resolve import Resolver
from robench.scoring import score_batch
from robench.store import MissingRecord, Store, new_owner
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


WAIT_S = 1.0  # how often a run polls a cell another run is computing


def evaluate_cell(
    cell: Cell, key: str, resolver: Resolver, store: Store, *, progress: bool = False, guard: Guard | None = None
) -> dict:
    """Evaluate the missing batches of one cell into the store and return its summary.

    A batch is stored only after ``guard`` (default: fingerprints taken now) finds the cell's
    models and defenses unchanged; a batch whose rows are partly missing is computed again.
    """
    guard = guard or cell_guard(cell, resolver)
    examples = resolver.cell_examples(cell)
    scorer = scored_view(cell, resolver)
    attacker = attack_view(cell, resolver)
    attack = resolver.attack(cell.attack)
    device = resolver.device
    complete, stored = store.completed_batches(key), store.stored_rows(key)
    starts = range(0, len(examples), cell.batch_size)
    for batch, start in enumerate(tqdm(starts, desc="batches", leave=False, disable=not progress)):
        if batch in complete and stored.get(batch) == min(cell.batch_size, len(examples) - start):
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
        guard.check()
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


def cell_guard(cell: Cell, resolver: Resolver) -> Guard:
    """Fingerprints of the models and defenses a cell uses, with the plugins that could change each."""
    attacks = [f"attack {cell.attack}"] + ([f"attack {cell.restore_from}"] if cell.restore_from is not None else [])
    models = [Guarded("models", spec, resolver.model(spec), tuple(attacks))
              for spec in dict.fromkeys((cell.model, *cell.sources))]
    defenses = [Guarded("defenses", spec, resolver.defense(spec), (f"defense {spec}", *attacks))
                for spec in dict.fromkeys(filter(None, (cell.defense, cell.attack_defense)))]
    return Guard(models + defenses)


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
    additive: bool = False,
) -> GridResult:
    """Evaluate every cell not yet in the store; failures become error rows and the grid goes on.

    Cells naming a plugin or checkpoint that ``expected`` declares may be absent, and is, are
    stored as missing cells with their reason; ``labels`` (cell -> paper labels) are stored with
    the benchmark's latest grid for paper-layout reports; ``objects`` (name -> in-memory model
    or defense) take precedence over registered plugins of the same name. The grid replaces the
    benchmark's cells, or adds to them (``additive``: an ad-hoc grid other runs may share).
    A damaged store stops the run before anything runs.
    """
    store.check_integrity()
    cells, missing = split_missing(cells, expected)
    resolver = Resolver(device, objects)
    prepared = prepare(cells, resolver)
    store.check_cells([key for _, key, _ in prepared], full=True)
    result = GridResult(missing={missing_key(cell): reason for cell, reason in missing.items()})
    env = environment(device)
    run_id = store.start_run(command, env)
    store.set_members(benchmark, [key for _, key, _ in prepared], replace=not additive)
    store.set_missing(benchmark, [MissingRecord(missing_key(c), c.to_json(), r) for c, r in missing.items()],
                      replace=not additive)
    keys = [(cell, key) for cell, (_, key, _) in zip(cells, prepared)] + [(c, missing_key(c)) for c in missing]
    store.set_labels(benchmark, _labels_by_key(keys, labels or {}), replace=not additive)
    writer = _Writer(store, resolver, new_owner(), run_id, benchmark, env, result, progress)
    elsewhere = []
    with store.heartbeats(writer.owner):
        bar = tqdm(prepared, desc=benchmark, unit="cell", disable=not progress)
        for cell, key, provenance in bar:
            bar.set_postfix_str(_describe(cell)[:60])
            claim = store.claim(key, writer.owner)
            if claim == "busy":
                elsewhere.append((cell, key, provenance))
            else:
                writer.settle(claim, cell, key, provenance)
        for cell, key, provenance in elsewhere:
            writer.await_other(cell, key, provenance)
    store.finish_run(run_id)
    return result


def recompute(keys: list[str], store: Store, *, device: torch.device, command: str = "") -> GridResult:
    """Compute again the stored cells ``keys`` (marked for recomputation) from their stored specs.

    A cell whose key the current plugins, checkpoints and data no longer give (a version
    changed since) cannot be recomputed here: it is reported failed with the benchmark to rerun.
    """
    resolver = Resolver(device)
    result = GridResult()
    run_id = store.start_run(command, environment(device))
    writer = _Writer(store, resolver, new_owner(), run_id, None, environment(device), result, False)
    with store.heartbeats(writer.owner):
        for key in keys:
            cell = Cell.from_json(store.spec(key))
            try:
                ((cell, now, provenance),) = prepare([cell], resolver)
            except ConfigError as err:
                result.failed[key] = f"cannot be rebuilt here: {err}"
                continue
            if now != key:
                result.failed[key] = ("the current plugins, checkpoints or data give this cell another key; "
                                      "rerun the benchmark it belongs to")
                continue
            writer.settle(writer.wait_for_claim(key), cell, key, provenance)
    store.finish_run(run_id)
    return result


@dataclass
class _Writer:
    """One run's writes to the store: claims, computations, error rows (DESIGN §5)."""

    store: Store
    resolver: Resolver
    owner: str
    run_id: int
    benchmark: str | None
    env: dict
    result: GridResult
    progress: bool

    def settle(self, claim: str, cell: Cell, key: str, provenance: dict) -> None:
        """Record a cell found done, or compute the claimed cell and release it; failures become error rows."""
        if claim == "done":
            self.store.tag(key, self.benchmark)
            self.result.cached.append(key)
            return
        spec = cell.to_json()
        record = {**provenance, "environment": self.env}
        try:
            self.store.begin_cell(key, spec, record, self.run_id, self.benchmark)
            guard = cell_guard(cell, self.resolver)
            flags = checks.run_checks(cell, self.resolver)
            guard.check()
            summary = evaluate_cell(cell, key, self.resolver, self.store, progress=self.progress, guard=guard)
            random = _scoring_is_random(cell, self.resolver)
            flags += checks.outcome_flags(self.store.examples(key), deterministic=not random)
            self.store.finish_cell(key, summary, flags)
            self.result.computed.append(key)
        except Exception as err:  # one broken cell must not stop the grid (DESIGN §5)
            if isinstance(err, ObjectModified):
                self.resolver.forget(err.kind, err.spec, str(err))
            message = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            self.store.fail_cell(key, spec, record, self.run_id, self.benchmark, message)
            self.result.failed[key] = f"{type(err).__name__}: {err}"
        finally:
            self.store.release(key, self.owner)

    def wait_for_claim(self, key: str) -> str:
        """Claim a cell, waiting while another live run holds it: ``'claimed'`` or ``'done'``."""
        while (claim := self.store.claim(key, self.owner)) == "busy":
            time.sleep(WAIT_S)
        return claim

    def await_other(self, cell: Cell, key: str, provenance: dict) -> None:
        """Wait for a cell another run holds: read its result, take its error, or compute it if that run died."""
        claim = self.wait_for_claim(key)
        stored = self.store.cell(key)
        if claim == "claimed" and stored is not None and stored.status == "error":
            self.store.release(key, self.owner)
            self.store.tag(key, self.benchmark)
            self.result.failed[key] = stored.error.splitlines()[0]
        else:
            self.settle(claim, cell, key, provenance)


def _scoring_is_random(cell: Cell, resolver: Resolver) -> bool:
    return cell.setting != "restored" and resolver.defense(cell.defense).stochastic


def _labels_by_key(keys: list[tuple[Cell, str]], labels: Mapping[Cell, Sequence[dict]]) -> dict[str, list[dict]]:
    by_key: dict[str, list[dict]] = {}
    for cell, key in keys:
        found = by_key.setdefault(key, [])
        found += [label for label in labels.get(cell, ()) if label not in found]
    return by_key


def _describe(cell: Cell) -> str:
    return f"{cell.defense} | {cell.attack} | {cell.setting} | {cell.model} | {cell.threat}"
