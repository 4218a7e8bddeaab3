"""Executors: the Ray executor stores, row for row, what the local executor stores."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from robench.cli import main
from robench.defense import Defense
from robench.executors import make_executor
from robench.objects import object_name
from robench.runner import run_grid
from robench.store import Store
from tests.test_runner import tiny_cell

CPU = torch.device("cpu")
TWO_CHANNEL = dict(dataset="synthetic:channels=2", model="tiny:channels=2")
GRID = [
    tiny_cell(),  # three batches of 32
    tiny_cell(attack="fgsm", defense="bit-depth"),
    tiny_cell(defense="jpeg", **TWO_CHANNEL),  # raises in every executor: an error row
]


@pytest.fixture(scope="module")
def ray_cluster():
    """One local two-CPU Ray cluster for the module, in a temporary folder, shut down afterwards."""
    ray = pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="rbray")  # short: Ray's socket paths must fit in 107 characters
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=folder)
    yield ray
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def _rows(path: Path) -> tuple[list, list]:
    with sqlite3.connect(path) as db:
        examples = db.execute("SELECT * FROM examples ORDER BY key, example_id").fetchall()
        cells = db.execute("SELECT key, status, summary, flags FROM cells ORDER BY key").fetchall()
    return examples, cells


def _run(path: Path, executor, grid=GRID) -> object:
    """Run a grid with one torch thread in the driver too: the cells' provenance (and its sha256) names the threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(path) as store:
            return run_grid(grid, store, benchmark="t", device=CPU, progress=False, executor=executor)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("local") / "s.sqlite"
    _run(path, make_executor("local"))  # one thread, as each Ray task below: the same arithmetic
    return path


@pytest.mark.parametrize("per_task", [None, 1], ids=["task-per-cell", "task-per-batch"])
def test_ray_stores_the_local_rows_row_for_row(ray_cluster, local_store, tmp_path, per_task):
    result = _run(tmp_path / "s.sqlite", make_executor("ray", batches_per_task=per_task))
    examples, cells = _rows(tmp_path / "s.sqlite")
    assert len(result.computed) == 2 and len(result.failed) == 1
    assert "JPEG needs 1 or 3 channels" in next(iter(result.failed.values()))
    assert len(examples) == 2 * 96
    assert (examples, cells) == _rows(local_store)


def test_a_cascade_on_ray_stores_the_local_rows(ray_cluster, tmp_path):
    from tests.test_cascade import _grid

    cells = list(_grid("tiny", True))
    stores = {name: tmp_path / f"{name}.sqlite" for name in ("local", "ray")}
    _run(stores["local"], make_executor("local"), cells)
    result = _run(stores["ray"], make_executor("ray", batches_per_task=1), cells)
    assert result.ok and len(result.computed) == 6
    assert _rows(stores["ray"]) == _rows(stores["local"])


def test_a_ray_run_resumes_a_partly_stored_cell_without_duplicates(ray_cluster, local_store, tmp_path):
    path = tmp_path / "s.sqlite"
    shutil.copy(local_store, path)
    with sqlite3.connect(path) as db:  # as if the driver had been killed after the first batch of each cell
        db.execute("DELETE FROM examples WHERE batch > 0")
        db.execute("DELETE FROM batches WHERE batch > 0")
        db.execute("UPDATE cells SET status = 'running', summary = NULL")
    result = _run(path, make_executor("ray", batches_per_task=1))
    assert len(result.computed) == 2
    assert _rows(path) == _rows(local_store)


def test_executor_ray_without_ray_exits_2_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    result = CliRunner().invoke(main, ["run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none",
                                       "--attack", "fgsm", "--eps", "6/255", "-n", "8", "--executor", "ray", "--store",
                                       str(tmp_path / "s.sqlite"), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "pip install 'robench[ray]'" in result.output
    assert not (tmp_path / "s.sqlite").exists()


def test_an_unknown_executor_is_a_configuration_error():
    from robench.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown executor 'slurm'; choose one of local, ray"):
        make_executor("slurm")


class DiesOnce(Defense):
    """The identity, except that the process computing it exits abruptly at its 15th call, once per marker."""

    def __init__(self, marker: Path):
        super().__init__()
        self._marker, self._calls = marker, 0  # private: not part of the object's fingerprint

    def purify(self, x):
        self._calls += 1
        if self._calls == 15 and not self._marker.exists():
            self._marker.touch()
            os._exit(1)
        return x


def _dying_run(path: Path, marker: Path, executor) -> tuple[object, list, list]:
    defense = DiesOnce(marker)
    name = object_name(defense)
    with Store(path) as store:
        result = run_grid([tiny_cell(defense=name)], store, benchmark="t", device=CPU, progress=False,
                          executor=executor, objects={name: defense})
    return (result, *_rows(path))


@pytest.mark.slow  # Ray restarts the dead worker: about 15 s
def test_a_worker_killed_mid_cell_is_retried_to_the_uninterrupted_rows(ray_cluster, tmp_path):
    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests
    (tmp_path / "never").touch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, reference, reference_cells = _dying_run(tmp_path / "ref.sqlite", tmp_path / "never", make_executor("local"))
    finally:
        torch.set_num_threads(threads)
    result, examples, cells = _dying_run(tmp_path / "s.sqlite", tmp_path / "died", make_executor("ray"))
    assert (tmp_path / "died").exists(), "the worker must have died once"
    assert result.ok and len(examples) == 96
    assert (examples, cells) == (reference, reference_cells)


KILLED_GRID = ["--dataset", "synthetic:image_size=96", "--model", "tiny:size=96", "--defense", "bit-depth", "--attack",
               "pgd:steps=30", "--eps", "6/255", "-n", "192", "--batch-size", "12", "--no-progress", "--device", "cpu"]


@pytest.mark.slow  # three runs of a 16-batch grid: about a minute
def test_a_killed_ray_driver_resumes_to_the_rows_of_an_uninterrupted_run(ray_cluster, tmp_path):
    import signal
    import subprocess
    import time

    from robench.grid import expand

    address = ray_cluster.get_runtime_context().gcs_address
    store = tmp_path / "s.sqlite"
    command = [sys.executable, "-m", "robench.cli", "run", *KILLED_GRID, "--store", str(store), "--results",
               str(tmp_path / "r"), "--executor", "ray", "--address", address, "--batches-per-task", "1"]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _stored_batches(store) < 3 and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed; make KILLED_GRID slower"
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    assert 3 <= _stored_batches(store) < 16

    resumed = subprocess.run(command, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()
    cells = expand({"dataset": "synthetic:image_size=96", "models": ["tiny:size=96"], "defenses": ["bit-depth"],
                    "attacks": ["pgd:steps=30"], "eps": ["6/255"], "n": 192, "batch_size": 12}, {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Store(tmp_path / "ref.sqlite") as reference:
            run_grid(list(cells), reference, benchmark="t", device=CPU, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert _stored_batches(store) == 16
    assert _rows(store)[0] == _rows(tmp_path / "ref.sqlite")[0]


def _stored_batches(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
