"""Flags that compare cells: settings, eps and steps sweeps, huge budgets; plus the surrogate check."""

from __future__ import annotations

import torch

from robench.cell import Cell
from robench.checks import run_checks
from robench.flags import FLAG_DOCS
from robench.defense import Defense
from robench.report import leaderboard
from robench.resolve import Resolver
from robench.store import Store
from robench.threat import ThreatModel


def _store_cell(store: Store, name: str, correct: int, *, n: int = 20, **fields) -> None:
    base = dict(dataset="synthetic", model="tiny", defense="jpeg", attack="pgd:steps=10",
                threat=ThreatModel("Linf", 8 / 255), n=n, setting="adaptive")
    cell = Cell(**{**base, **fields})
    rows = [{"example_id": f"test/{i}", "batch": 0, "label": 0, "clean_correct": 1, "clean_draw_acc": 1.0,
             "attacked": 1, "robust_correct": int(i < correct), "robust_draw_acc": float(i < correct),
             "adv_prediction": 0, "perturbation": 0.0} for i in range(n)]
    store.begin_cell(name, cell.to_json(), {}, store.start_run("", {}), "b")
    store.add_batch(name, 0, rows, 0.0)
    store.finish_cell(name, {"n": n, "clean_acc": 1.0, "robust_acc": correct / n, "robust_correct": correct,
                             "robust_draw_acc": correct / n}, [])


def _flags(tmp_path, cells: list[tuple[str, int, dict]]) -> dict[str, set[str]]:
    with Store(tmp_path / "s.sqlite") as store:
        for name, correct, fields in cells:
            _store_cell(store, name, correct, **fields)
        frame = leaderboard(store, "b")
    frame = frame[frame["attack"] != "worst-case"]
    return {key: set(filter(None, flags.split(";"))) for key, flags in zip(frame["key"], frame["flags"])}


def test_every_flag_is_documented():
    assert {"adaptive-weaker-than-oblivious", "adaptive-weaker-than-transfer", "accuracy-rises-with-eps",
            "accuracy-rises-with-steps", "unbounded-attack-fails", "surrogate-mismatch"} <= set(FLAG_DOCS)
    assert all(len(text) > 80 for text in FLAG_DOCS.values())


def test_oblivious_beating_adaptive_is_flagged_on_the_adaptive_row(tmp_path):
    flags = _flags(tmp_path, [("adapt", 12, {}), ("obliv", 5, {"setting": "oblivious"})])
    assert "adaptive-weaker-than-oblivious" in flags["adapt"]
    assert not flags["obliv"]


def test_adaptive_beating_oblivious_is_not_flagged(tmp_path):
    flags = _flags(tmp_path, [("adapt", 1, {}), ("obliv", 5, {"setting": "oblivious"})])
    assert not flags["adapt"] and not flags["obliv"]


def test_transfer_beating_every_adaptive_attack_is_flagged(tmp_path):
    transfer = {"setting": "transfer", "sources": ("tiny:size=32",), "attack": "mifgsm"}
    flagged = _flags(tmp_path / "a", [("adapt", 9, {}), ("trans", 4, transfer)])
    assert "adaptive-weaker-than-transfer" in flagged["adapt"]
    fine = _flags(tmp_path / "b", [("adapt", 3, {}), ("trans", 4, transfer)])
    assert not fine["adapt"]


def test_accuracy_rising_with_eps_is_flagged_beyond_noise(tmp_path):
    sweep = [("e2", 10, {"threat": ThreatModel("Linf", 2 / 255)}), ("e4", 6, {"threat": ThreatModel("Linf", 4 / 255)}),
             ("e8", 9, {"threat": ThreatModel("Linf", 8 / 255)}), ("e16", 8, {"threat": ThreatModel("Linf", 16 / 255)})]
    flags = _flags(tmp_path, sweep)
    assert flags["e8"] == {"accuracy-rises-with-eps"}
    assert not flags["e16"], "8 is within 2 examples of the lowest accuracy at smaller eps (6)"
    assert not flags["e2"] and not flags["e4"]


def test_accuracy_rising_with_steps_is_flagged(tmp_path):
    flags = _flags(tmp_path, [("s10", 2, {"attack": "pgd:steps=10"}), ("s40", 7, {"attack": "pgd:steps=40"})])
    assert "accuracy-rises-with-steps" in flags["s40"] and not flags["s10"]


def test_an_unbounded_attack_that_fails_is_flagged(tmp_path):
    flags = _flags(tmp_path, [("huge", 3, {"threat": ThreatModel("Linf", 1.0)}),
                              ("done", 0, {"threat": ThreatModel("Linf", 0.5), "attack": "fgsm"})])
    assert "unbounded-attack-fails" in flags["huge"] and not flags["done"]


class Posterize(Defense):
    """Non-differentiable; its identity surrogate is close (few levels lost)."""

    differentiable = False

    def purify(self, x):
        return torch.round(x * 15) / 15


class Invert(Posterize):
    """Non-differentiable; its identity surrogate is nothing like it."""

    def purify(self, x):
        return 1 - x


def _checks_with(defense, setting="adaptive"):
    resolver = Resolver(torch.device("cpu"))
    resolver.defense = lambda spec: defense
    cell = Cell(dataset="synthetic", model="tiny", defense="d", attack="fgsm",
                threat=ThreatModel("Linf", 8 / 255), n=16, setting=setting)
    return run_checks(cell, resolver)


def test_a_far_surrogate_is_flagged_and_a_close_one_is_not():
    assert "surrogate-mismatch" in _checks_with(Invert())
    assert "surrogate-mismatch" not in _checks_with(Posterize())
    assert "surrogate-mismatch" not in _checks_with(Invert(), setting="oblivious"), "no BPDA in the oblivious view"
