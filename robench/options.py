"""Option values checked against the types a plugin's signature declares, before the plugin is built.

The type of an option is the text ``robench ls KIND NAME`` documents (:func:`annotation_text`):
its annotation (``bool``, ``int``, ``float``, ``str | None``, ``Literal['a', 'b']``,
``list[str]``...), or the type of its default when it has none. A value that does not fit is
refused with the option, the value and the expected type, so ``pgd:targeted=no`` never runs
a targeted attack because a non-empty string is true. Floats accept integers and fractions
(``2/255``); booleans are ``true`` or ``false`` only. An annotation robench cannot read
(``nn.Module``, a callable) accepts any value: the plugin checks it.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
from typing import Any

from robench.spec import SpecError, brief, format_value

_ALTERNATIVE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(?:\[(.*)\])?\s*$", re.DOTALL)
_PLAIN = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "None": lambda v: v is None,
    "NoneType": lambda v: v is None,
    "Path": lambda v: isinstance(v, (str, os.PathLike)),
    "PathLike": lambda v: isinstance(v, (str, os.PathLike)),
    "list": lambda v: isinstance(v, (list, tuple)),
    "tuple": lambda v: isinstance(v, (list, tuple)),
    "Sequence": lambda v: isinstance(v, (list, tuple)),
    "dict": lambda v: isinstance(v, dict),
    "Mapping": lambda v: isinstance(v, dict),
}
_HOW = {"bool": "true or false", "float": "a number such as 0.5 or 2/255", "int": "a whole number"}


def annotation_text(parameter: inspect.Parameter) -> str:
    """An option's type as written in its signature, or its default's type name; '' when neither says."""
    annotation = parameter.annotation
    if annotation is parameter.empty:
        return "" if parameter.default in (parameter.empty, None) else type(parameter.default).__name__
    if isinstance(annotation, str):
        return annotation.strip("'\"")
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_options(plugin: str, values: dict[str, Any], options: dict[str, inspect.Parameter]) -> None:
    """Raise :class:`SpecError` naming the first option of ``values`` whose value does not fit its declared type."""
    for key, value in values.items():
        if key not in options:
            continue
        expected = annotation_text(options[key])
        if not fits(value, expected):
            how = _HOW.get(expected.replace(" | None", ""), "")
            raise SpecError(
                f"{plugin}: option {key}={_as_written(value)} is not of type {expected}"
                + (f" (write {how})" if how else "")
                + f"; `robench ls` documents the options of {plugin}"
            )


def _as_written(value: Any, limit: int = 80) -> str:
    """The value as a spec would write it (``true``, ``no``, ``1.5``), cut to ``limit`` characters."""
    try:
        text = format_value(value)
    except (TypeError, ValueError):  # not a JSON value: an object passed from Python
        return brief(value, limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fits(value: Any, expected: str) -> bool:
    """Whether ``value`` fits the annotation text ``expected`` (unreadable annotations fit anything)."""
    alternatives = _split(expected, "|")
    return not expected.strip() or any(_fits_one(value, alternative) for alternative in alternatives)


def _fits_one(value: Any, alternative: str) -> bool:
    match = _ALTERNATIVE.match(alternative)
    if match is None:
        return True
    name, inner = match.group(1).rsplit(".", 1)[-1], match.group(2)
    if name == "Literal" and inner is not None:
        try:
            choices = ast.literal_eval(f"[{inner}]")
        except (ValueError, SyntaxError):
            return True
        return any(value == choice and type(value) is type(choice) for choice in choices)
    if name == "Optional" and inner is not None:
        return value is None or fits(value, inner)
    if name == "Union" and inner is not None:
        return any(fits(value, part) for part in _split(inner, ","))
    if name == "Any":
        return True
    check = _PLAIN.get(name)
    return True if check is None else check(value)


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == separator and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts
