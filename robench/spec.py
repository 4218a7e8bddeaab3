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
import reprlib
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d+)?)\s*/\s*([+-]?\d+(?:\.\d+)?)\s*$")
# a bare word is a name or a file path (``checkpoints/r18.pt``, ``~/w.pt``, ``../w.pt``), never a number
_BARE_WORD = re.compile(r"^(?:[A-Za-z_~/]|\.{1,2}/)[A-Za-z0-9_.\-/~]*$")
INT64 = 2**63  # integers in specs fit a torch int64: [-2**63, 2**63)
MAX_DEPTH = 16  # JSON values nest at most this deep (lists of lists of ...)


class SpecError(ValueError):
    """A spec string, value or epsilon that cannot be parsed; the message points at the bad part."""


class _Brief(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxstring, self.maxother, self.maxlevel = 60, 60, 3

    def repr_int(self, value, level):  # repr() of an int past Python's 4300-digit limit raises
        return repr(value) if value.bit_length() < 200 else f"<integer of about {int(value.bit_length() * 0.30103)} digits>"


def brief(value: Any, limit: int = 80) -> str:
    """A repr of user input short enough for an error message, whatever its size or nesting."""
    text = _Brief().repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True, eq=False)
class Spec:
    """A plugin name with keyword arguments, e.g. ``Spec("jpeg", (("quality", 75),))``."""

    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SpecError(f"invalid plugin name {brief(self.name)}: use letters, digits, '-', '_' or '.'")
        bad = [k for k in dict(self.kwargs) if not isinstance(k, str) or not _KEY.match(k)]
        if bad:
            raise SpecError(f"invalid option name {brief(bad[0])} for {self.name}: use letters, digits and '_'")
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
        raise SpecError(f"empty spec {brief(text)}: expected 'name' or 'name:key=value,...'")
    text = text.strip()
    quoted = brief(text)
    name, sep, rest = text.partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise SpecError(f"in spec {quoted}: invalid plugin name {brief(name)}")
    kwargs: dict[str, Any] = {}
    if sep and not rest.strip():
        raise SpecError(f"in spec {quoted}: nothing after ':'; drop the ':' or add key=value pairs")
    for part in _split_top_level(rest, text) if rest.strip() else []:
        key, eq, raw = part.partition("=")
        key = key.strip()
        if not eq:
            raise SpecError(f"in spec {quoted}: {brief(part.strip())} is not key=value")
        if not _KEY.match(key):
            raise SpecError(f"in spec {quoted}: invalid key {brief(key)}")
        if key in kwargs:
            raise SpecError(f"in spec {quoted}: key {key!r} given twice")
        try:
            kwargs[key] = parse_value(raw)
        except SpecError as err:
            raise SpecError(f"in spec {quoted}, key {key!r}: {err}") from None
    return Spec(name, tuple(kwargs.items()))


def parse_value(raw: str) -> Any:
    """Parse one value: JSON, a fraction ``a/b``, or a bare word (kept as a string); numbers finite and int64."""
    raw = raw.strip()
    if raw == "":
        raise SpecError("empty value")
    match = _FRACTION.match(raw)
    if match:
        num, den = float(match.group(1)), float(match.group(2))
        if den == 0:
            raise SpecError(f"{brief(raw)} divides by zero")
        return _finite(num / den, raw)
    if _nesting(raw) > MAX_DEPTH:
        raise SpecError(f"{brief(raw)} nests lists or objects more than {MAX_DEPTH} deep")
    try:
        value = json.loads(raw, parse_int=_int64, parse_float=lambda text: _finite(float(text), text),
                           parse_constant=lambda text: _finite(float(text), text))
    except json.JSONDecodeError:
        if _BARE_WORD.match(raw):
            return raw
        raise SpecError(f"{brief(raw)} is neither JSON, a fraction like 8/255, nor a plain word") from None
    return value


def _finite(value: float, raw: str) -> float:
    if not math.isfinite(value):
        raise SpecError(f"{brief(raw)} is not a finite number")
    return value


def _int64(text: str) -> int:
    """A JSON integer that fits int64 (checked by length first: Python refuses to parse past 4300 digits)."""
    value = int(text) if len(text) <= 20 else INT64
    if not -INT64 <= value < INT64:
        raise SpecError(f"integer {brief(text, 40)} is out of range: integers in specs lie in [-2**63, 2**63)")
    return value


def _nesting(raw: str) -> int:
    """How deep brackets nest in ``raw`` outside JSON strings."""
    depth = deepest = 0
    quote = escaped = False
    for ch in raw:
        if quote:
            escaped, quote = (False, quote) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            quote = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


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
        raise SpecError(f"eps {brief(text)} is not a number; write it like 8/255 or 0.5")
    value = float(value) if abs(value) < INT64 else math.inf
    if not math.isfinite(value) or value <= 0:
        raise SpecError(f"eps {brief(text)} must be a positive finite number")
    if str(norm).strip().lower() == "linf" and value > 1:
        raise SpecError(
            f"eps {brief(text)} = {value:g} exceeds 1, larger than the whole [0, 1] pixel range for Linf; "
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
                raise SpecError(f"in spec {brief(text)}: unbalanced {ch!r} at position {i}")
        elif ch == "," and depth == 0:
            parts.append(rest[start:i])
            start = i + 1
    if quote or depth:
        raise SpecError(f"in spec {brief(text)}: unclosed quote or bracket")
    parts.append(rest[start:])
    return parts


class _FrozenMapping(tuple):
    """A JSON object frozen as sorted (key, value) pairs, so a Spec stays hashable."""


def _freeze(value: Any) -> Any:
    if isinstance(value, str) and not _encodable(value):
        raise SpecError(f"value {brief(value)} is not valid Unicode text (it holds a lone surrogate)")
    if isinstance(value, Spec):
        return str(value)
    if isinstance(value, _FrozenMapping):
        return value
    if isinstance(value, Mapping):
        return _FrozenMapping(sorted((_freeze(str(k)), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _thaw(value: Any) -> Any:
    if isinstance(value, _FrozenMapping):
        return {k: _thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value
