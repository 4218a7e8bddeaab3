"""One result table as data: built once from the store, rendered as CSV, Markdown, HTML or terminal text.

A leaderboard and a paper-layout table are both a :class:`Document`: a title, the header fields that
hold for every row (constant columns, provenance), the commands that produced it, notes, one or more
:class:`Table`, the flags present with their meaning, the cells without a number with their reasons,
figures, and the frame behind it (what the CSV holds). The renderers in :mod:`robench.render` only
lay it out; nothing about the numbers is decided there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from robench.flags import FLAG_DOCS

REPRODUCIBILITY = (
    "The same command reproduces these numbers exactly on the same machine with the same versions. On "
    "another CPU or GPU, or another torch / BLAS build, attack trajectories differ by floating-point "
    "rounding: expect numbers within the 95% interval, not identical ones."
)


@dataclass(frozen=True)
class Item:
    """One table cell: its text, plus what richer renderings add (hover text, sort key, flag marks, link)."""

    text: str
    title: str = ""
    sort: float | str | None = None
    marks: tuple[str, ...] = ()
    href: str = ""


@dataclass(frozen=True)
class Table:
    """A table of :class:`Item` rows; ``groups`` spans column headers (label, number of columns) above them."""

    name: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Item, ...], ...]
    groups: tuple[tuple[str, int], ...] = ()
    numeric: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Document:
    """A result table with everything needed to read it: header, provenance, tables, flags, missing cells."""

    title: str
    header: tuple[tuple[str, str], ...] = ()
    commands: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    flags: tuple[tuple[str, str, str], ...] = ()  # (mark, flag, meaning)
    missing: tuple[str, ...] = ()
    figures: tuple[tuple[str, str], ...] = ()  # (file name beside the document, caption)
    data: pd.DataFrame | None = field(default=None, compare=False)


def cell_text(item: Item) -> str:
    """An item as plain text: its text followed by its flag marks in parentheses."""
    return f"{item.text} ({','.join(item.marks)})" if item.marks else item.text


def joined(values: Iterable) -> str:
    """The distinct non-empty values, sorted and comma-separated ('-' when there are none)."""
    found = sorted({str(v) for v in values if v is not None and str(v) != "" and str(v) != "nan"})
    return ", ".join(found) or "-"


def provenance(devices: Iterable[str], versions: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The header fields saying where the numbers were computed: machines and library versions."""
    return (("device", joined(devices)), ("versions", "; ".join(sorted({v for v in versions if v})) or "-"))


def flag_notes(cells: Iterable[str]) -> tuple[tuple[str, str, str], ...]:
    """The documented flags found in ``;``-joined flag cells, each with a short mark (a, b, ...) and its meaning."""
    present = sorted({f for cell in cells for f in str(cell).split(";") if f in FLAG_DOCS})
    return tuple((chr(ord("a") + i), flag, FLAG_DOCS[flag]) for i, flag in enumerate(present))


def marks_of(cell: str, flags: tuple[tuple[str, str, str], ...]) -> tuple[str, ...]:
    """The marks of the documented flags in one ``;``-joined flag cell."""
    named = set(str(cell).split(";"))
    return tuple(mark for mark, flag, _ in flags if flag in named)
