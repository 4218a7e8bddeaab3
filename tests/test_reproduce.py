"""robench reproduce: the paper's train commands in dependency order, then its benchmarks, then its report."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from robench.cli import main
from robench.reproduce import plan_steps


def _output(command: str) -> str:
    words = shlex.split(command)
    return words[words.index("--output") + 1]


@pytest.mark.parametrize("paper", ["dir2023", "rdp2022"])
def test_every_checkpoint_is_trained_after_the_checkpoints_its_command_names(paper):
    names, steps = plan_steps(paper, [], [])
    commands = [s.command for s in steps]
    trains = [c for c in commands if c.startswith("robench train")]
    assert trains and len(set(commands)) == len(commands)
    for i, command in enumerate(trains):
        for other in trains[i + 1:]:
            assert f"={_output(other)}" not in command, f"{command} needs {_output(other)}, trained later"
    assert commands[len(trains):] == [f"robench run {n}" for n in names] + [f"robench report {paper}"]


def test_dir_denoisers_come_after_their_target():
    _, steps = plan_steps("dir2023", [], [])
    order = [_output(s.command) for s in steps if s.command.startswith("robench train")]
    target = order.index("checkpoints/resnet18-at-cifar10.pt")
    assert target < order.index("checkpoints/dir-cifar10.pt") and target < order.index("checkpoints/hgd-cifar10.pt")


def test_a_checkpoint_with_its_card_is_done_and_one_without_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("checkpoints").mkdir()
    for name in ("resnet18-at-cifar10.pt", "resnet18-at-cifar10.json", "nrp-cifar10.pt"):
        Path("checkpoints", name).touch()
    _, steps = plan_steps("dir2023", [], [])
    done = {_output(s.command) for s in steps if s.command.startswith("robench train") and s.done}
    assert done == {"checkpoints/resnet18-at-cifar10.pt"}


def _reproduce(monkeypatch, codes: dict[str, int], *args: str):
    ran = []

    def fake(command: str) -> int:
        ran.append(command)
        return next((code for start, code in codes.items() if command.startswith(start)), 0)

    monkeypatch.setattr("robench.cli.run_step", fake)
    result = CliRunner().invoke(main, ["reproduce", "dir2023", *args])
    return result, ran


def test_reproduce_runs_the_missing_steps_in_order_and_goes_on_past_failed_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("checkpoints").mkdir()
    Path("checkpoints/nrp-cifar10.pt").touch()
    Path("checkpoints/nrp-cifar10.json").touch()
    result, ran = _reproduce(monkeypatch, {"robench run dir2023-table1": 1}, "--results", "r", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert not any("nrp-cifar10.pt" in c for c in ran), "a trained checkpoint is not trained again"
    runs = [c for c in ran if c.startswith("robench run")]
    assert len(runs) == 7 and ran[-1] == "robench report dir2023 --results r"
    assert runs[0] == "robench run dir2023-ablations --device cpu --executor local --results r"
    assert ran.index(runs[0]) > max(i for i, c in enumerate(ran) if c.startswith("robench train"))


def test_reproduce_stops_at_a_failed_training_and_says_how_to_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, ran = _reproduce(monkeypatch, {"robench train at": 2})
    assert result.exit_code == 2
    assert len(ran) == 1 and "rerun `robench reproduce dir2023` to resume" in result.output


def test_reproduce_of_an_unknown_paper_is_a_usage_error():
    result = CliRunner().invoke(main, ["reproduce", "nope2020"])
    assert result.exit_code == 2 and "no paper-scale benchmarks registered for paper 'nope2020'" in result.output
    assert "dir2023" in result.output


def test_the_mini_scale_runs_the_mini_benchmarks_only_and_trains_their_target_first():
    from robench.reproduce import plan_steps

    names, steps = plan_steps("dir2023", ["--device", "cpu"], ["--results", "r"], "mini")
    assert names and all(name.endswith("-mini") for name in names)
    commands = [step.command for step in steps]
    target = next(i for i, c in enumerate(commands) if "--output checkpoints/mini/resnet20-at.pt" in c)
    denoisers = [i for i, c in enumerate(commands) if "--target resnet20:weights=checkpoints/mini/resnet20-at.pt" in c]
    assert denoisers and target < min(denoisers)
    assert commands[-1].startswith("robench report dir2023 --benchmark dir2023-table1-mini")
    paper_names, _ = plan_steps("dir2023", [], [], "paper")
    assert not set(paper_names) & set(names)
