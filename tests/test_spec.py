"""Spec strings: parsing, canonical printing, round trips, hashing, and errors that name the bad part."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from robench.spec import Spec, SpecError, format_value, parse_eps, parse_spec, parse_value


def typed(value):
    """A value with its JSON types made explicit, so that 1, 1.0 and True (or [] and {}) differ."""
    if isinstance(value, dict):
        return ("object", tuple(sorted((k, typed(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(typed(v) for v in value))
    return (type(value).__name__, value)


def same(a: Spec, b: Spec) -> bool:
    return a.name == b.name and typed(a.options) == typed(b.options)


# --- parsing typed values ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("jpeg", {}),
        ("jpeg:quality=75", {"quality": 75}),
        ("x:a=-3", {"a": -3}),
        ("x:a=0.25", {"a": 0.25}),
        ("x:a=1e-3", {"a": 0.001}),
        ("x:a=true,b=false,c=null", {"a": True, "b": False, "c": None}),
        ('x:s="a,b"', {"s": "a,b"}),
        ('x:s="x=1,y=[2"', {"s": "x=1,y=[2"}),
        ('x:s="say \\"hi\\", ok"', {"s": 'say "hi", ok'}),
        ('x:s="true"', {"s": "true"}),
        ('x:s="12"', {"s": "12"}),
        ("x:l=[1, 2.5, \"a,b\", [true, null]]", {"l": [1, 2.5, "a,b", [True, None]]}),
        ('x:o={"b": 1, "a": [2, "c,d"]},n=3', {"o": {"a": [2, "c,d"], "b": 1}, "n": 3}),
        ("x:norm=Linf", {"norm": "Linf"}),
        ("x:model=resnet18-standard", {"model": "resnet18-standard"}),
        ("x:path=dir2023.table1", {"path": "dir2023.table1"}),
        ("  pgd : steps = 20 , random_start = true ", {"steps": 20, "random_start": True}),
    ],
)
def test_parse_typed_values(text, expected):
    spec = parse_spec(text)
    assert typed(spec.options) == typed(expected)


def test_parse_keeps_name():
    assert parse_spec("resnet18-standard").name == "resnet18-standard"
    assert parse_spec("pgd:steps=20").name == "pgd"
    assert parse_spec("a.b_c-d:k=1").name == "a.b_c-d"


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16, 254])
def test_fraction_of_255_is_exact_and_prints_back(k):
    spec = parse_spec(f"pgd:eps={k}/255")
    assert spec.options["eps"] == k / 255
    assert str(spec) == f"pgd:eps={k}/255"
    assert format_value(k / 255 if k != 255 else 1 / 255) in (f"{k}/255", "1/255")


def test_half_fractions_print_back():
    assert parse_value("0.5/255") == 0.5 / 255
    assert str(parse_spec("pgd:step_size=0.5/255")) == "pgd:step_size=0.5/255"
    assert str(parse_spec("pgd:step_size=2/255")) == "pgd:step_size=2/255"


def test_fraction_with_other_denominator_is_a_float():
    assert parse_value("1/4") == 0.25
    assert parse_spec("x:a=1/4").options["a"] == 0.25


def test_pass_through_spec_and_of():
    spec = Spec.of("jpeg", quality=50)
    assert parse_spec(spec) is spec
    assert spec == parse_spec("jpeg:quality=50")
    assert spec.to_json() == {"name": "jpeg", "kwargs": {"quality": 50}}


# --- canonical form and round trips -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("jpeg", "jpeg"),
        ("jpeg:quality=75", "jpeg:quality=75"),
        ("pgd:steps=20,step_size=2/255", "pgd:step_size=2/255,steps=20"),
        ("pgd: steps=20 ,eps = 8/255", "pgd:eps=8/255,steps=20"),
        ("x:z=1,a=2,m=3", "x:a=2,m=3,z=1"),
        ("x:flag=true,none=null,f=false", "x:f=false,flag=true,none=null"),
        ('x:s="a,b"', 'x:s="a,b"'),
        ('x:s="true"', 'x:s="true"'),
        ('x:s="Linf"', "x:s=Linf"),
        ("x:l=[1, 2, 3]", "x:l=[1,2,3]"),
        ('x:o={"b": 1, "a": [2, "c,d"]}', 'x:o={"a":[2,"c,d"],"b":1}'),
        ("x:a=0.001", "x:a=0.001"),
        ("x:a=16/255", "x:a=16/255"),
    ],
)
def test_canonical_form(text, canonical):
    assert str(parse_spec(text)) == canonical
    assert str(parse_spec(canonical)) == canonical


def test_canonical_form_is_independent_of_key_order():
    a = parse_spec("pgd:steps=10,eps=8/255,random_start=true")
    b = parse_spec("pgd:random_start=true,eps=8/255,steps=10")
    assert a == b and str(a) == str(b) and hash(a) == hash(b)


ROUND_TRIP = [
    "none",
    "jpeg:quality=75",
    "bit-depth:bits=4",
    "pgd:steps=20,step_size=2/255",
    "pgd:eps=8/255,random_start=true,restarts=1",
    "apgd:loss=ce,rho=0.75",
    "x:a=-0.003",
    "x:a=1e-9",
    "x:a=123456789",
    "x:a=-7/255",
    "x:a=0.5/255",
    'x:s="a,b"',
    'x:s="with \\"quotes\\" and \\\\ backslash"',
    'x:s="unicode é ✓"',
    'x:s=""',
    'x:s=" padded "',
    'x:s="[not a list"',
    'x:s="{"',
    'x:s="null"',
    'x:s="3/255"',
    "x:l=[]",
    "x:o={}",
    'x:l=[1,"two",[3,[4]],{"k":null}]',
    'x:o={"nested":{"b":[1,2],"a":"x,y"},"z":false}',
    "x:word=resnet20-akamaster,n=1000",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text):
    spec = parse_spec(text)
    again = parse_spec(str(spec))
    assert again == spec
    assert same(again, spec)
    assert str(again) == str(spec)


def _random_string(rng: random.Random) -> str:
    alphabet = 'abcXYZ019 ,=:"\\[]{}/-_.é\t'
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(10 if depth < 2 else 7)
    if kind == 0:
        return rng.randint(-(10**6), 10**6)
    if kind == 1:
        return rng.randint(-255, 255) / 255
    if kind == 2:
        return rng.uniform(-1e3, 1e3)
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return _random_string(rng)
    if kind == 5:
        return rng.choice(["Linf", "L2", "ce", "dlr", "resnet18-standard", "a.b", "_x"])
    if kind == 6:
        return rng.uniform(-1, 1) * 10 ** rng.randint(-12, 12)
    if kind in (7, 8):
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_random_string(rng): _random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_random_specs(seed):
    rng = random.Random(seed)
    for _ in range(25):
        kwargs = {f"k{i}_{rng.choice('abc')}": _random_value(rng) for i in range(rng.randint(0, 5))}
        spec = Spec.of(rng.choice(["pgd", "jpeg", "my-def.v2", "A_b"]), **kwargs)
        text = str(spec)
        again = parse_spec(text)
        assert same(again, spec), text
        assert str(again) == text


@pytest.mark.parametrize("value", [5e-324, 0.1 + 0.2, -0.0, 1 / 3, 1e300, -1e-300])
def test_round_trip_of_extreme_floats(value):
    spec = Spec.of("x", a=value)
    again = parse_spec(str(spec)).options["a"]
    assert again == value and math.copysign(1, again) == math.copysign(1, value), str(spec)


@pytest.mark.parametrize("value", [1e306, -1.7976931348623157e308])
def test_huge_floats_print(value):
    assert parse_spec(str(Spec.of("x", a=value))).options["a"] == value


@pytest.mark.parametrize("word", ["Infinity", "NaN"])
def test_round_trip_of_number_like_words(word):
    spec = Spec.of("x", a=word)
    assert parse_spec(str(spec)) == spec


@pytest.mark.parametrize(
    "path", ["checkpoints/r18-at.pt", "/abs/w.pt", "~/w.pt", "./w.pt", "../runs/dir_0.5.pt"]
)
def test_file_paths_are_bare_words_that_round_trip(path):
    spec = parse_spec(f"resnet18:weights={path}")
    assert spec.options["weights"] == path
    assert str(spec) == f"resnet18:weights={path}" and parse_spec(str(spec)) == spec


def test_numbers_never_become_paths():
    assert parse_value("8/255") == 8 / 255
    with pytest.raises(SpecError):
        parse_value(".5")


@pytest.mark.parametrize("text", ["x:a=0.5", "x:a=0.1", "x:a=0.25", "x:a=2.0", "x:a=1.0"])
def test_plain_decimals_print_as_decimals(text):
    assert str(parse_spec(text)) == text


# --- hashing and immutability -----------------------------------------------------------------


def test_spec_is_hashable_and_usable_as_key():
    a = parse_spec('x:l=[1,[2,3]],o={"k":[1,{"j":2}]}')
    b = parse_spec('x:o={"k":[1,{"j":2}]},l=[1,[2,3]]')
    assert hash(a) == hash(b)
    assert len({a, b, parse_spec("x:l=[1]")}) == 2
    assert {a: 1}[b] == 1


def test_spec_is_frozen():
    spec = parse_spec("jpeg:quality=75")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "bit-depth"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.kwargs = ()


def test_options_are_a_copy():
    spec = parse_spec('x:l=[1,2],o={"a":1}')
    options = spec.options
    options["l"].append(3)
    options["o"]["b"] = 2
    options["new"] = 1
    assert spec.options == {"l": [1, 2], "o": {"a": 1}}
    assert str(spec) == 'x:l=[1,2],o={"a":1}'


def test_spec_of_freezes_mutable_arguments():
    values = [1, 2]
    spec = Spec.of("x", l=values)
    values.append(3)
    assert spec.options == {"l": [1, 2]}
    hash(spec)


def test_specs_with_different_values_differ():
    assert parse_spec("jpeg:quality=75") != parse_spec("jpeg:quality=50")
    assert parse_spec("jpeg:quality=75") != parse_spec("bit-depth:quality=75")
    assert parse_spec('x:a="1"') != parse_spec("x:a=1")


@pytest.mark.parametrize("a, b", [("x:a=1", "x:a=true"), ("x:a=[]", "x:a={}"), ('x:a={"k":1}', 'x:a=[["k",1]]')])
def test_specs_that_print_differently_are_not_equal(a, b):
    assert str(parse_spec(a)) != str(parse_spec(b))
    assert parse_spec(a) != parse_spec(b)


# --- malformed input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("jpeg:quality", ["'quality'", "key=value"]),
        ("jpeg:quality=", ["'quality'", "empty value"]),
        ("pgd:steps=1,steps=2", ["'steps'", "twice"]),
        ("x:a=[1,2", ["[1,2", "unclosed"]),
        ('x:a="abc', ["unclosed"]),
        ("x:a=]", ["unbalanced", "']'"]),
        ("1bad!:a=1", ["invalid plugin name", "'1bad!'"]),
        ("_x", ["invalid plugin name", "'_x'"]),
        ("a b", ["invalid plugin name", "'a b'"]),
        (":a=1", ["invalid plugin name", "''"]),
        ("jpeg:", ["nothing after ':'"]),
        ("x:Bad-key=1", ["invalid key", "'Bad-key'"]),
        ("x:1a=1", ["invalid key", "'1a'"]),
        ("pgd:step_size=8/0", ["'step_size'", "8/0", "zero"]),
        ("x:a=b c", ["'a'", "'b c'"]),
        ("x:a=NaN", ["'a'", "finite"]),
        ("x:a=1,", ["not key=value"]),
        ("", ["empty spec"]),
        ("   ", ["empty spec"]),
    ],
)
def test_malformed_spec_names_the_bad_part(text, fragments):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
    with pytest.raises(ValueError):
        parse_spec("jpeg:quality")


def test_invalid_inputs_to_constructors():
    with pytest.raises(SpecError, match="invalid plugin name"):
        Spec("bad name")
    with pytest.raises(SpecError, match="empty spec"):
        parse_spec(None)  # type: ignore[arg-type]


# --- eps --------------------------------------------------------------------------------------


def test_parse_eps_accepts_fractions_and_numbers():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps(" 4 / 255 ") == 4 / 255
    assert parse_eps("0.5", norm="L2") == 0.5
    assert parse_eps(8 / 255) == 8 / 255
    assert parse_eps("1") == 1.0
    assert isinstance(parse_eps("1"), float)


def test_parse_eps_l2_may_exceed_one():
    assert parse_eps("2.0", norm="L2") == 2.0
    assert parse_eps(3, norm="L2") == 3.0


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("8/0", ["8/0", "zero"]),
        ("-1", ["'-1'", "positive"]),
        ("0", ["'0'", "positive"]),
        ("-8/255", ["positive"]),
        ("nan", ["'nan'", "number"]),
        ("NaN", ["finite"]),
        ("inf", ["'inf'"]),
        ("Infinity", ["finite"]),
        ("abc", ["'abc'", "8/255"]),
        ("true", ["'true'", "not a number"]),
        ("[1]", ["not a number"]),
        ("2.0", ["'2.0'", "exceeds 1", "Linf", "8/255"]),
        ("8", ["exceeds 1", "8/255"]),
    ],
)
def test_parse_eps_rejects_with_helpful_message(text, fragments):
    with pytest.raises(SpecError) as info:
        parse_eps(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("value", [True, float("nan"), float("inf"), -0.1, 0.0])
def test_parse_eps_rejects_bad_numbers(value):
    with pytest.raises(SpecError):
        parse_eps(value)


def test_parse_eps_result_is_finite_positive():
    for text in ["1/255", "0.5/255", "255/255", "0.031"]:
        value = parse_eps(text)
        assert math.isfinite(value) and 0 < value <= 1
