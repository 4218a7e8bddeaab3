"""Sanity flags and draws: each flag fires on a defense built to trigger it, and not otherwise."""

from __future__ import annotations

import torch

from robench.cell import Cell
from robench.checks import run_checks
from robench.flags import FLAG_DOCS
from robench.defense import Defense
from robench.resolve import Resolver
from robench.compute import evaluate_cell
from robench.runner import run_grid, summarise
from robench.store import Store
from robench.threat import ThreatModel

CPU = torch.device("cpu")


class SecretlyRandom(Defense):
    """Declares determinism but adds noise."""

    def purify(self, x):
        return (x + 0.01 * torch.randn_like(x)).clamp(0, 1)


class Staircase(Defense):
    """Claims to be differentiable, but rounding has zero gradient almost everywhere."""

    def purify(self, x):
        return torch.round(x * 8) / 8


class Flip(Defense):
    """Stochastic: each draw flips the image horizontally with probability 1/2."""

    stochastic = True

    def purify(self, x):
        flip = torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5
        return torch.where(flip, x.flip(-1), x)


def _cell(**changes) -> Cell:
    base = dict(dataset="synthetic", model="tiny", defense="none", attack="fgsm",
                threat=ThreatModel("Linf", 6 / 255), n=64, batch_size=32)
    return Cell(**{**base, **changes})


def _resolver_with(defense: Defense) -> Resolver:
    resolver = Resolver(CPU)
    resolver.defense = lambda spec: defense
    return resolver


def test_every_flag_has_a_documentation_paragraph():
    assert {"undeclared-randomness", "nonfinite-gradient", "zero-gradient"} <= set(FLAG_DOCS)
    assert all(len(text) > 80 for text in FLAG_DOCS.values())


def test_no_flags_for_an_honest_deterministic_defense():
    assert run_checks(_cell(), Resolver(CPU)) == []


def test_undeclared_randomness_is_flagged():
    assert "undeclared-randomness" in run_checks(_cell(), _resolver_with(SecretlyRandom()))


def test_declared_randomness_is_not_flagged():
    assert "undeclared-randomness" not in run_checks(_cell(draws=2), _resolver_with(Flip()))


def test_masked_gradients_are_flagged_only_in_the_adaptive_view():
    resolver = _resolver_with(Staircase())
    assert "zero-gradient" in run_checks(_cell(), resolver)
    assert "zero-gradient" not in run_checks(_cell(setting="oblivious"), resolver)


def test_nonfinite_gradients_are_flagged():
    class NaNGradient(Defense):
        def purify(self, x):
            return x + (torch.sqrt(x - x) * 0)  # value x, gradient NaN through sqrt(0)

    assert "nonfinite-gradient" in run_checks(_cell(), _resolver_with(NaNGradient()))


def test_stochastic_defense_counts_robust_only_if_every_draw_survives():
    cell = _cell(defense="flip", draws=6, eot=2)
    resolver = _resolver_with(Flip())
    rows = [row for batch in evaluate_cell(cell, "k", resolver) for row in batch.rows]
    summary = summarise(rows)
    partial = [r for r in rows if 0 < r["clean_draw_acc"] < 1]
    assert partial, "the flipped draws of the tiny model must disagree on some examples"
    assert all(r["clean_correct"] == 0 and r["attacked"] == 0 for r in partial)
    assert all(r["robust_correct"] == int(r["robust_draw_acc"] == 1.0) for r in rows)
    assert summary["robust_draw_acc"] >= summary["robust_acc"]


def test_transfer_from_the_victim_itself_equals_the_oblivious_attack(tmp_path):
    cells = [_cell(defense="bit-depth", setting="oblivious"),
             _cell(defense="bit-depth", setting="transfer", sources=("tiny",))]
    with Store(tmp_path / "s.sqlite") as store:
        keys = run_grid(cells, store, benchmark="t", device=CPU, progress=False).computed
        oblivious, transfer = (store.examples(k) for k in keys)
    assert len(keys) == 2 and oblivious == transfer
