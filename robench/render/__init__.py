"""Renderers of a :class:`robench.document.Document`: CSV, Markdown, HTML and terminal text."""

from __future__ import annotations

FORMATS = ("term", "md", "csv", "html")


def render(document, fmt: str, **options) -> str:
    """The document in one of :data:`FORMATS` (options go to that renderer, e.g. ``width`` for term)."""
    if fmt == "term":
        from robench.render.term import render_term as renderer
    elif fmt == "md":
        from robench.render.markdown import render_markdown as renderer
    elif fmt == "csv":
        from robench.render.csv import render_csv as renderer
    elif fmt == "html":
        from robench.render.html import render_html as renderer
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return renderer(document, **options)

