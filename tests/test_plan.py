"""The dry-run plan: its pass counts are the passes a run spends on the model, counted by hooks."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from robench import registry
from robench.attack import Passes
from robench.checks import CHECKED
from robench.cli import main
from robench.objects import object_name
from robench.plan import cell_passes, plan_grid, render_plan
from robench.resolve import Resolver
from robench.runner import normalise, run_grid
from robench.store import Store
from tests.test_runner import tiny_cell

CPU = torch.device("cpu")


class Counted:
    """A tiny model whose forward and backward passes are counted per example by hooks."""

    def __init__(self):
        self.model = registry.build("models", "tiny").eval()
        self.name = object_name(self.model)
        self.passes = Passes()
        self.model.register_forward_hook(lambda module, inputs, output: self._add(Passes(len(inputs[0]))))
        self.model.register_full_backward_hook(lambda module, grad_in, grad_out: self._add(Passes(0, len(grad_out[0]))))

    def _add(self, passes: Passes) -> None:
        self.passes = self.passes + passes


# Every example of the tiny model on synthetic data is classified right (clean accuracy 1): the
# cost model's "every example attacked" is then exact, and the counts must be equal.
EXACT = [
    dict(attack="pgd:steps=5"),
    dict(attack="fgsm", n=40),  # a last batch of 8
    dict(attack="mifgsm:steps=3", setting="oblivious", defense="bit-depth"),
    dict(attack="vmifgsm:steps=2,N=3"),
    dict(attack="bpda-eot:steps=3", defense="gaussian-noise:sigma=0.001", eot=3, draws=2),
    dict(attack="pgd:steps=2,restarts=1,targeted=true", defense="gaussian-noise:sigma=0.001", eot=2),
]


@pytest.mark.parametrize("change", EXACT, ids=lambda c: c["attack"])
def test_planned_passes_equal_the_passes_a_run_spends(tmp_path, change):
    counted = Counted()
    cell = tiny_cell(model=counted.name, **change)
    resolver = Resolver(CPU, {counted.name: counted.model})
    normal = normalise(cell, resolver)
    scoring, attack = cell_passes(normal, resolver, list(range(-(-normal.n // normal.batch_size))))
    counted.passes = Passes()
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid([cell], store, benchmark="t", device=CPU, progress=False,
                          objects={counted.name: counted.model})
        (key,) = result.computed
        assert store.cell(key).summary["clean_acc"] == 1.0, "the exact count needs every example attacked"
    assert counted.passes == scoring + attack


@pytest.mark.parametrize("engine", ["official", "robench"])
def test_autoattack_spends_at_most_its_declared_passes(tmp_path, engine):
    """The declared count is the official code's; robench's engine (early stop) spends less."""
    counted = Counted()
    cell = tiny_cell(model=counted.name, attack=f"apgd-ce:engine={engine}", n=16, batch_size=16)
    resolver = Resolver(CPU, {counted.name: counted.model})
    scoring, attack = cell_passes(normalise(cell, resolver), resolver, [0])
    counted.passes = Passes()
    with Store(tmp_path / "s.sqlite") as store:
        run_grid([cell], store, benchmark="t", device=CPU, progress=False, objects={counted.name: counted.model})
    spent, declared = counted.passes, scoring + attack
    assert 0 < spent.backward <= declared.backward and 0 < spent.forward <= declared.forward
    if engine == "official":
        assert spent.backward >= 16 * 100, "the official APGD-CE runs 100 iterations on every attacked example"


def test_the_plan_splits_stored_partial_and_new_cells_and_times_them(tmp_path):
    path = tmp_path / "s.sqlite"
    with Store(path) as store:
        run_grid([tiny_cell(attack="fgsm"), tiny_cell(attack="pgd:steps=5")], store, benchmark="t", device=CPU,
                 progress=False)
        store._db.execute("DELETE FROM batches WHERE batch > 0 AND key IN "
                          "(SELECT key FROM cells WHERE spec LIKE '%pgd%')")  # as if killed after one batch
        store._db.execute("UPDATE cells SET status = 'running' WHERE spec LIKE '%pgd%'")
        store._db.commit()
    cells = [tiny_cell(attack="fgsm"), tiny_cell(attack="pgd:steps=5"), tiny_cell(attack="ssp")]
    plan = plan_grid(cells, path, device=CPU, throughput=1000.0)
    fgsm, pgd, ssp = (next(p for p in plan.cells if p.cell.attack.name == name) for name in ("fgsm", "pgd", "ssp"))
    assert fgsm.status == "stored" and pgd.status == ssp.status == "compute"
    assert pgd.batches == 2 and pgd.passes == Passes(64 * 2 + 64 * 5 + CHECKED, 64 * 5 + CHECKED)
    assert pgd.seconds == pytest.approx((pgd.passes.forward + 2 * pgd.passes.backward) / 1000)
    assert ssp.passes is None and ssp.seconds is None
    text = render_plan(plan, "t")
    assert "2 cells to compute, 1 found in the store, 0 missing" in text
    assert "no cost model declared by: ssp" in text


def test_run_dry_run_prints_the_plan_and_computes_nothing(tmp_path):
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(main, [
        "run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--defense", "bit-depth",
        "--attack", "pgd:steps=5", "--eps", "6/255", "-n", "64", "--batch-size", "32", "--store", str(store),
        "--device", "cpu", "--dry-run",
    ])
    assert result.exit_code == 0, result.output
    assert "2 cells to compute, 0 found in the store, 0 missing" in result.output
    assert "calibrated on cpu" in result.output and "CPU-hours" in result.output
    assert not store.exists()


def test_a_cell_waiting_for_a_checkpoint_is_costed_from_its_attack(tmp_path):
    from robench.missing import Expected

    expected = Expected(checkpoints={"later.pt": "produce it with `robench train ...`"})
    plan = plan_grid([tiny_cell(model="tiny:weights=later.pt")], None, device=CPU, expected=expected, throughput=100.0)
    (waiting,) = plan.cells
    assert waiting.status == "missing" and "later.pt not found" in waiting.reason
    assert waiting.passes == Passes(96 * 2 + 96 * 5 + CHECKED, 96 * 5 + CHECKED)
    forward, backward = 96 * 7 + CHECKED, 96 * 5 + CHECKED
    assert f"the 1 missing cells, once they can run: {forward} forward and {backward} backward passes" in render_plan(
        plan, "t")
