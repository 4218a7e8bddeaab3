"""A document as Markdown (GitHub tables): header fields as a list, one table per section, flags and missing cells."""

from __future__ import annotations

from tabulate import tabulate

from robench.document import Document, Table, cell_text


def render_markdown(document: Document) -> str:
    """The document as Markdown; column groups become prefixes of the column names (``adaptive: pgd``)."""
    lines = [f"# {document.title}", ""]
    if document.commands:
        lines += ["Produced by:", "", *[f"    {c}" for c in document.commands], ""]
    if document.header:
        lines += [f"- {name}: {value}" for name, value in document.header] + [""]
    for note in document.notes:
        lines += [note, ""]
    for name, caption in document.figures:
        lines += [f"![{caption}]({name})", ""]
    for table in document.tables:
        if table.caption:
            lines += [f"## {table.caption}", ""]
        lines += [markdown_table(table), ""]
    if document.flags:
        lines += ["Flags:", ""] + [f"- ({mark}) `{flag}`: {meaning}" for mark, flag, meaning in document.flags] + [""]
    if document.missing:
        lines += [*document.missing, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def markdown_table(table: Table) -> str:
    """One table as a GitHub pipe table, numeric columns right-aligned."""
    headers = list(table.columns)
    if table.groups:
        spanned = [label for label, span in table.groups for _ in range(span)]
        headers = [f"{group}: {column}" if group else column for group, column in zip(spanned, headers)]
    rows = [[cell_text(item) for item in row] for row in table.rows]
    align = ["right" if c in table.numeric else "left" for c in table.columns]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True, colalign=align)
