"""robench.evaluate: registered names and in-memory objects through the command line's runner, store and cache."""

from __future__ import annotations

import csv
import inspect

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robench
from robench.cli import main
from robench.defenses.gaussian_noise import GaussianNoise
from robench.errors import ConfigError
from robench.grid import DEFAULTS
from robench.models import resnet18_standard, tiny
from robench.objects import ModuleDefense, object_name
from robench.spec import SpecError
from robench.store import Store
from tests.conftest import needs_cifar

SMALL = dict(dataset="synthetic", eps=6 / 255, n=32, batch_size=32, device="cpu")


class Noise(nn.Module):
    """A user's purifier: Gaussian noise of scale ``sigma`` (a plain attribute), clipped to [0, 1]."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return (x + self.sigma * torch.randn_like(x)).clamp(0, 1)


class Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("this model is broken")


def only_cell(frame):
    rows = frame[frame["attack"] != "worst-case"]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_a_registered_call_is_the_cli_cell_and_is_served_from_its_cache(tmp_path, monkeypatch):
    store = tmp_path / "s.sqlite"
    result = CliRunner().invoke(main, [
        "run", "--dataset", "synthetic", "--model", "tiny", "--defense", "bit-depth:bits=5", "--attack",
        "pgd:steps=3", "--eps", "6/255", "-n", "32", "--batch-size", "32", "--store", str(store), "--results",
        str(tmp_path / "r"), "--device", "cpu", "--no-progress",
    ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (csv_path,) = (tmp_path / "r").glob("*/leaderboard.csv")
    with open(csv_path) as handle:
        (cli_row,) = list(csv.DictReader(handle))

    def recompute(*args, **kwargs):
        raise AssertionError("a stored cell was recomputed")

    monkeypatch.setattr("robench.compute.evaluate_cell", recompute)
    row = only_cell(robench.evaluate("tiny", "bit-depth:bits=5", attacks="pgd:steps=3", store=store, **SMALL))
    assert row["status"] == "done", row["reason"]
    assert row["key"] == cli_row["key"]
    assert (row["clean_acc"], row["robust_acc"], row["n"]) == (
        float(cli_row["clean_acc"]), float(cli_row["robust_acc"]), int(cli_row["n"]))
    assert 0 < row["robust_acc"] < row["clean_acc"], "the cell must be able to tell numbers apart"


def test_an_object_model_scores_like_the_registered_model_under_its_own_key(tmp_path):
    store = tmp_path / "s.sqlite"
    registered = only_cell(robench.evaluate("tiny", attacks="pgd:steps=3", store=store, **SMALL))
    mine = only_cell(robench.evaluate(tiny(), attacks="pgd:steps=3", store=store, **SMALL))
    assert mine["model"].startswith("object-Classifier-") and registered["model"] == "tiny"
    assert mine["key"] != registered["key"]
    assert (mine["clean_acc"], mine["robust_acc"]) == (registered["clean_acc"], registered["robust_acc"])


def test_source_objects_serve_the_transfer_setting(tmp_path):
    source = tiny()
    row = only_cell(robench.evaluate("tiny", attacks="fgsm", setting="transfer", sources=[source],
                                     store=tmp_path / "s.sqlite", **SMALL))
    assert row["status"] == "done" and row["setting"] == "transfer"
    with Store(tmp_path / "s.sqlite") as store:
        assert store.find_cells(row["key"])[0].spec["sources"] == [object_name(source)]
    assert row["robust_acc"] < row["clean_acc"], "the same weights as the victim: the transfer attack bites"


def test_a_changed_state_dict_gets_a_new_key_and_is_computed_afresh(tmp_path):
    store, model = tmp_path / "s.sqlite", tiny()
    first = only_cell(robench.evaluate(model, attacks="fgsm", store=store, **SMALL))
    same = only_cell(robench.evaluate(tiny(), attacks="fgsm", store=store, **SMALL))
    with torch.no_grad():
        model.net.linear.bias[0] += 100.0  # class 0 wins everywhere: accuracy becomes class 0's share
    changed = only_cell(robench.evaluate(model, attacks="fgsm", store=store, **SMALL))
    assert same["key"] == first["key"], "equal weights, equal key"
    assert changed["key"] != first["key"] and changed["model"] != first["model"]
    assert changed["clean_acc"] < first["clean_acc"] - 0.5, "the changed model was evaluated, not served stale"


def test_object_names_fingerprint_attributes_weights_and_declarations():
    assert object_name(Noise(0.1)) == object_name(Noise(0.1))
    assert object_name(Noise(0.1)) != object_name(Noise(0.2))
    assert object_name(tiny()) != object_name(tiny(num_classes=5))
    declared = [object_name(Noise(0.1), ModuleDefense(Noise(0.1), stochastic=s)) for s in (False, True)]
    assert declared[0] != declared[1] and declared[0].startswith("object-Noise-")


def test_a_stochastic_purifier_object_is_scored_with_draws(tmp_path):
    store = tmp_path / "s.sqlite"
    undeclared = only_cell(robench.evaluate("tiny", Noise(0.3), attacks="fgsm", draws=3, store=store, **SMALL))
    declared = only_cell(robench.evaluate("tiny", Noise(0.3), stochastic=True, attacks="fgsm", draws=3, eot=2,
                                          store=store, **SMALL))
    assert undeclared["draws"] == 1 and "undeclared-randomness" in undeclared["flags"]
    assert declared["draws"] == 3 and "undeclared-randomness" not in declared["flags"]
    assert declared["robust_acc"] <= declared["robust_draw_acc"], "robust means surviving every draw"


def test_a_defense_object_scores_like_the_registered_defense(tmp_path):
    store = tmp_path / "s.sqlite"
    common = dict(attacks="pgd:steps=3", draws=2, eot=2, store=store, **SMALL)
    registered = only_cell(robench.evaluate("tiny", "gaussian-noise:sigma=0.2", **common))
    mine = only_cell(robench.evaluate("tiny", GaussianNoise(sigma=0.2), **common))
    assert mine["defense"].startswith("object-GaussianNoise-") and mine["draws"] == registered["draws"] == 2
    assert (mine["robust_acc"], mine["robust_draw_acc"]) == (registered["robust_acc"], registered["robust_draw_acc"])


@needs_cifar
def test_a_real_model_object_with_a_user_purifier_matches_its_registered_name(shared_data, tmp_path):
    blur = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    common = dict(attacks="fgsm", dataset="cifar10", eps=8 / 255, n=8, device="cpu", store=tmp_path / "s.sqlite")
    registered = only_cell(robench.evaluate("resnet18-standard", blur, **common))
    mine = only_cell(robench.evaluate(resnet18_standard(), blur, **common))
    assert registered["defense"] == mine["defense"] and registered["defense"].startswith("object-AvgPool2d-")
    assert mine["key"] != registered["key"]
    assert (mine["clean_acc"], mine["robust_acc"]) == (registered["clean_acc"], registered["robust_acc"])


@pytest.mark.parametrize(
    "changes, error, message",
    [
        (dict(attacks="pgd:steps"), SpecError, "is not key=value"),
        (dict(attacks=[]), SpecError, "missing attacks"),
        (dict(setting="sideways"), SpecError, "unknown setting"),
        (dict(eps=2.0), SpecError, "exceeds 1"),
        (dict(n=0), SpecError, "n must be a positive integer"),
        (dict(model=42), SpecError, "model must be a classifier nn.Module or a model spec"),
        (dict(defense=3.0), SpecError, "defense must be a robench.Defense, an nn.Module purifier"),
        (dict(defense="jpge"), ConfigError, "did you mean 'jpeg'"),
        (dict(defense="jpeg", stochastic=True), ConfigError, "no defense given is one"),
    ],
)
def test_bad_arguments_raise_the_cli_errors_before_anything_runs(tmp_path, changes, error, message):
    arguments = dict(model="tiny", defense="none", attacks="fgsm", store=tmp_path / "s.sqlite", **SMALL)
    with pytest.raises(error, match=message):
        robench.evaluate(**{**arguments, **changes})
    if (tmp_path / "s.sqlite").exists():
        with Store(tmp_path / "s.sqlite") as store:
            assert store._db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0


def test_a_failing_cell_is_an_error_row_and_a_warning(tmp_path):
    with pytest.warns(RuntimeWarning, match="1 of 1 cells failed: .*this model is broken"):
        frame = robench.evaluate(Broken(), attacks="fgsm", store=tmp_path / "s.sqlite", **SMALL)
    row = only_cell(frame)
    assert row["status"] == "error" and "this model is broken" in row["reason"]


def test_results_go_to_the_default_store_under_the_given_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame = robench.evaluate("tiny", attacks="fgsm", name="mine", **SMALL)
    with Store(tmp_path / "robench-results" / "robench.sqlite") as store:
        assert store.benchmarks() == ["mine"]
        assert [r.key[:12] for r in store.benchmark_cells("mine")] == list(frame["key"])


def test_defaults_are_the_command_lines():
    parameters = inspect.signature(robench.evaluate).parameters
    for name in ("n", "sample_seed", "seed", "draws", "eot", "batch_size", "norm"):
        assert parameters[name].default == DEFAULTS[name], name
    assert [parameters["setting"].default] == DEFAULTS["settings"]


def test_run_grid_takes_objects_by_name_and_refuses_a_plain_module_as_defense(tmp_path):
    from robench.cell import Cell
    from robench.runner import run_grid
    from robench.threat import ThreatModel

    cell = Cell(dataset="synthetic", model="my-model", defense="my-purifier", attack="fgsm",
                threat=ThreatModel("Linf", 6 / 255), n=8)
    with Store(tmp_path / "s.sqlite") as store:
        done = run_grid([cell], store, benchmark="t", device=torch.device("cpu"), progress=False,
                        objects={"my-model": tiny(), "my-purifier": ModuleDefense(nn.Identity())})
        assert len(done.computed) == 1
        with pytest.raises(ConfigError, match="defense my-purifier is of type Identity, not a robench.Defense; wrap"):
            run_grid([cell], store, benchmark="t", device=torch.device("cpu"), progress=False,
                     objects={"my-model": tiny(), "my-purifier": nn.Identity()})
