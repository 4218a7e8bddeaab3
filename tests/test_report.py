"""Leaderboard maths: Wilson intervals, per-example worst case over attacks, regeneration from the store."""

from __future__ import annotations

import math

import pytest
import torch

from robench.cell import Cell
from robench.report import WORST_CASE, leaderboard, wilson_interval, write_leaderboard
from robench.runner import run_grid
from robench.store import Store
from robench.threat import ThreatModel


@pytest.mark.parametrize(
    "successes, n, low, high",
    [(8, 10, 0.4902, 0.9433), (0, 64, 0.0, 0.0566), (64, 64, 0.9434, 1.0), (50, 100, 0.4038, 0.5962)],
)
def test_wilson_interval_matches_reference_values(successes, n, low, high):
    got = wilson_interval(successes, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_of_nothing_is_undefined():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def _rows(outcomes: list[int]) -> list[dict]:
    return [
        {"example_id": f"test/{i}", "batch": 0, "label": 0, "clean_correct": 1, "clean_draw_acc": 1.0,
         "attacked": 1, "robust_correct": r, "robust_draw_acc": float(r), "adv_prediction": 0, "perturbation": 0.0}
        for i, r in enumerate(outcomes)
    ]


def _stored_cell(store: Store, key: str, attack: str, outcomes: list[int], sources: tuple[str, ...] = ()) -> None:
    setting = "transfer" if sources else "adaptive"
    cell = Cell(dataset="synthetic", model="tiny", defense="none", attack=attack,
                threat=ThreatModel("Linf", 8 / 255), n=len(outcomes), setting=setting, sources=sources)
    store.begin_cell(key, cell.to_json(), {"environment": {"device": "cpu"}}, store.start_run("cmd", {}), "b")
    store.add_batch(key, 0, _rows(outcomes), 0.1)
    robust = sum(outcomes)
    store.finish_cell(key, {"n": len(outcomes), "clean_acc": 1.0, "robust_acc": robust / len(outcomes),
                            "robust_correct": robust, "robust_draw_acc": robust / len(outcomes)}, [])


def test_worst_case_is_the_per_example_and_over_attacks(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        _stored_cell(store, "a", "fgsm", [1, 1, 0, 1])
        _stored_cell(store, "b", "pgd", [1, 0, 1, 1])
        frame = leaderboard(store, "b")
    worst = frame[frame["attack"] == WORST_CASE].iloc[0]
    per_attack = frame[frame["attack"] != WORST_CASE].set_index("attack")["robust_acc"]
    assert per_attack.to_dict() == {"fgsm": 0.75, "pgd": 0.75}
    assert worst["robust_acc"] == 0.5, "examples 1 and 2 each fall to one attack"
    assert worst["n"] == 4


def test_transfer_rows_name_their_source_and_sources_are_not_mixed_in_a_worst_case(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        _stored_cell(store, "a", "fgsm", [1, 1, 0, 1], sources=("resnet20",))
        _stored_cell(store, "b", "mifgsm", [1, 0, 1, 1], sources=("resnet20",))
        _stored_cell(store, "c", "fgsm", [0, 1, 1, 1], sources=("vgg16",))
        frame = leaderboard(store, "b")
    worst = frame[frame["attack"] == WORST_CASE].set_index("sources")
    assert sorted(frame["sources"].unique()) == ["resnet20", "vgg16"]
    assert list(worst.index) == ["resnet20"], "a single cell from vgg16 has no worst case of its own"
    assert worst.loc["resnet20", "robust_acc"] == 0.5


def test_leaderboard_is_regenerated_identically_from_the_store_alone(tmp_path):
    cells = [Cell(dataset="synthetic", model="tiny", defense=d, attack="fgsm", threat=ThreatModel("Linf", 6 / 255),
                  n=64) for d in ("none", "bit-depth")]
    store_path = tmp_path / "s.sqlite"
    with Store(store_path) as store:
        run_grid(cells, store, benchmark="b", device=torch.device("cpu"), command="robench run x", progress=False)
        first = [p.read_text() for p in write_leaderboard(store, "b", tmp_path / "one")]
    with Store(store_path) as store:
        second = [p.read_text() for p in write_leaderboard(store, "b", tmp_path / "two")]
    assert first == second
    csv_text, md_text = first
    assert csv_text.splitlines()[0].startswith("defense,model,dataset,threat,setting,sources,attack,clean_acc,robust_acc,n")
    assert "robench run x" in md_text and "| bit-depth" in md_text
    assert "sources" not in md_text, "no transfer cell: the empty sources column is left out of the markdown"


def test_error_cells_appear_with_an_error_flag(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        cell = Cell(dataset="synthetic", model="tiny", defense="none", attack="fgsm",
                    threat=ThreatModel("Linf", 8 / 255))
        store.fail_cell("k", cell.to_json(), {}, store.start_run("", {}), "b", "boom")
        frame = leaderboard(store, "b")
    assert frame.iloc[0]["status"] == "error" and "error" in frame.iloc[0]["flags"]
    assert math.isnan(frame.iloc[0]["robust_acc"])
