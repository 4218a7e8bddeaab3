"""A document as CSV: the frame behind it, numbers unrounded (machine-readable; the other renderings round)."""

from __future__ import annotations

from robench.document import Document

FLOAT_FORMAT = "%.6g"


def render_csv(document: Document) -> str:
    """The document's frame as CSV text (one row per cell, every column)."""
    if document.data is None:
        raise ValueError(f"{document.title}: this document has no frame to write as CSV")
    return document.data.to_csv(index=False, float_format=FLOAT_FORMAT)
