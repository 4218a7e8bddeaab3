"""One leaderboard document, four renderings: the pivot's rows, columns and order, constants in the header, widths."""

from __future__ import annotations

import csv
import io
import math
import re

import pytest
import torch
from click.testing import CliRunner

from robench.cell import Cell
from robench.cli import main
from robench.pivot import WORST_COLUMN, worst_cases
from robench.render import render
from robench.report import COLUMNS, leaderboard, leaderboard_document, pivot_only
from robench.runner import run_grid
from robench.store import Store
from robench.threat import ThreatModel

LONG = "rdp:blocks=2,noise=0.05,weights=checkpoints/a-rather-long-checkpoint-name-cifar10.pt,width=32"


def row(defense, setting, attack, robust, *, clean=0.9, flags="", status="done", threat="Linf 8/255"):
    values = {c: "" for c in COLUMNS}
    values.update(defense=defense, model="tiny", dataset="synthetic", threat=threat, setting=setting, attack=attack,
                  clean_acc=clean, robust_acc=robust, n=64, robust_ci_low=max(0.0, robust - 0.1),
                  robust_ci_high=min(1.0, robust + 0.1), robust_draw_acc=robust, draws=1, seed=0, flags=flags,
                  status=status, device="cpu: test", versions="robench 0", key=f"k{defense[:3]}{setting[:3]}{attack[:3]}")
    if status != "done":
        values.update(clean_acc=math.nan, robust_acc=math.nan, robust_ci_low=math.nan, robust_ci_high=math.nan,
                      reason="defense 'x' is not registered")
    return values


@pytest.fixture
def frame():
    import pandas as pd

    rows = [
        row("none", "adaptive", "fgsm", 0.20), row("none", "adaptive", "pgd", 0.05),
        row("none", "adaptive", "worst-case", 0.02), row("none", "oblivious", "pgd", 0.05),
        row("jpeg", "adaptive", "fgsm", 0.40), row("jpeg", "adaptive", "pgd", 0.30),
        row("jpeg", "adaptive", "worst-case", 0.25), row("jpeg", "oblivious", "pgd", 0.50, flags="surrogate-mismatch"),
        row(LONG, "adaptive", "fgsm", 0.60, clean=0.7), row(LONG, "adaptive", "pgd", 0.45, clean=0.7),
        row(LONG, "adaptive", "worst-case", 0.40, clean=0.7), row(LONG, "oblivious", "pgd", 0.35, clean=0.7),
        row("x", "adaptive", "pgd", math.nan, status="missing"),
    ]
    return pd.DataFrame(rows)[COLUMNS]


def test_the_worst_case_is_the_lowest_per_setting_worst_case(frame):
    worst = worst_cases(frame).set_index("defense")
    assert worst.loc["none", "robust_acc"] == 0.02 and worst.loc["none", "setting"] == "adaptive"
    assert worst.loc[LONG, "robust_acc"] == 0.35, "a setting with one attack counts with that attack"
    assert worst.loc["jpeg", "robust_acc"] == 0.25
    assert "x" not in worst.index, "a missing cell has no number"


def test_pivot_rows_are_defenses_sorted_by_worst_case_and_columns_attacks_by_setting(frame):
    document = leaderboard_document(frame, title="t", commands=[])
    pivot = document.tables[0]
    assert pivot.columns == ("defense", "clean %", "fgsm", "pgd", "pgd", WORST_COLUMN)
    assert pivot.groups == (("", 2), ("adaptive", 2), ("oblivious", 1), ("", 1))
    assert [r[0].text for r in pivot.rows] == [LONG, "jpeg", "none", "x"]
    jpeg = pivot.rows[1]
    assert [i.text for i in jpeg] == ["jpeg", "90.0", "40.0", "30.0", "50.0", "25.0"]
    assert jpeg[2].title.startswith("95% CI [30.0, 50.0], n=64")
    assert jpeg[4].marks == ("a",) and "surrogate-mismatch" in jpeg[4].title
    assert pivot.rows[3][3].text == "missing" and "not registered" in pivot.rows[3][3].title
    assert document.flags[0][:2] == ("a", "surrogate-mismatch")


def test_constant_columns_move_to_the_header(frame):
    document = leaderboard_document(frame, title="t", commands=["robench run x"])
    header = dict(document.header)
    assert header["model"] == "tiny" and header["threat"] == "Linf 8/255" and header["n"] == "64"
    assert "setting" not in header, "the setting varies"
    full = document.tables[-1]
    assert "model" not in full.columns and "threat" not in full.columns and "setting" in full.columns
    markdown = render(document, "md")
    assert "- model: tiny\n" in markdown and "| defense " in markdown and "adaptive: fgsm" in markdown


@pytest.mark.parametrize("width", [80, 100])
def test_terminal_rendering_fits_the_width_and_keeps_every_number(frame, width):
    document = leaderboard_document(frame, title="robench leaderboard: a benchmark", commands=["robench run " + LONG])
    for view in (document, pivot_only(document)):
        text = render(view, "term", width=width)
        assert max(len(line) for line in text.splitlines()) <= width
        for number in ("40.0", "30.0", "50.0", "25.0", "35.0", "2.0"):
            assert number in text
    text = render(pivot_only(document), "term", width=width)
    assert "Every cell" not in text and "surrogate-mismatch" in text


def test_html_rendering_is_self_contained_with_hover_intervals(frame):
    page = render(leaderboard_document(frame, title="t <b>", commands=[]), "html")
    assert "<title>t &lt;b&gt;</title>" in page
    assert 'title="95% CI [30.0, 50.0], n=64"' in page and '<sup class="flag">a</sup>' in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "no external request"
    assert "<script>" in page and "<style>" in page


def _store(tmp_path):
    cells = [Cell(dataset="synthetic", model="tiny", defense=d, attack="fgsm", threat=ThreatModel("Linf", 6 / 255),
                  n=16) for d in ("none", "bit-depth:bits=3")]
    store = tmp_path / "s.sqlite"
    with Store(store) as opened:
        run_grid(cells, opened, benchmark="b", device=torch.device("cpu"), command="robench run b", progress=False)
    return store


@pytest.mark.parametrize("fmt", ["term", "md", "csv", "html"])
def test_leaderboard_command_prints_each_format(tmp_path, fmt):
    store, results = _store(tmp_path), tmp_path / "r"
    result = CliRunner().invoke(main, ["leaderboard", "--store", str(store), "--results", str(results), "--format", fmt],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Store(store) as opened:
        expected = leaderboard(opened, "b")
    if fmt == "csv":
        assert result.stdout == (results / "b" / "leaderboard.csv").read_text()
        assert len(list(csv.DictReader(io.StringIO(result.stdout)))) == len(expected)
    elif fmt == "md":
        assert result.stdout == (results / "b" / "leaderboard.md").read_text()
    elif fmt == "term":
        assert max(len(line) for line in result.stdout.splitlines()) <= 100
        assert "bit-depth:bits=3" in result.stdout and "worst case" in result.stdout
    else:
        assert result.stdout.strip() == str(results / "site" / "index.html")
        assert (results / "site" / "b" / "index.html").is_file()
