"""Dataset loaders: offline heads, deterministic subsets with stable ids, clear errors without data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robench.data import DataNotFound, NotEnoughData, cifar10, mnist, select, synthetic
from tests.conftest import DATA, needs_cifar


@needs_cifar
def test_cifar10_head_loads_in_official_order(shared_data):
    examples = cifar10().load(n=10)
    assert examples.x.shape == (10, 3, 32, 32) and examples.x.dtype == torch.float32
    assert 0 <= examples.x.min() and examples.x.max() <= 1
    assert examples.y.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert examples.ids[:2] == ("test/0", "test/1")
    raw = np.load(DATA / "cifar10_test_head.npz")["x"][3]
    assert torch.equal((examples.x[3] * 255).round().to(torch.uint8), torch.from_numpy(raw).permute(2, 0, 1))


@needs_cifar
def test_cifar10_asking_beyond_the_head_says_what_is_there(shared_data):
    held = len(np.load(DATA / "cifar10_test_head.npz")["y"])
    with pytest.raises(NotEnoughData, match=f"asked for n=2000 images, but the offline head .* holds {held}"):
        cifar10().load(n=2000)


def test_mnist_test_set_loads(shared_data):
    if not (DATA / "mnist_test.npz").is_file():
        pytest.skip(f"mnist_test.npz not found in {DATA}")
    examples = mnist().load(n=5)
    assert examples.x.shape == (5, 1, 28, 28) and examples.y.tolist() == [7, 2, 1, 0, 4]


def test_seeded_subsets_are_deterministic_sorted_and_distinct():
    first, again, other = select(1000, 50, 3), select(1000, 50, 3), select(1000, 50, 4)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.all(np.diff(first) > 0)
    assert np.array_equal(select(1000, 5, None), np.arange(5))


@pytest.mark.parametrize("n", [0, 2000])
def test_impossible_subset_sizes_are_errors(n):
    with pytest.raises(ValueError):
        select(1000, n, None)


def test_ids_follow_the_official_index_so_fingerprints_track_the_subset():
    data = synthetic()
    seeded = data.load(n=4, seed=7)
    assert all(i.startswith("test/") for i in seeded.ids)
    assert seeded.ids == data.load(n=4, seed=7).ids
    assert seeded.fingerprint() == data.load(n=4, seed=7).fingerprint()
    assert seeded.fingerprint() != data.load(n=4, seed=8).fingerprint()


def test_missing_dataset_names_where_it_looked_and_how_to_fix_it(offline):
    with pytest.raises(DataNotFound) as info:
        cifar10().load(n=8)
    message = str(info.value)
    assert str(offline) in message and "ROBENCH_DATA=" in message and "--data-root" in message
