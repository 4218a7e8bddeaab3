"""Checks of plugin hyperparameters, with errors that name the argument and the value given."""

from __future__ import annotations


MAX_COUNT = 10_000_000  # steps, restarts, samples...: a documented bound, so a typo fails instead of running for ever


def check_positive_int(name: str, value, *, most: int = MAX_COUNT) -> None:
    """Raise ValueError unless ``value`` is an integer in [1, ``most``] (booleans refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ValueError(f"{name} must be a positive integer (at most {most:,}), got {value!r}")


def check_positive(name: str, value, *, optional: bool = False) -> None:
    """Raise ValueError unless ``value`` is a number > 0 (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
