"""One command for a paper: the robench commands that train its checkpoints, run its benchmarks and write its tables.

A paper's benchmarks (registered as ``<paper>-<table>``) declare in their ``checkpoints:`` headers
the ``robench train`` command that produces each checkpoint they need. The plan runs those whose
checkpoint or model card is absent, targets before the defenses trained in front of them (a
command that names another checkpoint comes after the command producing it), then ``robench run``
for every benchmark, then ``robench report``. Each step is an ordinary robench command, printed
before it runs; every one of them resumes, so rerunning the plan continues where it stopped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from robench import registry
from robench.errors import ConfigError
from robench.grid import Benchmark, load_benchmark

TRAIN = re.compile(r"`(robench train [^`]+)`")


@dataclass(frozen=True)
class Step:
    """One command of the plan; ``done`` when its result already exists (a trained checkpoint and its card)."""

    command: str
    done: bool = False


SCALES = ("paper", "mini")
MINI = "-mini"  # a benchmark named <paper>-<table>-mini is that table at mini scale (CPU-sized, not the paper's)


def paper_benchmarks(paper: str, scale: str = "paper") -> list[str]:
    """Names of the registered benchmarks of a paper (``<paper>-...``) at a scale, or a :class:`ConfigError`."""
    names = [n for n in registry.names("benchmarks")
             if n.startswith(f"{paper}-") and n.endswith(MINI) == (scale == "mini")]
    if not names:
        papers = sorted({n.split("-")[0] for n in registry.names("benchmarks") if "-" in n})
        raise ConfigError(f"no {scale}-scale benchmarks registered for paper {paper!r}; papers: {', '.join(papers)}")
    return names


def trainings(grids: list[Benchmark]) -> list[Step]:
    """The ``robench train`` commands the grids declare, producers first; done when checkpoint and card exist."""
    commands: dict[str, str] = {}  # checkpoint it writes -> command
    for grid in grids:
        for path, how in grid.expected.checkpoints.items():
            for command in TRAIN.findall(how):  # "... `robench train at ...`, then `robench train dir ...`"
                commands.setdefault(_output(command) or path, command)
    needs = {path: {other for other in commands if other != path and _names(command, other)}
             for path, command in commands.items()}
    try:
        order = list(TopologicalSorter(needs).static_order())
    except CycleError as err:
        raise ConfigError(f"the checkpoints' train commands need each other in a cycle: {err.args[1]}") from None
    return [Step(commands[path], Path(path).is_file() and Path(path).with_suffix(".json").is_file())
            for path in order]


def plan_steps(paper: str, run_options: list[str], shared: list[str], scale: str = "paper") -> tuple[list[str], list[Step]]:
    """The paper's benchmarks and its steps: trainings, ``robench run`` of each benchmark, ``robench report``.

    ``shared`` options (store, results folder) go to the runs and the report, ``run_options`` to the runs.
    """
    names = paper_benchmarks(paper, scale)
    steps = trainings([load_benchmark(name) for name in names])
    steps += [Step(shlex.join(["robench", "run", name, *run_options, *shared])) for name in names]
    mini = [option for name in names for option in ("--benchmark", name)] if scale == "mini" else []
    steps.append(Step(shlex.join(["robench", "report", paper, *mini, *shared])))
    return names, steps


def _output(command: str) -> str | None:
    """The ``--output`` path of a train command (None when it does not give one)."""
    words = shlex.split(command)
    return words[words.index("--output") + 1] if "--output" in words[:-1] else None


def _names(command: str, path: str) -> bool:
    """True when ``command`` names ``path`` as a whole word (not as part of a longer path)."""
    return re.search(rf"(?<![\w./-]){re.escape(path)}(?![\w./-])", command) is not None
