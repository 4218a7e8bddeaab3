"""Property tests (hypothesis) of the spec parser, grid files and ``robench run``'s options.

Whatever the input: a clean result or a clean error (exit 0 or 2), never a traceback, in bounded
time and memory; and a printed spec reads back equal by value. The default suite tries a few
dozen inputs per property in seconds; ``-m slow`` runs the longer campaign on the same properties.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from robench.cli import USAGE_ERRORS, main
from robench.grid import AXES, META, SCALARS, load_benchmark
from robench.report import wilson_interval
from robench.spec import INT64, Spec, SpecError, parse_spec

pytest.importorskip("hypothesis", reason="property tests need hypothesis: pip install -e .[dev]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CLI_FAST = settings(FAST, max_examples=12)
CAMPAIGN = settings(FAST, max_examples=10_000)
CLI_CAMPAIGN = settings(FAST, max_examples=1_000)
SECONDS = 30  # per input: a parse, a grid file or one small ad-hoc run
MEMORY_MB = 1024  # growth of the process's peak memory over the whole module
_BASELINE: list[int] = []


def within_memory() -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    _BASELINE[:] = _BASELINE or [peak]
    assert peak - _BASELINE[0] < MEMORY_MB, f"peak memory grew by {peak - _BASELINE[0]} MB"


# --- strategies -------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_\-]{0,8}", fullmatch=True)
awkward = st.sampled_from([
    "8/255", "2/255", "0.5/255", "0.5", "1", "-1", "0", "true", "false", "no", "abc", "null", "[1,2]", '"a,b"',
    "{}", '{"k": [1]}', "1e400", "-1e400", "NaN", "Infinity", "1/0", "[[[[", "]]", "=", ":", ",", '"', "\\", "/x/y.pt",
    "../w.pt", "~/w.pt", "\x00", "\u00e9", '"\\ud800"', str(INT64), str(-INT64), str(INT64 - 1), "9" * 400 + "/1",
    "[" * 40 + "]" * 40, "[" * 1200 + "]" * 1200,
])
huge_digits = st.integers(4_300, 6_000).map(lambda k: "9" * k)
values_text = st.one_of(awkward, huge_digits, st.text(max_size=12), st.integers().map(str), st.floats().map(repr),
                        st.tuples(st.integers(-300, 300), st.integers(-300, 300)).map(lambda t: f"{t[0]}/{t[1]}"))
spec_texts = st.one_of(
    st.text(max_size=40),
    st.builds(lambda name, pairs: name + (":" + ",".join(f"{k}={v}" for k, v in pairs) if pairs else ""),
              names, st.lists(st.tuples(names, values_text), max_size=4)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-INT64, INT64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
option_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True)


def by_value(spec: Spec) -> str:
    """A spec's name and options with their JSON types: 1, 1.0 and true differ; key order does not."""
    return json.dumps(spec.to_json(), sort_keys=True)


# --- the spec parser --------------------------------------------------------------------------

def _any_text_parses_or_is_refused(text):
    began = time.perf_counter()
    try:
        spec = parse_spec(text)
    except SpecError as err:
        assert len(str(err)) < 1_000, "an error message never quotes unbounded input"
    else:
        assert by_value(parse_spec(str(spec))) == by_value(spec), "parse(print(spec)) == spec"
    assert time.perf_counter() - began < SECONDS


def _printed_specs_read_back_equal(name, options):
    spec = Spec(name, tuple(options.items()))
    assert by_value(parse_spec(str(spec))) == by_value(spec)


test_any_spec_text_parses_or_is_refused = FAST(given(spec_texts)(_any_text_parses_or_is_refused))
test_printed_specs_read_back_equal = FAST(
    given(names, st.dictionaries(option_names, json_values, max_size=4))(_printed_specs_read_back_equal))
test_spec_parser_campaign = pytest.mark.slow(CAMPAIGN(given(spec_texts)(_any_text_parses_or_is_refused)))
test_spec_round_trip_campaign = pytest.mark.slow(CAMPAIGN(
    given(names, st.dictionaries(option_names, json_values, max_size=4))(_printed_specs_read_back_equal)))


# --- grid files -------------------------------------------------------------------------------

plausible = st.sampled_from(["synthetic", "tiny", "none", "fgsm", "pgd:steps=2", "8/255", "adaptive", "Linf", 4, 1,
                             0, -1, True, None, 2**64, 1e400, "jpeg:quality=high", "../x", "a\x00b"])
grid_values = st.one_of(plausible, json_values, st.lists(st.one_of(plausible, json_values), max_size=3))
grid_keys = st.sampled_from([*AXES, *SCALARS, *META, "bogus"])
VALID_GRID = {"dataset": "synthetic", "models": ["tiny"], "defenses": ["none"], "attacks": ["fgsm"], "eps": ["6/255"]}
grid_data = st.one_of(st.dictionaries(grid_keys, grid_values, max_size=8),
                      st.dictionaries(grid_keys, grid_values, max_size=2).map(lambda d: {**VALID_GRID, **d}))
grid_texts = st.one_of(grid_data.map(lambda d: yaml.safe_dump(d, allow_unicode=True)), st.text(max_size=200),
                       st.binary(max_size=200))


def _any_grid_file_loads_or_is_refused(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "grid.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        began = time.perf_counter()
        try:
            load_benchmark(str(path))
        except USAGE_ERRORS as err:
            assert len(str(err)) < 3_000, "an error message never quotes unbounded input"
        assert time.perf_counter() - began < SECONDS
    within_memory()


test_any_grid_file_loads_or_is_refused = FAST(given(grid_texts)(_any_grid_file_loads_or_is_refused))
test_grid_file_campaign = pytest.mark.slow(CAMPAIGN(given(grid_texts)(_any_grid_file_loads_or_is_refused)))


# --- robench run's options --------------------------------------------------------------------

BASE = ["--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", "fgsm", "--eps", "6/255", "-n", "4"]
integers_text = st.one_of(st.integers(-3, 20), st.integers(), st.sampled_from([2**63, 2**64]), huge_digits,
                          st.sampled_from(["1e3", "x", "", "0x10"])).map(str)
OPTIONS = {
    "--defense": st.sampled_from(["bit-depth:bits=4", "jpeg:quality=75", "bit-depth:bits=0", "jpeg:quality=high",
                                  "jpeg:surrogate=blur", "bit-depth:bits=true"]) | spec_texts,
    "--attack": st.sampled_from(["pgd:steps=2", "pgd:steps=2,targeted=no", "pgd:steps=1,random_start=false",
                                 "pgd:steps=1,step_size=2/255", "pgd:restarts=0"]) | spec_texts,
    "--eps": st.sampled_from(["8/255", "0", "-1", "2", "nan", "inf", "1e-300", "0.5"]) | values_text,
    "-n": integers_text, "--seed": integers_text, "--draws": integers_text, "--eot": integers_text,
    "--batch-size": integers_text, "--sample-seed": integers_text,
    "--device": st.sampled_from(["cpu", "auto", "", "meta", "bogus", "cuda:99", "cpu:0"]) | st.text(max_size=8),
    "--name": st.sampled_from(["mine", "..", ".", "/dev/null/x", "a" * 300, "a/b", "", "x" * 100]) | st.text(max_size=20),
    "--setting": st.sampled_from(["adaptive", "oblivious", "transfer", "sideways", "restored"]),
    "--norm": st.sampled_from(["Linf", "L2", "l2", "L3", ""]),
    "--model": st.sampled_from(["tiny:num_classes=3", "tiny:size=0", "tiny:channels=true"]) | spec_texts,
    "--dataset": st.sampled_from(["synthetic:size=3", "synthetic:size=-1", "synthetic:num_classes=3"]) | spec_texts,
    "--results": st.sampled_from(["/dev/null", "r/sub", "file"]),
    "--data-root": st.sampled_from(["/dev/null", "", "missing"]),
    "--source": st.sampled_from(["tiny", "tiny:num_classes=3"]) | spec_texts,
    "--attack-defense": st.sampled_from(["jpeg", "bit-depth:bits=4"]) | spec_texts,
    "--restore-from": st.sampled_from(["fgsm", "pgd:steps=1"]) | spec_texts,
}
cli_options = st.lists(st.sampled_from(sorted(OPTIONS)).flatmap(lambda o: st.tuples(st.just(o), OPTIONS[o])),
                       max_size=3)


def _any_options_run_or_are_refused(options):
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "file").write_text("not a folder")
        args = ["run", *BASE, "--no-progress", "--store", f"{folder}/s.sqlite", "--results", f"{folder}/r"]
        for option, value in options:
            args += [option, f"{folder}/{value}" if option == "--results" and not value.startswith("/") else value]
        began = time.perf_counter()
        result = CliRunner().invoke(main, args, env={"ROBENCH_DATA": os.environ.get("ROBENCH_DATA")})  # --data-root sets it
        assert result.exit_code in (0, 2), (args, result.output[-2_000:], repr(result.exception))
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
        assert "Traceback" not in result.output and len(result.output) < 20_000
        assert time.perf_counter() - began < SECONDS
    within_memory()


test_any_options_run_or_are_refused = CLI_FAST(given(cli_options)(_any_options_run_or_are_refused))
test_cli_options_campaign = pytest.mark.slow(CLI_CAMPAIGN(given(cli_options)(_any_options_run_or_are_refused)))


# --- what the leaderboard derives from them ---------------------------------------------------

counts = st.integers(1, 10**6).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@FAST
@given(counts)
def test_the_wilson_interval_contains_the_observed_accuracy(count):
    """Rounding once put 4/4 above its own interval's top, and the eps-sweep plot refused the negative error bar."""
    successes, n = count
    low, high = wilson_interval(successes, n)
    assert 0 <= low <= successes / n <= high <= 1


# --- the other commands -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_cell(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("one-cell")
    args = ["run", *BASE, "--no-progress", "--name", "mine", "--store", f"{folder}/s.sqlite", "--results", f"{folder}/r"]
    assert CliRunner().invoke(main, args).exit_code == 0
    return folder


words = st.one_of(st.text(max_size=30), st.sampled_from(["mine", "dir2023", "jpeg", "%", "_", "..", "/", "ab" * 40]))
commands = st.one_of(
    st.tuples(st.just("ls"), st.sampled_from(["defenses", "attacks", "models", "datasets", "benchmarks", "x"]), words),
    st.tuples(st.sampled_from(["show", "report", "leaderboard"]), words),
)


def _any_command_answers_or_is_refused(folder, command):
    args = list(command)
    if args[0] != "ls":
        args += ["--store", f"{folder}/s.sqlite"] + (["--results", f"{folder}/out"] if args[0] != "show" else [])
    began = time.perf_counter()
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 2), (args, result.output[-2_000:], repr(result.exception))
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    assert time.perf_counter() - began < SECONDS


@FAST
@given(command=commands)
def test_any_ls_show_report_or_leaderboard_answers_or_is_refused(one_cell, command):
    _any_command_answers_or_is_refused(one_cell, command)


@pytest.mark.slow
@CLI_CAMPAIGN
@given(command=commands)
def test_other_commands_campaign(one_cell, command):
    _any_command_answers_or_is_refused(one_cell, command)
