"""Cascades: each attack runs on what the earlier ones left robust; the worst case stays exact, the work shrinks."""

from __future__ import annotations

import sqlite3

import pytest
import torch
from click.testing import CliRunner

from robench.cli import main
from robench.errors import ConfigError
from robench.grid import expand
from robench.report import WORST_CASE, leaderboard
from robench.runner import run_grid
from robench.store import Store
from tests.test_plan import Counted

CPU = torch.device("cpu")
# Deterministic attacks (no random start): an example's outcome does not depend on which other
# examples share its batch, so the cascade must reproduce the full run's worst case.
ATTACKS = ["fgsm", "mifgsm:steps=3", "pgd:steps=5,random_start=false"]


def _grid(model: str, cascade: bool):
    return expand({"dataset": "synthetic", "models": [model], "defenses": ["none", "bit-depth"], "attacks": ATTACKS,
                   "eps": ["6/255"], "n": 96, "batch_size": 32, "cascade": cascade}, {})


def _run(path, cascade: bool) -> tuple[object, object, Counted]:
    counted = Counted()
    with Store(path) as store:
        result = run_grid(list(_grid(counted.name, cascade)), store, benchmark="b", device=CPU, progress=False,
                          objects={counted.name: counted.model})
        frame = leaderboard(store, "b")
    return result, frame, counted


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cascade")
    return {cascade: _run(folder / f"{cascade}.sqlite", cascade) for cascade in (False, True)}


def test_the_cascaded_worst_case_equals_the_full_one_for_less_work(runs):
    (_, plain, plain_work), (result, cascaded, cascaded_work) = runs[False], runs[True]
    assert result.ok and len(result.computed) == 6
    worst = {c: frame[frame["attack"] == WORST_CASE].set_index("defense")["robust_acc"].to_dict()
             for c, frame in ((False, plain), (True, cascaded))}
    assert worst[True] == worst[False] and len(worst[True]) == 2
    assert min(worst[True].values()) < 1.0, "some examples must break for the cascade to skip anything"
    assert cascaded_work.passes.backward < plain_work.passes.backward
    assert cascaded_work.passes.forward < plain_work.passes.forward


def test_every_cascaded_row_says_so_and_bounds_its_attack_from_above(runs):
    (_, plain, _), (_, cascaded, _) = runs[False], runs[True]
    by_cell = {(r.defense, r.attack): r for r in plain.itertuples()}
    for row in cascaded[cascaded["attack"] != WORST_CASE].itertuples():
        first = row.attack == ATTACKS[0]
        assert ("cascaded" in row.flags.split(";")) != first, "every attack after the first is flagged"
        assert row.robust_acc >= by_cell[(row.defense, row.attack)].robust_acc - 1e-12
        if first:  # the head of a cascade is the plain cell itself, shared by key
            assert row.key == by_cell[(row.defense, row.attack)].key


def test_a_cascade_resumes_from_stored_batches_to_the_same_rows(runs, tmp_path):
    path = tmp_path / "s.sqlite"
    _run(path, True)
    with sqlite3.connect(path) as db:  # keep the first attack whole, cut the later ones to their first batch
        later = "(SELECT key FROM cells WHERE spec LIKE '%\"cascade\"%')"
        db.execute(f"DELETE FROM examples WHERE batch > 0 AND key IN {later}")
        db.execute(f"DELETE FROM batches WHERE batch > 0 AND key IN {later}")
        db.execute(f"UPDATE cells SET status = 'running' WHERE key IN {later}")
        before = db.execute("SELECT * FROM examples ORDER BY key, example_id").fetchall()
    result, frame, _ = _run(path, True)
    assert len(result.computed) == 4 and len(result.cached) == 2
    with sqlite3.connect(path) as db:
        after = db.execute("SELECT * FROM examples ORDER BY key, example_id").fetchall()
    assert len(after) == 6 * 96 and set(before) <= set(after)
    cut = frame.set_index(["defense", "attack"])["robust_acc"]
    whole = runs[True][1].set_index(["defense", "attack"])["robust_acc"]
    assert cut.to_dict() == whole.to_dict()


def test_a_cascade_missing_an_earlier_attack_is_a_configuration_error(tmp_path):
    cells = [c for c in _grid("tiny", True) if c.attack.name != "mifgsm"]
    with Store(tmp_path / "s.sqlite") as store, pytest.raises(ConfigError, match="list every attack of a cascade"):
        run_grid(cells, store, benchmark="b", device=CPU, progress=False)


def test_run_cascade_flag_cascades_an_adhoc_grid(tmp_path):
    args = ["run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", "fgsm", "--attack",
            "pgd:steps=2", "--eps", "6/255", "-n", "32", "--batch-size", "32", "--store", str(tmp_path / "s.sqlite"),
            "--results", str(tmp_path / "r"), "--device", "cpu", "--no-progress", "--cascade"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "s.sqlite") as store:
        specs = sorted((r.spec.get("cascade", []), r.flags) for r in store.find_cells(""))
    assert specs == [([], []), (["fgsm"], ["cascaded"])]
