"""Timing helpers shared by the side-by-side scripts in this folder (not a benchmark itself).

The scripts run as ``python benchmarks/perf/<script>.py``, so this folder is on ``sys.path`` and
they import this file as ``_timing``.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"


def use_default_data() -> None:
    """Point ``ROBENCH_DATA`` at ``../shared/data`` when it is unset (before robench loads anything)."""
    os.environ.setdefault("ROBENCH_DATA", str(DEFAULT_DATA))


@contextmanager
def timed(device: torch.device) -> Iterator[dict]:
    """Yield a dict that receives ``wall`` and ``cpu`` (this process, all threads) seconds of the block."""
    took: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    yield took
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    took.update(wall=time.perf_counter() - wall, cpu=time.process_time() - cpu)


TimedPath = Callable[[], "tuple[dict, Any]"]


def alternate(paths: dict[str, TimedPath], repeats: int, *, warmup: bool = True) -> dict[str, list[tuple[dict, Any]]]:
    """Warm each path up once (untimed, unless ``warmup`` is False), then call all ``repeats`` times, reversing the order every other time.

    Each path times itself (with :func:`timed`, around only what it means to measure) and
    returns ``(took, value)``; the answer maps each path to its ``repeats`` results.
    """
    for path in paths.values() if warmup else ():
        path()
    names = list(paths)
    results: dict[str, list[tuple[dict, Any]]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            results[name].append(paths[name]())
    return results


def stats(runs: list[dict]) -> dict:
    """Median and minimum wall seconds, median CPU seconds and every wall time of a path's runs."""
    walls = [r["wall"] for r in runs]
    return {"wall": statistics.median(walls), "min": min(walls), "cpu": statistics.median(r["cpu"] for r in runs),
            "all": ", ".join(f"{w:.2f}" for w in walls)}


def format_values(values: "set | list", fmt: str = ".4f") -> str:
    """Distinct values, sorted, comma separated (more than one means the path is not deterministic)."""
    return ", ".join(format(v, fmt) for v in sorted(set(values)))


def load_warning(load: tuple[float, float]) -> str | None:
    """A warning when the 1-minute load average, before or after, exceeds the number of cores."""
    cores = os.cpu_count() or 1
    if max(load) <= cores:
        return None
    return (f"WARNING: load average {load[0]:.1f} -> {load[1]:.1f} on {cores} cores: other processes compete "
            "for the CPU, wall times are noisy; trust min wall and cpu ratios more than the median")
