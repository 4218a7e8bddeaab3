"""Bad and hostile input: every case exits 2 with a short error naming the bad value, before any cell runs."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import robench
from robench import registry
from robench.cli import main
from robench.errors import ConfigError
from robench.options import fits
from robench.spec import SpecError, brief, parse_spec
from tests.hostile import files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = ["--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--eps", "6/255", "-n", "4", "--no-progress"]
HUGE = "9" * 5000  # past Python's 4300-digit limit for int()


def run_cli(tmp_path, *args, results=None):
    """``robench run`` in process; returns the result, after checking it is a clean exit 2 with a short message."""
    args = [str(a) for a in args]
    results = results or tmp_path / "r"
    result = CliRunner().invoke(main, ["run", *args, "--store", str(tmp_path / "s.sqlite"), "--results", str(results)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert len(result.output) < 3000, "a message never quotes unbounded input"
    return result


def adhoc(*args):
    return [*BASE, *args] if "--attack" in args else [*BASE, "--attack", "fgsm", *args]


@pytest.mark.parametrize("args, message", [
    (["--attack", "pgd:steps=1,targeted=no"], "attack pgd: option targeted=no is not of type bool (write true or false)"),
    (["--attack", "pgd:steps=1,random_start=abc"], "option random_start=abc is not of type bool"),
    (["--attack", "pgd:steps=1.5"], "option steps=1.5 is not of type int"),
    (["--defense", "jpeg:quality=high"], "option quality=high is not of type int"),
    (["--attack", "pgd:step_size=fast"], "option step_size=fast is not of type float | None"),
    (["--attack", f"pgd:steps={HUGE}"], "integers in specs lie in [-2**63, 2**63)"),
    (["--attack", f"pgd:step_size={2**64}"], "integer '18446744073709551616' is out of range"),
    (["--eps", HUGE], "is out of range"),
    (["--attack", "pgd:step_size=" + files.deep_json()], "nests lists or objects more than 16 deep"),
    (["--attack", "pgd:step_size=" + "9" * 400 + "/1"], "/1' is not a finite number"),
    (["--attack", "pgd:step_size=" + "9" * 400 + "/" + "9" * 400], "is not a finite number"),
    (["--attack", 'pgd:autocast="\\ud800"'], "not valid Unicode text"),
    (["--device", "bogus"], "--device 'bogus' is not a device robench runs on; use auto, cpu, cuda or cuda:N"),
    (["--device", ""], "--device '' is not a device"),
    (["--device", "meta"], "--device 'meta' is not a device"),
    (["--seed", 2**64], "seed must be an integer in [0, 2**63), got 18446744073709551616"),
    (["--seed", -1], "seed must be an integer in [0, 2**63)"),
    (["--sample-seed", -1], "sample_seed must be an integer in [0, 2**63)"),
    (["--eot", 2**64], "eot must be a positive integer (at most 10,000)"),
    (["--draws", "99999999999999999999999"], "draws must be a positive integer (at most 10,000)"),
    (["--batch-size", 10**6], "batch_size must be a positive integer (at most 65,536)"),
    (["-n", 10**8], "n must be a positive integer (at most 10,000,000)"),
    (["--attack", "pgd:steps=100000000"], "steps must be a positive integer (at most 10,000,000)"),
    (["--name", "{tmp}/abs"], "cannot name a results folder"),
    (["--name", ".."], "benchmark name '..' cannot name a results folder"),
    (["--name", "../x"], "benchmark name '../x' cannot name a results folder"),
    (["--name", "a" * 300], "cannot name a results folder: use 1 to 100 letters"),
])
def test_bad_command_line_values_exit_2_naming_the_value_before_anything_runs(tmp_path, args, message):
    result = run_cli(tmp_path, *adhoc(*(str(a).replace("{tmp}", str(tmp_path)) for a in args)))
    assert message in result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "abs").exists(), "nothing may run or be written"


def test_a_results_path_that_is_a_file_is_refused_before_computing(tmp_path):
    result = run_cli(tmp_path, *adhoc(), results="/dev/null")
    assert "--results '/dev/null': '/dev/null' is not a folder" in result.output
    assert not (tmp_path / "s.sqlite").exists(), "refused before the store is opened"


def grid(tmp_path, text: str, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


VALID = "dataset: synthetic\nmodels: [tiny]\ndefenses: [none]\nattacks: [fgsm]\neps: [6/255]\nn: 4\n"


@pytest.mark.parametrize("text, message", [
    ("name: 123\n" + VALID, "grid file grid.yaml: name 123 cannot name a results folder"),
    ("name: [a]\n" + VALID, "name ['a'] cannot name a results folder"),
    ('name: "a\\0b"\n' + VALID, "name 'a\\x00b' cannot name a results folder"),
    ("name: ../../x\n" + VALID, "name '../../x' cannot name a results folder"),
    ("grids: 5\n" + VALID, "grids must be a list of blocks (mappings), got 5"),
    ("description: [1]\n" + VALID, "description must be text, got [1]"),
    (VALID + f"seed: {HUGE}\n", "holds a value that cannot be converted"),
    (VALID + "draws: 99999999999999999999999\n", "draws must be a positive integer (at most 10,000)"),
    ("models: " + "[" * 5000 + "]" * 5000 + "\n", "nests lists or mappings too deeply to read"),
    (VALID.replace("models: [tiny]", "models: [[tiny]]"), "models holds ['tiny']; each entry is a spec string"),
    (VALID.replace("[fgsm]", "[" + ", ".join(f"'pgd:steps={i}'" for i in range(1, 401)) + "]").replace(
        "[6/255]", "[" + ", ".join(f"{i}/255" for i in range(1, 301)) + "]"), "1 x 1 x 400 x 1 x 300 = 120,000 cells"),
    ("{1: 2, a: 3}\n", "unknown keys ['1', 'a']"),
    ("- a\n- b\n", "must be a mapping of axes and values, not list"),
])
def test_bad_grid_files_exit_2_naming_the_value(tmp_path, text, message):
    result = run_cli(tmp_path, grid(tmp_path, text))
    assert message in result.output


def test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    path = files.alias_bomb(tmp_path / "bomb.yaml")
    assert path.stat().st_size < 1000
    before, began = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    result = run_cli(tmp_path, path)
    assert "expands to more than 100,000 values once its YAML aliases (*name) are followed" in result.output
    assert time.perf_counter() - began < 10
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, f"peak memory grew by {grown_mb:.0f} MB"


def test_a_yaml_python_tag_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    result = run_cli(tmp_path, files.yaml_python_tag(tmp_path / "tag.yaml", marker))
    assert "is not valid (safe) YAML: could not determine a constructor for the tag" in result.output
    assert "python/object/apply:os.system" in result.output
    assert not marker.exists()


def test_a_grid_file_that_is_not_utf8_says_where(tmp_path):
    result = run_cli(tmp_path, files.not_utf8(tmp_path / "latin1.yaml"))
    assert "grid file latin1.yaml is not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8" in result.output


def test_an_oversized_grid_file_is_not_read(tmp_path):
    path = grid(tmp_path, VALID + "#" * 1_000_001 + "\n")
    assert "grid files hold at most 1,000,000" in run_cli(tmp_path, path).output


MALICIOUS = {
    "pickle in a torch zip": files.pickle_checkpoint,
    "plain pickle": files.raw_pickle,
    "data.pkl swapped in a zip": files.pickle_in_renamed_zip,
}
LOADERS = {"model weights": ("--model", "small-cnn:weights={}"),
           "defense weights": ("--defense", "dir:encoder_depth=1,decoder_depth=1,weights={}")}


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", MALICIOUS)
def test_malicious_checkpoints_are_refused_and_run_nothing(tmp_path, kind, loader):
    marker = tmp_path / "ran"
    path = MALICIOUS[kind](tmp_path / "evil.pt", marker)
    option, spec = LOADERS[loader]
    args = [a for a in BASE if a not in ("--model", "tiny")] if option == "--model" else list(BASE)
    if option == "--defense":
        args[args.index("--defense") + 1] = spec.format(path)
    else:
        args += [option, spec.format(path)]
    result = run_cli(tmp_path, *args, "--attack", "fgsm")
    assert "cannot be loaded safely (weights_only=True)" in result.output
    assert not marker.exists(), "the pickle ran a command"


def test_a_truncated_checkpoint_is_refused(tmp_path):
    state = registry.build("models", "small-cnn").state_dict()
    path = files.truncated_checkpoint(tmp_path / "cut.pt", state)
    args = [a for a in BASE if a not in ("--model", "tiny")]
    result = run_cli(tmp_path, *args, "--model", f"small-cnn:weights={path}", "--attack", "fgsm")
    assert f"checkpoint '{path}' cannot be loaded safely (weights_only=True)" in result.output


@pytest.mark.parametrize("name", ["../x", "/abs", "", "a" * 101])
def test_the_python_api_refuses_a_benchmark_name_that_is_not_a_folder_name(tmp_path, name):
    with pytest.raises(ConfigError, match="cannot name a results folder"):
        robench.evaluate("tiny", attacks="fgsm", dataset="synthetic", eps=6 / 255, n=4, device="cpu",
                         store=tmp_path / "s.sqlite", name=name)
    assert not (tmp_path / "s.sqlite").exists()


def test_option_types_follow_what_ls_documents():
    with pytest.raises(SpecError, match=r"option targeted=no is not of type bool"):
        registry.build("attacks", "pgd:targeted=no")
    attack = registry.build("attacks", "pgd:targeted=true,steps=3,step_size=2/255,restarts=1")
    assert attack.targeted is True and attack.steps == 3
    assert registry.build("attacks", "pgd:step_size=1").step_size == 1, "an integer is a float"
    assert registry.build("models", "small-cnn:weights=null") is not None, "None where the annotation allows it"


def test_spec_numbers_are_finite_and_fit_int64():
    assert parse_spec(f"x:a={2**63 - 1},b={-2**63}").options == {"a": 2**63 - 1, "b": -2**63}
    for text, message in [(f"x:a={2**63}", "out of range"), ("x:a=[1e400]", "not a finite number"),
                          ("x:a=[NaN]", "not a finite number"), ("x:a={\"b\": Infinity}", "not a finite number"),
                          ("x:a=1e999/1", "not a finite number"), ("x:a=" + "[" * 17 + "]" * 17, "more than 16 deep")]:
        with pytest.raises(SpecError, match=message):
            parse_spec(text)
    assert parse_spec("x:a=" + "[" * 16 + "]" * 16).options["a"] is not None


def test_ctrl_c_exits_130_and_says_rerunning_resumes(tmp_path):
    """A real SIGINT to a running ``robench run`` (the in-process test in test_cli covers resuming)."""
    args = [sys.executable, "-m", "robench.cli", "run", *BASE, "--attack", "pgd:steps=100000", "-n", "64",
            "--store", str(tmp_path / "s.sqlite"), "--results", str(tmp_path / "r")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a shell without job control starts background jobs with SIGINT ignored: restore the default
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (tmp_path / "s.sqlite").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(1.0)  # inside the first batch's attack
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted; every finished batch is kept in" in err and "rerun the same command to resume" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("features, message", [
    ("bogus", "feature extractor 'bogus': name the layer whose output is F"),
    ('"bogus:layer=net.layer2"', "unknown model 'bogus'"),
])
def test_an_unknown_feature_extractor_fails_when_the_attack_is_built_not_when_it_runs(tmp_path, features, message):
    result = run_cli(tmp_path, *adhoc("--attack", f"ssp:steps=1,features={features}"))
    assert message in result.output


def test_messages_quote_any_value_briefly():
    shared = ["tiny"] * 9
    for _ in range(10):  # what a YAML alias bomb builds: 9**10 strings, 10 lists in memory
        shared = [shared] * 9
    loop: list = []
    loop.append(loop)
    for value in (shared, loop, 10**5000, "x" * 10**6, {"k" * 1000: [1] * 10**5}):
        began = time.perf_counter()
        assert len(brief(value)) <= 80 and time.perf_counter() - began < 1
    assert brief(10**5000) == "<integer of about 5000 digits>"


@pytest.fixture(scope="module")
def one_cell_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("store")
    args = ["run", *adhoc(), "--name", "mine", "--store", str(folder / "s.sqlite"), "--results", str(folder / "r")]
    assert CliRunner().invoke(main, args).exit_code == 0
    return folder / "s.sqlite"


@pytest.mark.parametrize("args, message", [
    (["show", "%"], "'%' is not a cell key: keys are hexadecimal"),
    (["show", "_"], "'_' is not a cell key"),
    (["show", "a" * 100_000], "is not a cell key"),
    (["leaderboard", "mine", "--results", "/dev/null"], "'/dev/null' is not a folder"),
    (["report", "x" * 5_000], "no paper tables for 'xxxxxxxx"),
    (["report", "../benchmarks/dir2023"], "no paper tables for '../benchmarks/dir2023'"),
])
def test_read_only_commands_refuse_bad_values(one_cell_store, args, message):
    result = CliRunner().invoke(main, [*args, "--store", str(one_cell_store)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in result.output and len(result.output) < 3000


@pytest.mark.parametrize("expected, good, bad", [
    ("bool", [True, False], ["no", 1, None]),
    ("int", [0, -3], [1.5, True, "1"]),
    ("float", [0.5, 2, 8 / 255], [True, "fast", None]),
    ("int | None", [None, 4], [4.0, "x"]),
    ("str | Path | None", ["w.pt", Path("w.pt"), None], [3, [1]]),
    ("Optional[float]", [None, 1.0], ["x"]),
    ("Union[int, str]", [1, "a"], [1.5]),
    ("Literal['true', 'pred']", ["true", "pred"], ["false", True]),
    ("list[str]", [["a"], []], ["a", {}]),
    ("nn.Module", ["anything", 1, None], []),
    ("", ["anything"], []),
])
def test_option_types_are_read_from_the_annotation_text(expected, good, bad):
    assert all(fits(value, expected) for value in good)
    assert not any(fits(value, expected) for value in bad)
