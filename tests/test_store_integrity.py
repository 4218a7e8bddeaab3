"""Results that cannot be poisoned: plugins that change their objects, concurrent writers, damage, bad stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch
from click.testing import CliRunner

from robench.cell import Cell
from robench.checks import outcome_flags
from robench.cli import main
from robench.guard import changes, fingerprint
from robench.report import leaderboard
from robench.runner import run_grid
from robench.store import BatchConflict, Store, StoreDamaged, StoreError, claim_alive, new_owner
from robench.threat import ThreatModel
from tests.hostile.mutating import serve_hostile

CPU = torch.device("cpu")


def tiny_cell(**changes) -> Cell:
    base = dict(dataset="synthetic", model="tiny", defense="none", attack="fgsm", threat=ThreatModel("Linf", 6 / 255),
                n=32, batch_size=8)
    return Cell(**{**base, **changes})


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _fresh(tmp_path, cell: Cell, name: str) -> list[dict]:
    """The rows of ``cell`` computed alone in a fresh store."""
    with Store(tmp_path / f"{name}.sqlite") as store:
        (key,) = run_grid([cell], store, benchmark="ref", device=CPU, progress=False).computed
        return store.examples(key)


# 1. plugins that change the objects they are given -------------------------------------------------------------


def test_an_attack_that_zeroes_the_model_fails_its_cell_and_the_next_cell_sees_the_original(tmp_path, monkeypatch):
    serve_hostile(monkeypatch)
    cells = [tiny_cell(attack="zero-weights"), tiny_cell(attack="fgsm")]
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        (bad,) = result.failed
        (good,) = result.computed
        assert store.completed_batches(bad) == set(), "no batch computed on a changed model is stored"
        after = store.examples(good)
    assert "ObjectModified: model tiny was modified during this cell" in result.failed[bad]
    assert "by attack zero-weights" in result.failed[bad]
    assert after == _fresh(tmp_path, tiny_cell(attack="fgsm"), "ref"), "the next cell ran on a rebuilt model"


def test_the_smallest_change_to_one_weight_is_caught(tmp_path, monkeypatch):
    serve_hostile(monkeypatch)
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid([tiny_cell(attack="nudge-one-weight")], store, benchmark="t", device=CPU, progress=False)
    (message,) = result.failed.values()
    assert "model tiny was modified" in message and "by attack nudge-one-weight" in message


def test_a_defense_that_keeps_state_in_a_buffer_is_named(tmp_path, monkeypatch):
    serve_hostile(monkeypatch)
    cells = [tiny_cell(defense="counting"), tiny_cell(defense="none")]
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
    (message,) = result.failed.values()
    assert "defense counting was modified during this cell (calls) by defense counting or attack fgsm" in message
    assert len(result.computed) == 1


def test_an_in_memory_model_that_was_changed_is_refused_afterwards(tmp_path, monkeypatch):
    serve_hostile(monkeypatch)
    from robench import registry

    model = registry.build("models", "tiny").eval()
    cells = [tiny_cell(model="object-mine", attack="zero-weights"), tiny_cell(model="object-mine")]
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(cells, store, benchmark="t", device=CPU, progress=False, objects={"object-mine": model})
    first, second = (result.failed[k] for k in result.failed)
    assert "model object-mine was modified" in first
    assert "object-mine was modified by an earlier cell and an in-memory object cannot be rebuilt" in second


def test_fingerprints_see_one_float_step_and_a_swap_and_nothing_else():
    module = torch.nn.Linear(4, 3)
    before = fingerprint(module)
    assert changes(before, fingerprint(module)) == []
    with torch.no_grad():
        module.weight[0, 0] = torch.nextafter(module.weight[0, 0], torch.tensor(9.0))
    assert changes(before, fingerprint(module)) == ["weight"]
    module = torch.nn.Linear(4, 3)
    before = fingerprint(module)
    with torch.no_grad():
        module.bias[[0, 1]] = module.bias[[1, 0]].clone()
    assert changes(before, fingerprint(module)) == ["bias"]


def _row(clean: int, robust: int, perturbation: float) -> dict:
    return {"clean_correct": clean, "attacked": clean, "robust_correct": robust, "perturbation": perturbation}


@pytest.mark.parametrize("rows, deterministic, flagged", [
    ([_row(1, 1, 0.0), _row(1, 0, 0.02), _row(0, 0, 0.0)], True, False),  # honest
    ([_row(1, 1, 0.0), _row(0, 1, 0.0)], True, True),  # robust but not clean
    ([_row(1, 0, 0.0)], True, True),  # lost with no perturbation, deterministic scoring
    ([_row(1, 0, 0.0)], False, False),  # the same under random scoring can happen
])
def test_impossible_rows_are_flagged(rows, deterministic, flagged):
    assert outcome_flags(rows, deterministic=deterministic) == (["impossible-outcomes"] if flagged else [])


# 2. concurrent writers ------------------------------------------------------------------------------------------


def _example(i: int, batch: int = 0, robust: int = 1) -> dict:
    return {"example_id": f"test/{i}", "batch": batch, "label": 0, "clean_correct": 1, "clean_draw_acc": 1.0,
            "attacked": 1, "robust_correct": robust, "robust_draw_acc": float(robust), "adv_prediction": 0,
            "perturbation": 0.01}


def _begun(store: Store, key: str = "k") -> None:
    store.begin_cell(key, tiny_cell(n=4, batch_size=2).to_json(), {}, store.start_run("", {}), "b")


def test_a_batch_written_twice_is_accepted_and_a_different_one_is_refused_naming_both(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        _begun(store)
        store.add_batch("k", 0, [_example(0), _example(1)], 0.1)
        store.add_batch("k", 0, [_example(0), _example(1)], 0.2)
        with pytest.raises(BatchConflict, match=r"batch 0 of cell k differs from the stored one in 1 of 2 examples "
                                                r"\(first: test/1: robust_correct stored 1 vs new 0"):
            store.add_batch("k", 0, [_example(0), _example(1, robust=0)], 0.1)
        assert len(store.examples("k")) == 2 and store.completed_batches("k") == {0}


def test_a_partly_present_batch_is_completed(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        _begun(store)
        store.add_batch("k", 0, [_example(0), _example(1)], 0.1)
        store._db.execute("DELETE FROM examples WHERE example_id = 'test/1'")
        store._db.execute("DELETE FROM batches")
        store.add_batch("k", 0, [_example(0), _example(1)], 0.1)
        assert store.examples("k") == [_example(0), _example(1)]


def test_a_done_cell_keeps_its_state(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        _begun(store)
        store.add_batch("k", 0, [_example(0), _example(1)], 0.1)
        store.finish_cell("k", {"n": 2, "robust_correct": 2}, [])
        store.fail_cell("k", {}, {}, 1, "b", "a late loser's error")
        store.begin_cell("k", {}, {}, 1, "b")
        store.finish_cell("k", {"n": 9}, ["zero-gradient"])
        record = store.cell("k")
    assert (record.status, record.error, record.flags) == ("done", None, [])
    assert {k: v for k, v in record.summary.items() if not k.endswith("_sha256")} == {"n": 2, "robust_correct": 2}


def test_claims_hold_for_a_live_owner_and_expire_with_it(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = new_owner().split(":")[0]
    with Store(tmp_path / "s.sqlite") as store:
        mine, other = new_owner(), new_owner()
        assert store.claim("k", mine) == "claimed"
        assert store.claim("k", other) == "busy"
        store.release("k", mine)
        assert store.claim("k", other) == "claimed"
        store._db.execute("UPDATE claims SET owner = ?", (f"{host}:{dead.stdout.strip()}:x",))
        assert store.claim("k", mine) == "claimed", "the claim of a process that is gone expires at once"
        store._db.execute("UPDATE claims SET owner = 'elsewhere:1:x', heartbeat = ?", (time.time(),))
        assert store.claim("k", mine) == "busy", "another host's claim holds while its heartbeat is fresh"
        store._db.execute("UPDATE claims SET heartbeat = heartbeat - 3600")
        assert store.claim("k", mine) == "claimed", "and expires when the heartbeat stops"
    assert not claim_alive("elsewhere:1:x", time.time() - 3600)


def test_a_cell_another_run_holds_is_read_after_the_rest_of_the_grid(tmp_path):
    cells = [tiny_cell(), tiny_cell(attack="pgd:steps=2")]
    with Store(tmp_path / "s.sqlite") as store:
        held = run_grid(cells[:1], store, benchmark="probe", device=CPU, progress=False).computed[0]
        store._db.execute("DELETE FROM examples"), store._db.execute("DELETE FROM batches")
        store._db.execute("UPDATE cells SET status = 'running'")
        other = new_owner()
        assert store.claim(held, other) == "claimed"
        order = []
        finish = store.add_batch

        def record_order(key, *args):
            order.append(key)
            return finish(key, *args)

        store.add_batch = record_order
        threading.Timer(1.0, lambda: Store(store.path).release(held, other)).start()  # the other run dies
        result = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
    assert sorted(result.computed) == sorted(set(order)) and len(result.computed) == 2
    assert order[-1] == held and order[0] != held, "the held cell waits until the others are done"


def test_a_cell_another_run_failed_is_reported_with_its_error(tmp_path):
    cell = tiny_cell()
    with Store(tmp_path / "s.sqlite") as store:
        key = run_grid([cell], store, benchmark="probe", device=CPU, progress=False).computed[0]
        store._db.execute("UPDATE cells SET status = 'running', summary = NULL")
        other = new_owner()
        store.claim(key, other)

        def fail_then_release():
            with Store(store.path) as elsewhere:
                elsewhere.fail_cell(key, cell.to_json(), {}, 1, "probe", "RuntimeError: out of memory\ntraceback")
                elsewhere.release(key, other)

        threading.Timer(0.5, fail_then_release).start()
        result = run_grid([cell], store, benchmark="t", device=CPU, progress=False)
    assert result.failed == {key: "RuntimeError: out of memory"} and not result.computed


def test_ad_hoc_grids_sharing_a_name_add_to_its_cells(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        run_grid([tiny_cell()], store, benchmark="mine", device=CPU, progress=False, additive=True)
        run_grid([tiny_cell(attack="pgd:steps=2")], store, benchmark="mine", device=CPU, progress=False, additive=True)
        assert sorted(r.spec["attack"] for r in store.benchmark_cells("mine")) == ["fgsm", "pgd:steps=2"]


CONCURRENT = ["run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--defense", "bit-depth",
              "--attack", "fgsm", "--attack", "pgd:steps=3", "--eps", "6/255", "-n", "48", "--batch-size", "8",
              "--name", "both", "--no-progress"]


def test_two_runs_on_one_store_both_succeed_with_one_copy_of_every_row(tmp_path):
    command = [sys.executable, "-m", "robench.cli", *CONCURRENT, "--store", str(tmp_path / "s.sqlite")]
    runs = [subprocess.Popen([*command, "--results", str(tmp_path / f"r{i}")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        cells = db.execute("SELECT status, error FROM cells").fetchall()
        rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT key || example_id) FROM examples").fetchone()
        members = db.execute("SELECT COUNT(*) FROM benchmark_cells WHERE benchmark = 'both'").fetchone()[0]
    assert cells == [("done", None)] * 4 and rows == (4 * 48, 4 * 48) and members == 4
    computed = sum(int(out.split(" cells computed")[0].split()[-1]) for out, _ in outputs)
    assert computed == 4, "each cell is computed once, by one of the runs"


# 3. damage ------------------------------------------------------------------------------------------------------


@pytest.fixture
def finished(tmp_path):
    """A store with two finished cells of 32 examples (batches of 8), its path and the first cell's rows."""
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        keys = run_grid([tiny_cell(), tiny_cell(attack="pgd:steps=2")], store, benchmark="t", device=CPU,
                        progress=False).computed
        return path, keys[0], store.examples(keys[0])


def test_rows_lost_from_a_finished_cell_are_detected_and_repaired(finished, tmp_path):
    path, key, rows = finished
    with Store(path) as store:
        store._db.execute("DELETE FROM examples WHERE key = ? AND example_id IN "
                          "(SELECT example_id FROM examples WHERE key = ? ORDER BY example_id LIMIT 5)", (key, key))
        with pytest.raises(StoreDamaged, match=f"{key[:12]}: n 32 in the summary but 27 in the rows"):
            leaderboard(store, "t")
    board = invoke("leaderboard", "--store", path, "--results", tmp_path / "r")
    assert board.exit_code == 2 and "robench verify --repair" in board.output
    found = invoke("verify", "--store", path)
    assert found.exit_code == 1 and f"damaged cell {key[:12]}: n 32 in the summary but 27 in the rows" in found.output
    repaired = invoke("verify", "--repair", "--store", path, "--device", "cpu")
    assert repaired.exit_code == 0, repaired.output
    assert f"recomputed {key[:12]}" in repaired.output and "sound after repair" in repaired.output
    with Store(path) as store:
        assert store.examples(key) == rows and store.cell(key).status == "done"
        assert (leaderboard(store, "t")["n"] == 32).all()
    assert invoke("verify", "--store", path).exit_code == 0


def test_an_altered_value_is_found_by_verify_and_recomputed(finished):
    path, key, rows = finished
    with Store(path) as store:
        store._db.execute("UPDATE examples SET perturbation = perturbation / 2 WHERE key = ? AND example_id = 'test/3'",
                          (key,))
        assert store.damage() == {}, "counts and sums still agree: the cheap check on read cannot see it"
    found = invoke("verify", "--store", path)
    assert found.exit_code == 1
    assert f"damaged cell {key[:12]}: the rows' values differ from those the cell finished with" in found.output
    assert invoke("verify", "--repair", "--store", path, "--device", "cpu").exit_code == 0
    with Store(path) as store:
        assert store.examples(key) == rows


def test_a_damaged_record_is_refused_on_read_and_removed_by_repair(finished, tmp_path):
    path, key, rows = finished
    with Store(path) as store:
        store._db.execute("UPDATE cells SET summary = replace(summary, '\"robust_acc\": 0.', '\"robust_acc\": 1.') "
                          "WHERE key = ?", (key,))
        with pytest.raises(StoreDamaged, match=f"{key[:12]}: its stored record .* differs from the one it finished"):
            leaderboard(store, "t")
    repaired = invoke("verify", "--repair", "--store", path)
    assert repaired.exit_code == 0 and "removed: rerun `robench run t` to compute it again" in repaired.output
    with Store(path) as store:
        assert store.cell(key) is None and len(store.benchmark_cells("t")) == 1
        result = run_grid([tiny_cell(), tiny_cell(attack="pgd:steps=2")], store, benchmark="t", device=CPU,
                          progress=False)
        assert result.computed == [key] and store.examples(key) == rows


def test_a_half_deleted_batch_resumes_to_the_same_rows(finished):
    path, key, rows = finished
    with Store(path) as store:
        store._db.execute("DELETE FROM examples WHERE key = ? AND batch = 1 AND example_id IN "
                          "(SELECT example_id FROM examples WHERE key = ? AND batch = 1 LIMIT 4)", (key, key))
        store._db.execute("UPDATE cells SET status = 'running' WHERE key = ?", (key,))  # as a killed run leaves it
        result = run_grid([tiny_cell(), tiny_cell(attack="pgd:steps=2")], store, benchmark="t", device=CPU,
                          progress=False)
        assert result.computed == [key] and result.ok
        assert store.examples(key) == rows


def _flip_page(path, table: str, offset: int) -> None:
    """Overwrite two bytes at ``offset`` of the first leaf page of ``table`` (a checkpointed store)."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        (page,) = db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' LIMIT 1",
                             (table,)).fetchone()
    data = bytearray(path.read_bytes())
    data[(page - 1) * size + offset : (page - 1) * size + offset + 2] = b"\xff\xff"
    path.write_bytes(bytes(data))


def test_a_damaged_table_page_is_salvaged_and_its_lost_rows_recomputed(finished):
    path, key, rows = finished
    with Store(path) as store:
        before = {k: store.examples(k) for k in [key, *(r.key for r in store.benchmark_cells("t") if r.key != key)]}
    _flip_page(path, "examples", 12)  # a cell pointer of a page of example rows: its rows cannot be read
    with pytest.raises(StoreError, match="is damaged"), Store(path) as store:
        run_grid([tiny_cell()], store, benchmark="t", device=CPU, progress=False)
    repaired = invoke("verify", "--repair", "--store", path)
    assert repaired.exit_code == 0, repaired.output
    assert f"the damaged one is kept as {path}.damaged" in repaired.output and "recomputed" in repaired.output
    with Store(path) as store:
        assert {k: store.examples(k) for k in before} == before


def test_a_damaged_schema_is_restored(finished):
    path, key, rows = finished
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    at = data.index(b"REFERENCES cells(key),\n    PRIMARY KEY (benchmark, key)") + 27  # in benchmark_cells only
    path.write_bytes(data[:at] + b"(" + data[at + 1:])  # "(RIMARY KEY": the schema text no longer parses
    assert invoke("leaderboard", "--store", path).exit_code == 2
    repaired = invoke("verify", "--repair", "--store", path)
    assert "schema of table benchmark_cells was damaged: restored" in repaired.output and repaired.exit_code == 0
    with Store(path) as store:
        assert store.examples(key) == rows


def test_a_broken_index_stops_a_run_and_verify_repair_rebuilds_it(finished):
    path, key, rows = finished
    _flip_page(path, "sqlite_autoindex_examples_1", 12)  # the third cell pointer of an index page
    with Store(path) as store, pytest.raises(StoreError, match=f"{path} is damaged .*robench verify --repair"):
        run_grid([tiny_cell()], store, benchmark="t", device=CPU, progress=False)
    repaired = invoke("verify", "--repair", "--store", path)
    assert repaired.exit_code == 0 and "indexes rebuilt: SQLite finds the file sound now" in repaired.output
    with Store(path) as store:
        assert store.examples(key) == rows


# 4. stores that cannot be used ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["leaderboard"], ["show", "abc"], ["report", "dir2023"], ["verify"]])
def test_a_file_that_is_not_a_store_is_named_with_what_to_do(tmp_path, command):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"not a database " * 100)
    result = invoke(*command, "--store", path)
    assert result.exit_code == 2
    assert f"{path} is not a robench store (file is not a database)" in result.output
    assert "move it away" in result.output


def test_a_run_on_a_file_that_is_not_a_store_exits_2(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"not a database " * 100)
    result = invoke(*CONCURRENT, "--store", path, "--results", tmp_path / "r")
    assert result.exit_code == 2 and "is not a robench store" in result.output and not (tmp_path / "r").exists()


@pytest.mark.parametrize("store, message", [
    ("{tmp}/file/s.sqlite", "cannot create store {tmp}/file/s.sqlite: {tmp}/file is a file, not a folder"),
    ("/dev/null", "store /dev/null is not a regular file"),
    ("", "the store path is empty"),
])
def test_unusable_store_paths_are_refused_before_anything_runs(tmp_path, store, message):
    (tmp_path / "file").write_text("")
    result = invoke(*CONCURRENT, "--store", store.format(tmp=tmp_path), "--results", tmp_path / "r")
    assert result.exit_code == 2 and message.format(tmp=tmp_path) in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"], "nothing was computed or written"


@pytest.mark.parametrize("command", [["leaderboard"], ["show", "abc"], ["report", "dir2023"], ["verify"]])
def test_read_only_commands_create_no_folder_and_leave_an_existing_store_as_it_was(
        tmp_path, command, finished, monkeypatch):
    path, key, _ = finished
    monkeypatch.chdir(tmp_path)
    nested = invoke(*command, "--store", tmp_path / "a" / "b" / "s.sqlite")
    assert nested.exit_code == 2 and "no store at" in nested.output and not (tmp_path / "a").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    shutil.copy(path, kept / "s.sqlite")
    before = (kept / "s.sqlite").read_bytes()
    invoke(*command, "--store", kept / "s.sqlite")
    assert os.listdir(kept) == ["s.sqlite"] and (kept / "s.sqlite").read_bytes() == before
