"""The figures written next to a leaderboard: eps and steps sweeps (RDP Fig. 4's layout), worst case per defense."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

pytest.importorskip("matplotlib", reason="plots need the plots extra: pip install 'robench[plots]'")

from robench.grid import Benchmark, expand
from robench.plots import (PLOTS_NOTE, STEPS_FILE, SWEEP_FILE, WORST_FILE, steps_rows, sweep_rows, write_eps_sweep,
                           write_plots)
from robench.report import write_leaderboard
from robench.runner import run_grid
from robench.store import Store


def rows(thr, defense="none", attack="fgsm", status="done"):
    return [{"model": "m", "setting": "transfer", "defense": defense, "attack": attack, "threat": t, "status": status,
             "robust_acc": 0.5, "robust_ci_low": 0.4, "robust_ci_high": 0.6} for t in thr]


def test_a_sweep_is_a_curve_measured_at_two_budgets_or_more():
    frame = pd.DataFrame(rows(["Linf 2/255", "Linf 8/255"]) + rows(["Linf 8/255"], defense="jpeg")
                         + rows(["Linf 4/255"], status="missing"))
    found = sweep_rows(frame)
    assert list(found["defense"]) == ["none", "none"]
    assert list(found["eps"] * 255) == pytest.approx([2, 8])
    assert sweep_rows(pd.DataFrame(rows(["Linf 8/255"]))).empty


def test_the_figure_is_a_png_and_no_sweep_writes_nothing(tmp_path):
    frame = pd.DataFrame(rows(["Linf 2/255", "Linf 8/255"]) + rows(["Linf 2/255", "Linf 8/255"], attack="dim"))
    path = write_eps_sweep(frame, tmp_path / "sweep.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert write_eps_sweep(pd.DataFrame(rows(["Linf 8/255"])), tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_write_leaderboard_draws_the_sweep_of_a_run_grid(tmp_path):
    cells = expand({"models": ["tiny"], "defenses": ["none"], "attacks": ["fgsm"], "eps": ["2/255", "8/255"]},
                   {"dataset": "synthetic", "n": 8}, where="test")
    with Store(tmp_path / "s.sqlite") as store:
        run_grid(list(cells), store, benchmark="sweep", device=torch.device("cpu"), progress=False)
        write_leaderboard(store, Benchmark("sweep", "", cells).name, tmp_path)
    assert (tmp_path / "sweep" / SWEEP_FILE).stat().st_size > 5000


def test_a_steps_sweep_is_the_same_attack_at_two_step_counts_or_more():
    frame = pd.DataFrame(rows(["Linf 8/255"], attack="pgd:steps=5") + rows(["Linf 8/255"], attack="pgd:steps=20")
                         + rows(["Linf 8/255"], attack="pgd:step_size=0.01,steps=20") + rows(["Linf 8/255"]))
    found = steps_rows(frame)
    assert list(found["steps"]) == [5, 20] and set(found["family"]) == {"pgd"}


def test_every_figure_is_written_as_png_and_svg(tmp_path):
    frame = pd.DataFrame(rows(["Linf 2/255", "Linf 8/255"], attack="pgd:steps=5")
                         + rows(["Linf 2/255", "Linf 8/255"], attack="pgd:steps=20"))
    frame["dataset"], frame["n"] = "synthetic", 64
    written, note = write_plots(frame, tmp_path)
    assert note is None and {p.name for p in written} == {SWEEP_FILE, STEPS_FILE, WORST_FILE}
    for path in written:
        assert path.read_bytes()[:4] == b"\x89PNG" and "<svg" in path.with_suffix(".svg").read_text()


def test_without_matplotlib_no_figure_is_written_and_a_note_says_how_to_get_them(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    frame = pd.DataFrame(rows(["Linf 2/255", "Linf 8/255"]))
    assert write_plots(frame, tmp_path) == ([], PLOTS_NOTE)
    assert "pip install 'robench[plots]'" in PLOTS_NOTE and not list(tmp_path.iterdir())
