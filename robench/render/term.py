"""A document as terminal text that fits a given width (100 columns by default).

Long cells wrap inside their column; a table still wider than the terminal is cut into column
chunks, each repeating the first (row-label) column, so no line is ever wider than ``width``.
"""

from __future__ import annotations

import re
import textwrap

from tabulate import tabulate

from robench.document import Document, Table, cell_text

WIDTH = 100
LABEL_WIDTH = 28  # the row-label column wraps beyond this many characters
CELL_WIDTH = 18


def render_term(document: Document, *, width: int = WIDTH) -> str:
    """The document as plain text, no line wider than ``width``."""
    wrap = _wrapper(width)
    lines = [*wrap(document.title), "=" * min(len(document.title), width), ""]
    for name, value in document.header:
        lines += wrap(f"{name}: {value}", indent="  ")
    for command in document.commands:
        lines += wrap(f"$ {command}", indent="    ")
    lines.append("")
    for table in document.tables:
        if table.caption:
            lines += [*wrap(table.caption), ""]
        lines += [*term_table(table, width), ""]
    for mark, flag, meaning in document.flags:
        lines += wrap(f"({mark}) {flag}: {meaning}", indent="    ")
    for line in document.missing:
        lines += wrap(line, indent="    ")
    for note in document.notes:
        lines += ["", *wrap(note)]
    return "\n".join(lines).rstrip("\n") + "\n"


def term_table(table: Table, width: int = WIDTH) -> list[str]:
    """One table as lines no wider than ``width``: wrapped cells, cut into column chunks if needed."""
    groups = [label for label, span in table.groups for _ in range(span)] or [""] * len(table.columns)
    headers = [_fold(f"{g}\n{c}" if g else c, CELL_WIDTH) for g, c in zip(groups, table.columns)]
    label_width = max(8, min(LABEL_WIDTH, width // 3))
    rows = [[_fold(cell_text(item), label_width if i == 0 else CELL_WIDTH) for i, item in enumerate(row)]
            for row in table.rows]
    align = ["right" if c in table.numeric else "left" for c in table.columns]
    if len(table.columns) == 1:
        return _tabulate(rows, headers, align, [0])
    chunks, current = [], [0]
    for column in range(1, len(table.columns)):
        trial = current + [column]
        if len(current) > 1 and _widest(_tabulate(rows, headers, align, trial)) > width:
            chunks.append(current)
            trial = [0, column]
        current = trial
    chunks.append(current)
    out = []
    for chunk in chunks:
        out += (out and [""]) + _tabulate(rows, headers, align, chunk)
    return out


def _tabulate(rows, headers, align, columns) -> list[str]:
    text = tabulate([[row[c] for c in columns] for row in rows], headers=[headers[c] for c in columns],
                    tablefmt="simple", disable_numparse=True, colalign=[align[c] for c in columns])
    return text.splitlines()


def _widest(lines: list[str]) -> int:
    return max((len(line) for line in lines), default=0)


def _fold(text: str, width: int) -> str:
    """Wrap each line of ``text`` at ``width``, preferring breaks after spaces, commas, colons and '='."""
    out = []
    for line in text.split("\n"):
        current = ""
        for piece in re.split(r"(?<=[ ,:=/])", line):
            while len(piece) > width:  # a piece longer than the column: break it hard
                if current:
                    out.append(current.rstrip())
                    current = ""
                out.append(piece[:width])
                piece = piece[width:]
            if len(current) + len(piece.rstrip()) > width:
                out.append(current.rstrip())
                current = ""
            current += piece
        out.append(current.rstrip())
    return "\n".join(out)


def _wrapper(width: int):
    def wrap(text: str, indent: str = "") -> list[str]:
        return textwrap.wrap(text, width, subsequent_indent=indent, break_on_hyphens=False) or [""]
    return wrap
