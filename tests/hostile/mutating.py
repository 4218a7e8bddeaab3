"""Plugins that change the objects they are given, and a registry that serves them by name.

The runner must fail the cell that changed an object, name the plugin, and rebuild the object
so that the next cell is computed on the original (robench.guard).
"""

from __future__ import annotations

import torch

from robench import registry
from robench.attack import Attack
from robench.defense import Defense
from robench.spec import parse_spec


class ZeroWeights(Attack):
    """Zeroes every parameter of the model it attacks and returns the images unchanged."""

    def run(self, model, x, y, threat):
        for parameter in model.parameters():
            parameter.data.zero_()
        return x


class NudgeOneWeight(Attack):
    """Moves one weight of the model by one float step (the smallest change there is) and returns x."""

    def run(self, model, x, y, threat):
        parameter = next(model.parameters())
        with torch.no_grad():
            flat = parameter.view(-1)
            flat[0] = torch.nextafter(flat[0], flat[0] + 1)
        return x


class CountingDefense(Defense):
    """An identity purifier that counts its calls in a buffer (state kept across cells)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def purify(self, x):
        self.calls += 1
        return x


HOSTILE = {
    ("attacks", "zero-weights"): ZeroWeights,
    ("attacks", "nudge-one-weight"): NudgeOneWeight,
    ("defenses", "counting"): CountingDefense,
}


def serve_hostile(monkeypatch) -> None:
    """Serve the plugins of ``HOSTILE`` by name, as if a third party had registered them."""
    build = registry.build

    def with_hostile(kind, spec):
        found = HOSTILE.get((kind, parse_spec(spec).name))
        return found() if found is not None else build(kind, spec)

    monkeypatch.setattr(registry, "build", with_hostile)
