"""Shared fixtures: the offline data folder (``../shared/data`` or ``$ROBENCH_TEST_DATA``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA = Path(os.environ.get("ROBENCH_TEST_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
needs_cifar = pytest.mark.skipif(
    not (DATA / "cifar10_test_head.npz").is_file(), reason=f"offline CIFAR-10 head not found in {DATA}"
)


@pytest.fixture
def shared_data(monkeypatch) -> Path:
    """Point robench's loaders at the offline data and forbid downloads."""
    monkeypatch.setenv("ROBENCH_DATA", str(DATA))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    return DATA


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Path:
    """An empty data root with downloads forbidden."""
    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("ROBENCH_OFFLINE", "1")
    return tmp_path / "empty"


@pytest.fixture
def small_target(tmp_path) -> str:
    """A model spec of a small CNN with fixed random weights saved as a checkpoint: a target to train in front of."""

    from robench.models import small_cnn

    torch.manual_seed(0)
    torch.save(small_cnn().net.state_dict(), tmp_path / "target.pt")
    return f"small-cnn:weights={tmp_path / 'target.pt'}"


def assert_resumes_bit_identically(run, folder: Path) -> None:
    """``run(name, epochs)`` trains into ``folder / name``: two epochs straight and one-then-resumed give equal weights."""

    from robench.train import Runtime

    quiet = Runtime(progress=False)
    run("straight.pt", 2).run(runtime=quiet)
    run("resumed.pt", 1).run(runtime=quiet)
    run("resumed.pt", 2).run(runtime=quiet)
    straight = torch.load(folder / "straight.pt", weights_only=True)
    resumed = torch.load(folder / "resumed.pt", weights_only=True)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test: tiny per-image work where extra threads only spin (on a shared 2-core machine)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CountingImages(torch.nn.Module):
    """Counts the images its wrapped model sees (``images``): the forward passes an attack spends."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)
