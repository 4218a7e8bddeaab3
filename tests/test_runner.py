"""The runner and store: per-example outcomes, caching by key, resume, error rows, verification."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robench.attack import Attack
from robench.cell import Cell, cell_key
from robench.resolve import ConfigError, Resolver
from robench.compute import evaluate_cell
from robench.runner import run_grid
from robench.store import Store
from robench.threat import ThreatModel, ThreatModelViolation

CPU = torch.device("cpu")
THREAT = ThreatModel("Linf", 6 / 255)  # the tiny model on synthetic data is partly robust here


def tiny_cell(**changes) -> Cell:
    base = dict(dataset="synthetic", model="tiny", defense="none", attack="pgd:steps=5", threat=THREAT,
                setting="adaptive", n=96, batch_size=32)
    return Cell(**{**base, **changes})


def test_outcomes_are_stored_per_example_and_summarised(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid([tiny_cell()], store, benchmark="t", device=CPU, progress=False)
        (key,) = result.computed
        rows = store.examples(key)
        record = store.cell(key)
    assert len(rows) == 96 and len({r["example_id"] for r in rows}) == 96
    assert all(r["attacked"] == r["clean_correct"] for r in rows), "only clean-correct examples are attacked"
    assert all(r["robust_correct"] <= r["clean_correct"] for r in rows)
    assert all(r["perturbation"] <= 6 / 255 + 1e-6 for r in rows)
    assert record.status == "done"
    assert record.summary["robust_correct"] == sum(r["robust_correct"] for r in rows)
    assert 0 < record.summary["robust_acc"] < record.summary["clean_acc"] == 1.0


def test_a_second_run_finds_every_cell_in_the_store(tmp_path):
    cells = [tiny_cell(), tiny_cell(attack="fgsm")]
    with Store(tmp_path / "s.sqlite") as store:
        first = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        second = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        count = store._db.execute("SELECT COUNT(*) FROM examples").fetchone()[0]
    assert len(first.computed) == 2 and not first.cached
    assert not second.computed and sorted(second.cached) == sorted(first.computed)
    assert count == 2 * 96


def test_same_cell_same_numbers_in_a_fresh_store(tmp_path):
    outcomes = []
    for name in ("a", "b"):
        with Store(tmp_path / f"{name}.sqlite") as store:
            (key,) = run_grid([tiny_cell()], store, benchmark="t", device=CPU, progress=False).computed
            outcomes.append(store.examples(key))
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize(
    "change",
    [
        dict(dataset="synthetic:size=2048"), dict(model="tiny:num_classes=10,size=32"), dict(defense="bit-depth"),
        dict(attack="pgd:steps=6"), dict(setting="oblivious"), dict(threat=ThreatModel("Linf", 7 / 255)),
        dict(threat=ThreatModel("L2", 6 / 255)), dict(n=95), dict(sample_seed=1), dict(seed=1), dict(draws=3),
        dict(eot=3), dict(batch_size=16), dict(split="train"),
        dict(setting="transfer", sources=("tiny",)),
    ],
)
def test_changing_any_cell_field_changes_the_key(change):
    provenance = {"robench": "0", "attack_version": "1", "checkpoints": {}, "data": "x"}
    assert cell_key(tiny_cell(**change), provenance) != cell_key(tiny_cell(), provenance)


@pytest.mark.parametrize(
    "field, value",
    [("robench", "9.9"), ("attack_version", "2"), ("defense_versions", {"none": "2"}),
     ("checkpoints", {"tiny": {"w.pt": "beef"}}), ("data", "other-fingerprint")],
)
def test_changing_versions_checkpoints_or_data_changes_the_key(field, value):
    provenance = {"robench": "0", "attack_version": "1", "defense_versions": {"none": "1"},
                  "checkpoints": {"tiny": {"w.pt": "cafe"}}, "data": "fingerprint"}
    assert cell_key(tiny_cell(), {**provenance, field: value}) != cell_key(tiny_cell(), provenance)


def test_the_resolver_provenance_carries_data_fingerprint_and_versions():
    resolver = Resolver(CPU)
    first = resolver.provenance(tiny_cell())
    second = resolver.provenance(tiny_cell(n=95))
    assert first["data"] != second["data"]
    assert first["attack_version"] == "1" and first["defense_versions"] == {"none": "1"}


def test_a_failing_cell_becomes_an_error_row_and_the_grid_goes_on(tmp_path):
    two_channel = dict(dataset="synthetic:channels=2", model="tiny:channels=2")
    cells = [tiny_cell(defense="jpeg", **two_channel), tiny_cell(**two_channel)]
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        (failed_key,) = result.failed
        record = store.cell(failed_key)
    assert len(result.computed) == 1 and not result.ok
    assert record.status == "error" and "JPEG needs 1 or 3 channels" in record.error


def test_configuration_errors_stop_the_grid_before_anything_runs(tmp_path):
    cells = [tiny_cell(), tiny_cell(model="tiny:channels=1")]
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(ConfigError, match=r"(?s)1 of 2 cells cannot run:.*inputs shaped \(1, 32, 32\)"):
            run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        assert store._db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0


def test_an_attack_norm_it_does_not_support_is_a_configuration_error(tmp_path):
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(ConfigError, match="supports Linf, not L2"):
        run_grid([tiny_cell(attack="fgsm", threat=ThreatModel("L2", 0.5))], store, benchmark="t", device=CPU,
                 progress=False)


class Escaping(Attack):
    """Returns points far outside the ball: the base class must refuse them, not project them."""

    def run(self, model, x, y, threat):
        return (x + 0.5).clamp(0, 1)


def test_an_example_outside_the_threat_model_fails_the_cell_loudly(tmp_path):
    cell = tiny_cell()
    resolver = Resolver(CPU)
    resolver.attack = lambda spec: Escaping()
    computed = evaluate_cell(cell, "k", resolver)
    with pytest.raises(ThreatModelViolation, match="attack Escaping returned .* leave the Linf 6/255 threat model"):
        next(computed)


def test_stochastic_defense_is_scored_on_every_draw(tmp_path):
    from robench.runner import summarise

    rows = [
        {"clean_correct": 1, "clean_draw_acc": 1.0, "attacked": 1, "robust_correct": 0, "robust_draw_acc": 0.5,
         "perturbation": 0.01},
        {"clean_correct": 1, "clean_draw_acc": 1.0, "attacked": 1, "robust_correct": 1, "robust_draw_acc": 1.0,
         "perturbation": 0.02},
    ]
    summary = summarise(rows)
    assert summary["robust_acc"] == 0.5 and summary["robust_draw_acc"] == 0.75


def test_deterministic_defenses_are_evaluated_with_one_draw(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        (key,) = run_grid([tiny_cell(draws=5, eot=5)], store, benchmark="t", device=CPU, progress=False).computed
        assert store.cell(key).spec["draws"] == 1 and store.cell(key).spec["eot"] == 1


# resume after an interruption -------------------------------------------------------------------------

SLOW_GRID = [
    "--dataset", "synthetic:image_size=96", "--model", "tiny:size=96", "--defense", "bit-depth", "--attack",
    "pgd:steps=30", "--eps", "6/255", "-n", "384", "--batch-size", "24", "--setting", "adaptive", "--no-progress",
]


def _robench(args, store: Path, results: Path, **kwargs):
    command = [sys.executable, "-m", "robench.cli", "run", *SLOW_GRID, "--store", str(store), "--results",
               str(results), *args]
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that; restore the default so Python turns Ctrl-C into KeyboardInterrupt wherever pytest runs.
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def _batches(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with sqlite3.connect(store, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _outcomes(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT * FROM examples ORDER BY key, example_id").fetchall()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("reference")
    reference = _robench([], folder / "ref.sqlite", folder / "ref")
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    return folder / "ref.sqlite"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_an_interrupted_run_resumes_to_the_same_numbers(tmp_path, uninterrupted, sig):
    store = tmp_path / "cut.sqlite"
    victim = _robench([], store, tmp_path / "cut")
    deadline = time.time() + 120
    while _batches(store) < 3 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be interrupted; make SLOW_GRID slower"
    os.kill(victim.pid, sig)
    victim.wait(timeout=60)
    cut_at = _batches(store)
    assert 3 <= cut_at < 16

    resumed = _robench([], store, tmp_path / "cut")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert _batches(store) == 16
    assert _outcomes(store) == _outcomes(uninterrupted), "resume must give the uninterrupted numbers"


@pytest.mark.slow
def test_kills_at_many_points_all_resume_to_the_same_numbers(tmp_path, uninterrupted):
    """SIGKILL after 1, 4, 8, 12 and 15 stored batches, each landing wherever the run is (often inside a batch)."""
    store = tmp_path / "cut.sqlite"
    for kill_after in (1, 4, 8, 12, 15):
        victim = _robench([], store, tmp_path / "cut")
        deadline = time.time() + 300
        while _batches(store) < kill_after and victim.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        if victim.poll() is None:
            os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=60)
        assert _batches(store) <= 16
    resumed = _robench([], store, tmp_path / "cut")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert _batches(store) == 16
    assert _outcomes(store) == _outcomes(uninterrupted), "every kill and resume must give the uninterrupted numbers"


def test_cells_are_frozen_and_hashable():
    cell = tiny_cell()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.n = 3
    assert len({cell, tiny_cell()}) == 1
    assert Cell.from_json(cell.to_json()) == cell


def test_a_benchmark_shows_the_cells_of_its_latest_grid(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run_grid([tiny_cell(), tiny_cell(attack="fgsm")], store, benchmark="t", device=CPU, progress=False)
        run_grid([tiny_cell(attack="fgsm")], store, benchmark="t", device=CPU, progress=False)
        members = [r.spec["attack"] for r in store.benchmark_cells("t")]
        kept = store._db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    assert members == ["fgsm"] and kept == 2, "dropped cells leave the table but stay in the store"
