"""``batch_size: auto``: the out-of-memory probe, the CPU throughput choice, the CLI and grid files, provenance, keys."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from robench import batch_size
from robench.cell import cell_key
from robench.cli import main
from robench.grid import load_benchmark
from robench.resolve import Resolver
from robench.runner import prepare, run_grid
from robench.store import Store
from tests.test_runner import tiny_cell

CPU = torch.device("cpu")


def fake_device(capacity: int):
    """A step that runs out of memory above ``capacity`` examples; records the sizes it was called with."""
    calls = []

    def step(size: int) -> None:
        calls.append(size)
        if size > capacity:
            raise torch.cuda.OutOfMemoryError(f"{size} > {capacity}")

    return step, calls


@pytest.mark.parametrize("capacity", [100, 777, 5, 16])
def test_the_probe_backs_off_to_a_fitting_size_less_the_margin(capacity):
    step, calls = fake_device(capacity)
    cleared = []
    chosen, record = batch_size.largest_fitting(step, limit=10_000, cleanup=lambda: cleared.append(1))
    assert record["fits"] <= capacity < record["out_of_memory_at"]
    assert record["out_of_memory_at"] - record["fits"] <= max(1, record["fits"] // 2), "bisected after backing off"
    assert chosen == max(1, int(record["fits"] * batch_size.MARGIN)) <= capacity
    assert len(cleared) == sum(size > capacity for size in calls), "memory released after every failed step"


def test_the_probe_stops_at_the_cells_size_without_a_margin():
    step, calls = fake_device(capacity=1000)
    chosen, record = batch_size.largest_fitting(step, limit=200, cleanup=lambda: None)
    assert chosen == 200 and max(calls) == 200 and record["out_of_memory_at"] is None


def test_the_probe_fails_clearly_when_one_example_does_not_fit():
    step, _ = fake_device(capacity=0)
    with pytest.raises(RuntimeError, match="a batch of one example does not fit"):
        batch_size.largest_fitting(step, limit=64, cleanup=lambda: None)


def fake_cpu(seconds_per_step):
    """A step and a clock: each step advances the clock by ``seconds_per_step(size)``."""
    now = [0.0]

    def step(size: int) -> None:
        now[0] += seconds_per_step(size)

    return step, lambda: now[0]


def test_on_cpu_the_fastest_size_is_chosen():
    step, clock = fake_cpu(lambda size: 1.0 + 0.01 * size)  # a fixed cost per step: larger batches pay it less often
    chosen, record = batch_size.fastest(step, (16, 32, 64, 128), clock=clock)
    assert chosen == 128 and set(record["images_per_s"]) == {"16", "32", "64", "128"}


def test_on_cpu_the_smallest_size_of_equal_throughput_is_chosen():
    step, clock = fake_cpu(lambda size: 0.01 * size * (2 if size == 128 else 1))  # flat, then slower
    chosen, _ = batch_size.fastest(step, (16, 32, 64, 128), clock=clock)
    assert chosen == 16


def test_a_short_step_is_timed_over_several_calls():
    counted = []
    step, clock = fake_cpu(lambda size: counted.append(size) or 0.001)
    batch_size.fastest(step, (16, 32), clock=clock, min_s=0.05)
    assert counted.count(32) == 50


def test_the_chosen_size_is_recorded_in_the_provenance_and_enters_the_key_as_that_size(tmp_path, monkeypatch):
    monkeypatch.setattr(batch_size, "choose", lambda cell, resolver: (32, {"rule": "test"}))
    auto, explicit = tiny_cell(batch_size="auto", n=64), tiny_cell(batch_size=32, n=64)
    with Store(tmp_path / "s.sqlite") as store:
        (key,) = run_grid([auto], store, benchmark="t", device=CPU, progress=False).computed
        record = store.cell(key)
    assert record.spec["batch_size"] == 32
    assert record.provenance["batch_size"] == {"requested": "auto", "chosen": 32, "device": "cpu", "rule": "test"}
    ((cell, explicit_key, provenance),) = prepare([explicit], Resolver(CPU))
    assert key == explicit_key == cell_key(cell, provenance) and "batch_size" not in provenance


def test_a_rerun_keeps_the_size_an_earlier_run_chose(tmp_path, monkeypatch):
    sizes = iter([32, 16])
    monkeypatch.setattr(batch_size, "choose", lambda cell, resolver: (next(sizes), {"rule": "test"}))
    cells = [tiny_cell(batch_size="auto", n=64, attack=attack) for attack in ("fgsm", "pgd:steps=2")]
    with Store(tmp_path / "s.sqlite") as store:
        first = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        sizes_stored = [store.spec(key)["batch_size"] for key in first.computed]
        second = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
    assert sizes_stored == [32, 32], "one probe for the two cells of one view"
    assert not second.computed and sorted(second.cached) == sorted(first.computed)


def test_the_real_cpu_probe_picks_a_candidate_size():
    chosen, record = batch_size.choose(tiny_cell(batch_size="auto", n=40), Resolver(CPU))
    assert chosen in (16, 32, 40) and set(record["images_per_s"]) == {"16", "32", "40"}


@pytest.mark.parametrize("value", ["-3", "0", "abc", "2.5"])
def test_the_cli_refuses_a_bad_batch_size_with_exit_2(tmp_path, value):
    result = CliRunner().invoke(main, ["run", "--dataset", "synthetic", "--model", "tiny", "--attack", "fgsm",
                                       "--eps", "6/255", "--batch-size", value, "--store", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2
    assert "Invalid value for '--batch-size'" in result.output and "is not a batch size" in result.output
    assert "positive integer, or auto" in result.output


def test_the_cli_runs_an_auto_batch_size(tmp_path):
    result = CliRunner().invoke(main, [
        "run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", "fgsm", "--eps", "6/255",
        "-n", "20", "--batch-size", "auto", "--store", str(tmp_path / "s.sqlite"), "--results", str(tmp_path / "r"),
        "--device", "cpu", "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    with Store(tmp_path / "s.sqlite") as store:
        (record,) = store.find_cells("")
    assert record.provenance["batch_size"]["chosen"] == record.spec["batch_size"] in (16, 20)


def test_a_grid_file_takes_auto_and_names_a_bad_value(tmp_path):
    text = "dataset: synthetic\nmodels: [tiny]\ndefenses: [none]\nattacks: [fgsm]\neps: [6/255]\nn: 4\n"
    (tmp_path / "auto.yaml").write_text(text + "batch_size: auto\n")
    (tmp_path / "bad.yaml").write_text(text + "batch_size: many\n")
    (cell,) = load_benchmark(str(tmp_path / "auto.yaml")).cells
    assert cell.batch_size == "auto"
    with pytest.raises(Exception, match="batch_size must be a positive integer .* or auto, got 'many'"):
        load_benchmark(str(tmp_path / "bad.yaml"))
