"""The ``restored`` setting (DIR Eq. 9): attack the bare model around the defense's restoration."""

from __future__ import annotations

import pytest
import torch

from robench.cell import Cell
from robench.grid import expand
from robench.resolve import ConfigError, Resolver
from robench.runner import run_grid
from robench.views import attack_view
from robench.spec import SpecError
from robench.store import Store
from robench.threat import ThreatModel

CPU = torch.device("cpu")
THREAT = ThreatModel("Linf", 6 / 255)  # the tiny model on synthetic data is partly robust here
DEFENSE = "bit-depth"  # deterministic, so restorations can be recomputed exactly


def cell(**changes) -> Cell:
    base = dict(dataset="synthetic", model="tiny", defense=DEFENSE, attack="pgd:steps=5", threat=THREAT,
                setting="restored", n=64, batch_size=32)
    return Cell(**{**base, **changes})


def run_one(tmp_path, the_cell: Cell) -> list[dict]:
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid([the_cell], store, benchmark="t", device=CPU, progress=False)
        assert result.ok, result.failed
        return store.examples(result.computed[0])


def test_restore_from_belongs_to_the_restored_setting():
    with pytest.raises(SpecError, match="restored"):
        cell(setting="adaptive", restore_from="pgd")
    assert "restore_from" not in cell(setting="adaptive").to_json(), "other settings keep their keys"
    restored = cell(restore_from="pgd:steps=20")
    assert Cell.from_json(restored.to_json()) == restored


def test_points_are_restored_natural_images_scored_by_the_bare_model(tmp_path):
    rows = run_one(tmp_path, cell())
    resolver = Resolver(CPU)
    examples = resolver.cell_examples(cell())
    model, defense = resolver.model(cell().model), resolver.defense(cell().defense)
    with torch.no_grad():
        expected = model(defense(examples.x)).argmax(1) == examples.y
    assert [r["clean_correct"] for r in rows] == expected.int().tolist()
    assert attack_view(cell(), resolver) is model
    assert all(r["perturbation"] <= THREAT.eps + 1e-6 for r in rows), "the ball is around the restoration"
    robust = sum(r["robust_correct"] for r in rows)
    assert 0 < robust < expected.sum(), "PGD breaks some but not all restored points"


def test_restoring_an_attack_starts_from_the_pipelines_adversarial_examples(tmp_path):
    """With a deterministic defense and attack, g(x') is right exactly where the adaptive attack failed."""
    attack = "pgd:steps=5,random_start=false"
    restored = run_one(tmp_path / "r", cell(restore_from=attack))
    adaptive = run_one(tmp_path / "a", cell(setting="adaptive", attack=attack))
    attacked = [a["attacked"] == 1 for a in adaptive]
    assert any(attacked)
    assert [r["clean_correct"] for r, hit in zip(restored, attacked) if hit] == [
        a["robust_correct"] for a, hit in zip(adaptive, attacked) if hit
    ]
    natural = run_one(tmp_path / "n", cell())
    assert sum(r["clean_correct"] for r in restored) < sum(r["clean_correct"] for r in natural)


def test_a_restoring_attack_that_cannot_attack_the_pipeline_fails_before_running(tmp_path):
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(ConfigError, match="mask-adaptive"):
        run_grid([cell(restore_from="mask-adaptive")], store, benchmark="t", device=CPU, progress=False)


def test_grids_give_restore_from_to_restored_cells_only():
    cells = expand(
        {"dataset": "synthetic", "models": ["tiny"], "defenses": [DEFENSE], "attacks": ["pgd"],
         "settings": ["adaptive", "restored"], "eps": ["6/255"], "restore_from": "pgd:steps=20"},
        {},
    )
    by_setting = {c.setting: c for c in cells}
    assert by_setting["adaptive"].restore_from is None
    assert str(by_setting["restored"].restore_from) == "pgd:steps=20"


def test_restored_pgd_is_dir_eq9_and_runs_only_in_the_restored_setting(tmp_path):
    rows = run_one(tmp_path, cell(attack="restored-pgd", restore_from="pgd:steps=5"))
    assert len(rows) == 64
    attack = Resolver(CPU).attack(cell(attack="restored-pgd").attack)
    assert attack.steps == 20
    with Store(tmp_path / "t.sqlite") as store, pytest.raises(ConfigError, match="restored setting"):
        run_grid([cell(attack="restored-pgd", setting="adaptive")], store, benchmark="t", device=CPU,
                 progress=False)
