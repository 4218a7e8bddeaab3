"""The Ray executor: one Ray task per cell (or chunk of batches), its events streamed back as they come.

Ray does the scheduling, resource accounting, transport and retries (a task whose worker dies
is run again; the driver ignores batches it already stored, so a retry never duplicates rows).
Each task is a Ray streaming generator of :mod:`robench.compute` events. Workers keep one
:class:`~robench.resolve.Resolver` per device, so models, defenses and datasets are built once
per worker process and reused by every task it runs, not shipped with each task.
"""

from __future__ import annotations

import os
from typing import Iterator, Mapping, Sequence

import torch

from robench.compute import Event, Task, TaskFailed, run_task
from robench.errors import ConfigError
from robench.resolve import Resolver

INSTALL = "pip install 'robench[ray]'"
RETRIES = 3  # Ray's default for tasks; a cell that raises is an error row, never retried

_WORKER_RESOLVERS: dict[tuple, Resolver] = {}


def import_ray():
    """The ``ray`` module, or a :class:`ConfigError` naming the install command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs Ray, which is not installed; install it with: {INSTALL}") from None
    return ray


class RayExecutor:
    """Spreads tasks over a Ray cluster with per-task resources; events arrive as tasks progress.

    ``address``: the cluster (``auto``, ``ray://host:10001``; None starts a local one unless
    Ray is already initialised); ``gpus_per_cell`` / ``cpus_per_cell``: the resources each task
    declares (a task with GPUs computes on ``cuda``, else on ``cpu`` with that many torch
    threads); ``batches_per_task``: split a cell's missing batches into tasks of this many, so
    one large cell spreads over several workers (None: one task per cell).
    """

    def __init__(self, *, address: str | None = None, gpus_per_cell: float = 0, cpus_per_cell: float = 1,
                 batches_per_task: int | None = None):
        if gpus_per_cell < 0 or cpus_per_cell <= 0:
            raise ConfigError("--gpus-per-cell must be >= 0 and --cpus-per-cell > 0")
        if batches_per_task is not None and batches_per_task < 1:
            raise ConfigError("--batches-per-task must be a positive integer")
        self.ray = import_ray()
        self.address = address
        self.gpus_per_cell, self.cpus_per_cell = gpus_per_cell, cpus_per_cell
        self.batches_per_task = batches_per_task

    def run(self, tasks: Sequence[Task], resolver: Resolver) -> Iterator[Event]:
        """Submit every task, then yield events from whichever task has one ready."""
        ray = self.ray
        if not tasks:
            return
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        device = "cuda" if self.gpus_per_cell else "cpu"
        objects = ray.put(resolver.objects) if resolver.objects else None
        remote = ray.remote(_worker_task).options(
            num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell, max_retries=RETRIES,
            runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("ROBENCH_")}},
        )
        threads = max(1, int(self.cpus_per_cell))
        running = {remote.remote(task, device, threads, objects): task for task in tasks}
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                stream = ready[0]
                try:
                    yield ray.get(next(stream))
                except StopIteration:
                    del running[stream]
                except ray.exceptions.RayError as err:  # retries exhausted: its cells become error rows
                    message = f"{type(err).__name__}: {err}"
                    for stage in running.pop(stream).stages:
                        yield TaskFailed(stage.key, message, message)
        finally:
            for stream in running:  # the driver stopped (Ctrl-C, an error): stop the work it will not store
                ray.cancel(stream, force=True)
            if started:
                ray.shutdown()


def _worker_task(task: Task, device: str, threads: int, objects: Mapping | None) -> Iterator[Event]:
    """On a worker: the task's events, with a resolver built once per device and set of objects."""
    torch.set_num_threads(threads)
    cache_key = (device, tuple(sorted(objects or {})))
    if cache_key not in _WORKER_RESOLVERS:
        _WORKER_RESOLVERS[cache_key] = Resolver(torch.device(device), objects)
    yield from run_task(task, _WORKER_RESOLVERS[cache_key])
