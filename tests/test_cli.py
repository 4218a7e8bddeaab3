"""The ``robench`` command line end to end: the smoke benchmark, ad-hoc grids, bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from urllib.error import URLError

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from robench.cli import main
from robench.flags import FLAG_DOCS
from robench.store import Store
from tests.conftest import DATA, needs_cifar


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@needs_cifar
def test_smoke_benchmark_end_to_end_then_cached(shared_data, tmp_path):
    store, results = tmp_path / "s.sqlite", tmp_path / "results"
    first = invoke("run", "smoke", "-n", 8, "--store", store, "--results", results, "--no-progress")
    assert first.exit_code == 0, first.output
    assert "12 cells computed, 0 found in the store, 0 failed" in first.output
    with open(results / "smoke" / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    cells = [r for r in rows if r["attack"] != "worst-case"]
    assert len(cells) == 12 and {r["setting"] for r in cells} == {"oblivious", "adaptive"}
    assert {r["defense"] for r in cells} == {"none", "jpeg:quality=75", "bit-depth:bits=4"}
    undefended = [r for r in cells if r["defense"] == "none" and r["attack"] == "pgd:steps=10"]
    assert all(float(r["robust_acc"]) < 0.2 for r in undefended), "PGD-10 at 8/255 breaks a standard ResNet-18"
    assert (results / "smoke" / "leaderboard.md").read_text().startswith("# robench leaderboard: smoke")

    second = invoke("run", "smoke", "-n", 8, "--store", store, "--results", results, "--no-progress")
    assert "0 cells computed, 12 found in the store, 0 failed" in second.output

    regenerated = invoke("leaderboard", "--store", store, "--results", tmp_path / "again")
    assert regenerated.exit_code == 0
    assert (tmp_path / "again" / "smoke" / "leaderboard.csv").read_text() == (
        results / "smoke" / "leaderboard.csv"
    ).read_text()


def test_adhoc_grid_with_spec_strings_and_fraction_eps(tmp_path):
    result = invoke(
        "run", "--dataset", "synthetic", "--model", "tiny", "--defense", "bit-depth:bits=5", "--defense", "none",
        "--attack", "pgd:steps=3,step_size=2/255", "--eps", "6/255", "-n", 32, "--setting", "oblivious",
        "--setting", "adaptive", "--name", "mine", "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "4 cells computed" in result.output
    with open(tmp_path / "r" / "mine" / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["attack"] for r in rows} == {"pgd:step_size=2/255,steps=3"}, "one attack: no worst-case row"
    assert {r["threat"] for r in rows} == {"Linf 6/255"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--defense", "jpge"], "did you mean 'jpeg'"),
        (["--attack", "pgd:steps"], "is not key=value"),
        (["--eps", "8/0"], "divides by zero"),
        (["--eps", "-1"], "positive"),
        (["--eps", "2.0"], "exceeds 1"),
        (["--setting", "sideways"], "unknown setting"),
        (["--model", "resnet18-standard", "--dataset", "mnist"], "mnist"),
        (["--defense", "jpeg:qualty=75"], "no option 'qualty' (did you mean 'quality'?); its options: quality, surrogate"),
        (["--norm", "L3"], "unknown norm 'L3'; choose one of Linf, L2"),
    ],
)
def test_bad_input_exits_2_before_running_anything(tmp_path, offline, args, message):
    base = {"--dataset": "synthetic", "--model": "tiny", "--defense": "none", "--attack": "fgsm", "--eps": "6/255",
            "--setting": "adaptive"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [item for pair in base.items() for item in pair]
    result = invoke("run", *flat, "-n", 8, "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r")
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "r").exists(), "nothing may run or be written"


def test_missing_data_names_the_root_and_the_fix(tmp_path, offline):
    result = invoke("run", "--dataset", "cifar10", "--model", "tiny", "--defense", "none", "--attack", "fgsm",
                    "--eps", "8/255", "-n", 8, "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r")
    assert result.exit_code == 2
    assert str(offline) in result.output and "ROBENCH_DATA=" in result.output


def test_a_failed_cell_gives_a_nonzero_exit_and_keeps_the_others(tmp_path):
    result = invoke("run", "--dataset", "synthetic:channels=2", "--model", "tiny:channels=2", "--defense", "jpeg",
                    "--defense", "none", "--attack", "fgsm", "--eps", "6/255", "-n", 8, "--no-progress",
                    "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r")
    assert result.exit_code == 1
    assert "1 cells computed" in result.output and "1 failed" in result.output


def test_ls_shows_attributes_and_providers():
    defenses = invoke("ls", "defenses").output
    assert "jpeg" in defenses and "differentiable=False" in defenses and "robench 0." in defenses
    attacks = invoke("ls", "attacks").output
    assert "norms=Linf,L2" in attacks and "kind=white-box" in attacks
    assert "smoke" in invoke("ls", "benchmarks").output
    assert "resnet18-standard" in invoke("ls", "models").output
    assert "cifar10" in invoke("ls", "datasets").output


def _one_cell_store(tmp_path, *more):
    store = tmp_path / "s.sqlite"
    invoke("run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", "fgsm", "--eps",
           "6/255", "-n", 8, "--no-progress", "--store", store, "--results", tmp_path / "r", *more)
    (board,) = (tmp_path / "r").glob("adhoc-synthetic-*/leaderboard.csv")
    with open(board) as handle:
        return store, next(csv.DictReader(handle))["key"]


def test_show_prints_a_readable_summary_and_keeps_the_raw_json(tmp_path):
    store, key = _one_cell_store(tmp_path)
    shown = invoke("show", key, "--store", store)
    assert shown.exit_code == 0, shown.output
    for part in ("(done)", "attack             fgsm", "threat             Linf 6/255", "clean accuracy",
                 "robust accuracy", "95% CI [", "flags: none", "wall time:", "machine", "torch"):
        assert part in shown.output, part
    raw = invoke("show", key, "--store", store, "--json")
    record = json.loads(raw.output)
    assert record["status"] == "done" and record["spec"]["attack"] == "fgsm" and record["summary"]["n"] == 8


def test_show_explains_each_flag(tmp_path):
    store, key = _one_cell_store(tmp_path)
    with Store(store) as opened:
        (record,) = opened.find_cells(key)
        opened._db.execute("UPDATE cells SET status = 'running' WHERE key = ?", (record.key,))  # a done cell stays
        opened.finish_cell(record.key, record.summary, ["zero-gradient"])
    shown = invoke("show", key[:8], "--store", store)
    assert "zero-gradient: " + " ".join(FLAG_DOCS["zero-gradient"].split()[:6]) in " ".join(shown.output.split())


def test_show_of_an_unknown_or_ambiguous_key(tmp_path):
    store, _ = _one_cell_store(tmp_path, "--defense", "bit-depth:bits=4")
    unknown = invoke("show", "00000000", "--store", store)
    assert unknown.exit_code == 2
    assert "no stored cell has a key starting with '00000000'" in unknown.output and "longer" not in unknown.output
    several = invoke("show", "", "--store", store)
    assert several.exit_code == 2 and "2 cells have keys starting with ''" in several.output
    assert "give a longer key prefix" in several.output


@pytest.mark.parametrize("command", [["show", "abc"], ["leaderboard"], ["report", "dir2023"]])
def test_read_only_commands_never_create_a_store(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    named = invoke(*command, "--store", tmp_path / "none.sqlite")
    assert named.exit_code == 2 and "no store at" in named.output and "pass --store PATH" in named.output
    default = invoke(*command)
    assert default.exit_code == 2 and "no store at robench-results/robench.sqlite" in default.output
    assert list(tmp_path.iterdir()) == [], "a read-only command created files"


def test_report_on_a_store_without_the_papers_cells_says_which_command_computes_them(tmp_path):
    store, _ = _one_cell_store(tmp_path)
    result = invoke("report", "dir2023", "--store", store, "--results", tmp_path / "out")
    assert result.exit_code == 2
    assert "no cell in" in result.output and "fills a dir2023 table" in result.output
    assert "e.g. `robench run dir2023-" in result.output and "dir2023-table1" in result.output
    assert not (tmp_path / "out").exists(), "no table of dashes may be written"


def test_a_missing_grid_file_is_reported_as_not_found(tmp_path):
    result = invoke("run", "nope.yaml", "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r")
    assert result.exit_code == 2
    assert "grid file nope.yaml not found" in result.output and "unknown benchmark" not in result.output


def test_a_failed_download_shows_its_own_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    def refuse(*args, **kwargs):
        raise URLError("name resolution failed")

    monkeypatch.setenv("ROBENCH_DATA", str(tmp_path / "empty"))
    monkeypatch.delenv("ROBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", refuse)
    result = invoke("run", "--dataset", "cifar10", "--model", "tiny", "--defense", "none", "--attack", "fgsm",
                    "--eps", "8/255", "-n", 8, "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r")
    assert result.exit_code == 2
    assert "The download was tried and failed: URLError" in result.output and "name resolution failed" in result.output
    assert "allow the download" not in result.output


@needs_cifar
def test_asking_for_more_images_than_the_data_holds_says_how_many_it_holds(shared_data, tmp_path):
    held = len(np.load(DATA / "cifar10_test_head.npz")["y"])
    result = invoke("run", "--dataset", "cifar10", "--model", "tiny", "--defense", "none", "--attack", "fgsm",
                    "--eps", "8/255", "-n", 100000, "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r")
    assert result.exit_code == 2
    assert "asked for n=100000 images, but the offline head" in result.output and f"holds {held}" in result.output
    assert f"use -n {held} or fewer" in result.output and "not found" not in result.output


def test_norms_are_accepted_in_any_case_on_the_command_line_and_in_grid_files(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "lower", "dataset": "synthetic", "n": 8, "models": ["tiny"],
                                    "defenses": ["none"], "attacks": ["fgsm"], "norm": "linf", "eps": ["6/255"]}))
    for args in (["--norm", "LINF", "--name", "upper", "--dataset", "synthetic", "--model", "tiny", "--defense", "none",
                  "--attack", "fgsm", "--eps", "6/255", "-n", 8], [grid]):
        result = invoke("run", *args, "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r", "--no-progress")
        assert result.exit_code == 0, result.output
    for name in ("upper", "lower"):
        with open(tmp_path / "r" / name / "leaderboard.csv") as handle:
            assert {r["threat"] for r in csv.DictReader(handle)} == {"Linf 6/255"}


def test_missing_cells_are_grouped_by_reason(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "pending", "dataset": "synthetic", "n": 8, "models": ["tiny"], "eps": ["6/255"],
        "defenses": ["none", "not-yet-a", "not-yet-b"], "attacks": ["fgsm", "pgd:steps=1", "pgd:steps=2"],
        "pending": {"defenses": ["not-yet-a", "not-yet-b"]},
    }))
    result = invoke("run", grid, "--store", tmp_path / "s.sqlite", "--results", tmp_path / "r", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "6 missing" in result.output
    for name in ("not-yet-a", "not-yet-b"):
        reason = f"defense '{name}' is not registered"
        assert result.output.count(reason) == 1, "one line per reason, not one per cell"
        assert f"- 3 cells: {reason} (e.g. " in result.output


def test_ctrl_c_during_a_run_exits_130_and_rerunning_resumes(tmp_path, monkeypatch):
    finish = Store.finish_cell
    calls = []

    def interrupt_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return finish(self, *args, **kwargs)

    args = ["run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--defense", "bit-depth:bits=4",
            "--attack", "fgsm", "--eps", "6/255", "-n", 8, "--no-progress", "--store", tmp_path / "s.sqlite",
            "--results", tmp_path / "r"]
    monkeypatch.setattr(Store, "finish_cell", interrupt_the_second)
    interrupted = invoke(*args)
    assert interrupted.exit_code == 130
    assert "interrupted" in interrupted.output and "rerun the same command to resume" in interrupted.output
    monkeypatch.setattr(Store, "finish_cell", finish)
    resumed = invoke(*args)
    assert resumed.exit_code == 0 and "1 cells computed, 1 found in the store" in resumed.output


def _column(output: str, name: str, following: str) -> str:
    """The text of one column of an ``ls`` table, its wrapped lines joined."""
    header, *lines = output.splitlines()
    start, end = header.index(name), header.index(following)
    return " ".join(" ".join(line[start:end] for line in lines[1:]).split())


def test_ls_describes_plugins_in_full_sentences():
    defenses = _column(invoke("ls", "defenses").output, "description", "attributes")
    assert "Encode and decode each image with the PIL JPEG codec at ``quality`` (75 in Guo et al.) " in defenses
    assert "..." not in defenses
    benchmarks = _column(invoke("ls", "benchmarks").output, "description", "provided by")
    assert "Smoke test of the whole pipeline: the CIFAR-10 ResNet-18 shipped with AutoAttack behind no defense" in benchmarks


def test_ls_kind_name_documents_a_plugin():
    result = invoke("ls", "defenses", "jpeg")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "jpeg: defense robench.defenses.jpeg:JPEG, provided by robench 0." in text
    assert "Guo et al." in text and "quality int 75 JPEG quality, an integer in [1, 95]." in text
    assert "surrogate str identity" in text and "differentiable False" in text and "version 1" in text
    attack = " ".join(invoke("ls", "attacks", "restored-pgd").output.split())
    assert "steps int 20" in attack and "early_stop bool false keep each example's first iterate" in attack
    assert "norms Linf,L2" in attack and "kind white-box" in attack
    dataset = " ".join(invoke("ls", "datasets", "cifar10").output.split())
    assert "root str | Path | None null" in dataset and "download bool true" in dataset
    unknown = invoke("ls", "defenses", "jpge")
    assert unknown.exit_code == 2 and "did you mean 'jpeg'" in unknown.output


def test_help_and_ls_do_not_import_torch():
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from robench.cli import main\n"
        "for args in (['--help'], ['ls', 'defenses'], ['ls', 'attacks'], ['ls', 'models'], ['ls', 'datasets'],"
        " ['ls', 'benchmarks']):\n"
        "    assert CliRunner().invoke(main, args).exit_code == 0, args\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'torchattacks')))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_train_is_loaded_when_called():
    result = invoke("train", "--help")
    assert result.exit_code == 0 and "--dataset" in result.output
    assert "\n  train " in invoke("--help").output


def test_adhoc_grids_keep_their_own_leaderboards_in_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for attack in ("fgsm", "pgd:steps=2"):
        result = invoke("run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", attack,
                        "--eps", "6/255", "-n", 8, "--no-progress")
        assert result.exit_code == 0, result.output
    boards = sorted((tmp_path / "robench-results").glob("adhoc-synthetic-*/leaderboard.csv"))
    assert len(boards) == 2, "a second ad-hoc grid must not replace the first one's leaderboard"
    assert (tmp_path / "robench-results" / "robench.sqlite").is_file()
    again = invoke("run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", "fgsm",
                   "--eps", "6/255", "-n", 8, "--no-progress")
    assert str(boards[0].parent.name) in again.output or str(boards[1].parent.name) in again.output
    assert len(list((tmp_path / "robench-results").glob("adhoc-*"))) == 2, "the same grid keeps its name"
    assert invoke("leaderboard").exit_code == 0
