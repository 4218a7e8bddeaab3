"""Executors: where the tasks of a grid are computed; the driver sees only their events (DESIGN §5).

An executor takes the grid's tasks and the driver's :class:`~robench.resolve.Resolver` and
yields :mod:`robench.compute` events as tasks progress, in any order. It never writes the
store. ``local`` computes in this process; ``ray`` spreads tasks over a Ray cluster.
"""

from __future__ import annotations

from typing import Iterator, Protocol, Sequence

from robench.compute import Event, Task
from robench.errors import ConfigError
from robench.executors.local import LocalExecutor
from robench.resolve import Resolver

EXECUTORS = ("local", "ray")


class Executor(Protocol):
    """Computes tasks somewhere and streams their events back to the driver."""

    batches_per_task: int | None  # a cell's missing batches are split in tasks of this many (None: one task)

    def run(self, tasks: Sequence[Task], resolver: Resolver) -> Iterator[Event]:
        """Events of every task, each as soon as it is known."""


def make_executor(name: str = "local", **options) -> Executor:
    """The executor called ``name`` with its keyword options (``ray``: see :class:`RayExecutor`)."""
    if name == "local":
        return LocalExecutor(**options)
    if name == "ray":
        from robench.executors.ray import RayExecutor

        return RayExecutor(**options)
    raise ConfigError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "make_executor"]
