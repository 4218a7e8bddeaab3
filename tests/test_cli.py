"""The ``robench`` command line end to end: the smoke benchmark, ad-hoc grids, bad input."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

from robench.cli import main
from tests.conftest import needs_cifar


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


def test_show_prints_a_stored_cell(tmp_path):
    store = tmp_path / "s.sqlite"
    invoke("run", "--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--attack", "fgsm", "--eps",
           "6/255", "-n", 8, "--no-progress", "--store", store, "--results", tmp_path / "r")
    (board,) = (tmp_path / "r").glob("adhoc-synthetic-*/leaderboard.csv")
    with open(board) as handle:
        key = next(csv.DictReader(handle))["key"]
    shown = invoke("show", key, "--store", store)
    assert shown.exit_code == 0 and '"status": "done"' in shown.output and '"attack": "fgsm"' in shown.output


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
