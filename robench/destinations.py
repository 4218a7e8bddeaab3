"""Where a run writes: a benchmark's name becomes a folder under ``--results``, so both are checked first.

A benchmark name is one path component of letters, digits, ``-``, ``_`` and ``.``, starting
with a letter or digit, at most :data:`MAX_NAME` characters: never absolute, never ``..``, never
a name the file system refuses. The results folder must be a writable folder, or creatable in one. Both
are checked before any cell runs, so nothing computed is lost to a file that cannot be written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from robench.errors import ConfigError
from robench.spec import brief

MAX_NAME = 100
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def check_benchmark_name(name: object, *, where: str = "benchmark name") -> str:
    """Return ``name`` if it is a safe folder name, else raise :class:`ConfigError` saying what is allowed."""
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME:
        raise ConfigError(
            f"{where} {brief(name)} cannot name a results folder: use 1 to {MAX_NAME} letters, digits, '-', '_' "
            "or '.', starting with a letter or digit (e.g. my-grid)"
        )
    return name


def leaderboard_folder(results_dir: "str | Path", benchmark: str) -> Path:
    """``<results_dir>/<benchmark>``, the benchmark name checked to stay one folder inside ``results_dir``."""
    return Path(results_dir) / check_benchmark_name(benchmark)


def check_results_folder(results_dir: "str | Path", benchmark: str) -> Path:
    """``<results_dir>/<benchmark>`` if it is, or can be created as, a writable folder; checked without creating it."""
    folder = leaderboard_folder(results_dir, benchmark)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"--results {brief(str(results_dir))}: {brief(str(existing))} is not a folder, so "
                          f"{brief(str(folder))} cannot be created; give a folder for the leaderboards")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--results {brief(str(results_dir))}: the folder {brief(str(existing))} is not writable")
    return folder
