"""Spec strings: ``name:key=value,...`` with JSON-typed values, parsed to a frozen value.

A spec names a plugin and its keyword arguments. Values are JSON (``75``, ``true``,
``"a,b"``, ``[1, 2]``), a fraction ``k/255`` (kept exact when printed back), a bare word
(``Linf``) or a file path (``weights=checkpoints/r18.pt``). ``str(parse_spec(s))`` is the
canonical form: keys sorted, fractions of 255 printed as ``k/255``, so equal specs print
equally and round-trip.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*/\s*([+-]?\d+(?:\.\d+)?)\s*$")
# a bare word is a name or a file path (``checkpoints/r18.pt``, ``~/w.pt``, ``../w.pt``), never a number
_BARE_WORD = re.compile(r"^(?:[A-Za-z_~/]|\.{1,2}/)[A-Za-z0-9_.\-/~]*$")


class SpecError(ValueError):
    """A spec string, value or epsilon that cannot be parsed; the message points at the bad part."""


@dataclass(frozen=True, eq=False)
class Spec:
    """A plugin name with keyword arguments, e.g. ``Spec("jpeg", (("quality", 75),))``."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if not _NAME.match(self.name):
            raise SpecError(f"invalid plugin name {self.name!r}: use letters, digits, '-', '_' or '.'")
        items = tuple(sorted((str(k), _freeze(v)) for k, v in dict(self.kwargs).items()))
        object.__setattr__(self, "kwargs", items)

    @classmethod
    def of(cls, name: str, **kwargs: Any) -> "Spec":
        """Build a spec from a name and keyword arguments."""
        return cls(name, tuple(kwargs.items()))

    @property
    def options(self) -> dict[str, Any]:
        """The keyword arguments as a plain dict (lists for JSON arrays)."""
        return {k: _thaw(v) for k, v in self.kwargs}

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable form: ``{"name": ..., "kwargs": {...}}``."""
        return {"name": self.name, "kwargs": self.options}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and str(self) == str(other)

    def __lt__(self, other: "Spec") -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        if not self.kwargs:
            return self.name
        return self.name + ":" + ",".join(f"{k}={format_value(v)}" for k, v in self.kwargs)


def parse_spec(text: "str | Spec") -> Spec:
    """Parse ``name:key=value,...`` into a :class:`Spec` (a Spec passes through)."""
    if isinstance(text, Spec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"empty spec {text!r}: expected 'name' or 'name:key=value,...'")
    text = text.strip()
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise SpecError(f"in spec {text!r}: invalid plugin name {name!r}")
    kwargs: dict[str, Any] = {}
    if sep and not rest.strip():
        raise SpecError(f"in spec {text!r}: nothing after ':'; drop the ':' or add key=value pairs")
    for part in _split_top_level(rest, text) if rest.strip() else []:
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq:
            raise SpecError(f"in spec {text!r}: {part.strip()!r} is not key=value")
        if not _KEY.match(key):
            raise SpecError(f"in spec {text!r}: invalid key {key!r}")
        if key in kwargs:
            raise SpecError(f"in spec {text!r}: key {key!r} given twice")
        try:
            kwargs[key] = parse_value(raw)
        except SpecError as err:
            raise SpecError(f"in spec {text!r}, key {key!r}: {err}") from None
    return Spec(name, tuple(kwargs.items()))


def parse_value(raw: str) -> Any:
    """Parse one value: JSON, a fraction ``a/b``, or a bare word (kept as a string)."""
    raw = raw.strip()
    if raw == "":
        raise SpecError("empty value")
    match = _FRACTION.match(raw)
    if match:
        num, den = float(match.group(1)), float(match.group(2))
        if den == 0:
            raise SpecError(f"{raw!r} divides by zero")
        return num / den
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        if _BARE_WORD.match(raw):
            return raw
        raise SpecError(f"{raw!r} is neither JSON, a fraction like 8/255, nor a plain word") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{raw!r} is not a finite number")
    return value


def format_value(value: Any) -> str:
    """Print a value so that :func:`parse_value` reads it back equal."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return format_fraction(value)
    if isinstance(value, str):
        return value if _reads_back_as_itself(value) else json.dumps(value)
    return json.dumps(_thaw(value), separators=(",", ":"))


def format_fraction(value: float) -> str:
    """Print a float as ``k/255`` (k a multiple of 1/8) when that is exact and shorter than its repr."""
    plain = repr(value)
    if not abs(value) <= 1:  # budgets and step sizes in pixel units; anything else prints plainly
        return plain
    frac = Fraction(value * 255).limit_denominator(8)
    if frac == 0 or float(frac) / 255 != value:
        return plain
    scaled = f"{frac.numerator}/255" if frac.denominator == 1 else f"{float(frac)!r}/255"
    return scaled if len(scaled) < len(plain) else plain


def _reads_back_as_itself(word: str) -> bool:
    try:
        return bool(_BARE_WORD.match(word)) and parse_value(word) == word
    except SpecError:
        return False


def parse_eps(text: "str | float", *, norm: str = "Linf") -> float:
    """Parse a perturbation budget (``8/255``, ``0.5``) and check it fits images in [0, 1]."""
    value = parse_value(text) if isinstance(text, str) else text
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"eps {text!r} is not a number; write it like 8/255 or 0.5")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"eps {text!r} must be a positive finite number")
    if str(norm).strip().lower() == "linf" and value > 1:
        raise SpecError(
            f"eps {text!r} = {value:g} exceeds 1, larger than the whole [0, 1] pixel range for Linf; "
            "give it in [0, 1] units, e.g. 8/255"
        )
    return value


def _split_top_level(rest: str, text: str) -> list[str]:
    """Split on commas that are outside quotes and brackets."""
    parts, depth, quote, start, escaped = [], 0, False, 0, False
    for i, ch in enumerate(rest):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quote = False
        elif ch == '"':
            quote = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"in spec {text!r}: unbalanced {ch!r} at position {i}")
        elif ch == "," and depth == 0:
            parts.append(rest[start:i])
            start = i + 1
    if quote or depth:
        raise SpecError(f"in spec {text!r}: unclosed quote or bracket")
    parts.append(rest[start:])
    return parts


class _FrozenMapping(tuple):
    """A JSON object frozen as sorted (key, value) pairs, so a Spec stays hashable."""


def _freeze(value: Any) -> Any:
    if isinstance(value, Spec):
        return str(value)
    if isinstance(value, _FrozenMapping):
        return value
    if isinstance(value, Mapping):
        return _FrozenMapping(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, _FrozenMapping):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
