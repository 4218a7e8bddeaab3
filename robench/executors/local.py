"""The local executor: every task in this process, one after another, on the driver's device."""

from __future__ import annotations

from typing import Iterator, Sequence

from robench.compute import Event, Task, run_task
from robench.resolve import Resolver


class LocalExecutor:
    """Runs tasks in order in the driver's process with the driver's resolver (robench's default)."""

    batches_per_task = None

    def run(self, tasks: Sequence[Task], resolver: Resolver) -> Iterator[Event]:
        """Events of each task in turn."""
        for task in tasks:
            yield from run_task(task, resolver)
