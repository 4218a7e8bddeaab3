"""What a grid builds and computes once for all its cells: plugins, check results, fingerprints, weight hashes."""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter

import pytest
import torch

from robench import checks, checkpoint, registry
from robench.guard import Guard, Guarded, ObjectModified, fingerprint
from robench.runner import run_grid
from robench.store import Store
from robench.threat import ThreatModel
from tests.test_runner import tiny_cell

CPU = torch.device("cpu")


def grid(**changes) -> list:
    """Two attacks x two budgets on one model, data set and defense."""
    return [tiny_cell(attack=attack, threat=ThreatModel("Linf", eps), n=16, batch_size=16, **changes)
            for attack in ("fgsm", "pgd:steps=2") for eps in (4 / 255, 6 / 255)]


def test_a_grid_builds_each_model_dataset_and_defense_once(tmp_path, monkeypatch):
    built = Counter()
    build = registry.build

    def counted(kind, spec):
        built[kind, str(spec)] += 1
        return build(kind, spec)

    monkeypatch.setattr(registry, "build", counted)
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(grid(defense="bit-depth"), store, benchmark="t", device=CPU, progress=False)
    assert len(result.computed) == 4
    assert built["models", "tiny"] == built["defenses", "bit-depth"] == built["datasets", "synthetic"] == 1
    assert built["attacks", "fgsm"] == built["attacks", "pgd:steps=2"] == 1


def test_cells_sharing_a_view_share_one_gradient_check_and_each_gets_its_flags(tmp_path, monkeypatch):
    calls = []

    def flagged(model, x, y):
        calls.append(len(x))
        return ["zero-gradient"]

    monkeypatch.setattr(checks, "gradient_flags", flagged)
    cells = grid() + [tiny_cell(model="tiny:num_classes=10", n=16, batch_size=16)]  # another model
    with Store(tmp_path / "s.sqlite") as store:
        result = run_grid(cells, store, benchmark="t", device=CPU, progress=False)
        flags = [store.cell(key).flags for key in result.computed]
    assert len(flags) == 5 and all("zero-gradient" in f for f in flags)
    assert calls == [checks.CHECKED, checks.CHECKED], "one check per view, on the first CHECKED examples"


def test_a_change_made_after_the_first_fingerprint_is_caught_by_a_later_guard():
    module = torch.nn.Linear(3, 2)
    remembered = {}

    def original(m):
        return remembered.setdefault(m, fingerprint(m))

    guarded = [Guarded("models", "linear", module, ("attack x",))]
    Guard(guarded, original=original).check()
    with torch.no_grad():
        module.weight[0, 0] += 1  # between two cells: no guard was open
    with pytest.raises(ObjectModified, match="weight"):
        Guard(guarded, original=original).check()


def test_weights_are_hashed_once_per_file_version(tmp_path):
    path = tmp_path / "w.pt"

    def write(content: bytes, age_s: float) -> str:
        path.write_bytes(content)
        when = time.time() - age_s
        os.utime(path, (when, when))
        return hashlib.sha256(content).hexdigest()

    expected = write(b"a" * 100, age_s=60)
    hits = checkpoint._sha256.cache_info().hits
    assert checkpoint.sha256_of(path) == checkpoint.sha256_of(path) == expected
    assert checkpoint._sha256.cache_info().hits == hits + 1
    rewritten = write(b"b" * 100, age_s=30)
    assert checkpoint.sha256_of(path) == rewritten, "a new version (same size) is hashed anew"
    fresh = write(b"c" * 100, age_s=0)  # just written: could be rewritten within the timestamp granularity
    assert checkpoint.sha256_of(path) == fresh
    write(b"d" * 100, age_s=0)
    assert checkpoint.sha256_of(path) == hashlib.sha256(b"d" * 100).hexdigest()
