"""Committed leaderboards are what the current code writes: a stale file (old columns, old header) fails here."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robench.report import COLUMNS, render_markdown

RESULTS = Path(__file__).resolve().parents[1] / "results"
LEADERBOARDS = sorted(RESULTS.glob("*/leaderboard.csv"))
NUMERIC = ["clean_acc", "robust_acc", "robust_ci_low", "robust_ci_high", "robust_draw_acc"]


def _read(csv_path: Path) -> pd.DataFrame:
    frame = pd.read_csv(csv_path, keep_default_na=False)
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _commands(markdown: str) -> list[str]:
    lines = markdown.splitlines()
    if "Produced by:" not in lines:
        return []
    block = lines[lines.index("Produced by:") + 2:]
    return [line[4:] for line in block[: block.index("")]]


def test_there_are_committed_leaderboards():
    assert {p.parent.name for p in LEADERBOARDS} >= {"smoke", "preprocessing-cifar10", "attacks-cifar10"}


@pytest.mark.parametrize("csv_path", LEADERBOARDS, ids=lambda p: p.parent.name)
def test_committed_csv_has_the_current_columns(csv_path):
    assert list(pd.read_csv(csv_path, nrows=0).columns) == COLUMNS


@pytest.mark.parametrize("csv_path", LEADERBOARDS, ids=lambda p: p.parent.name)
def test_committed_markdown_is_the_current_rendering_of_its_csv(csv_path):
    markdown = csv_path.with_suffix(".md").read_text()
    frame = _read(csv_path)
    title = f"robench leaderboard: {csv_path.parent.name}"
    assert markdown == render_markdown(frame, title=title, commands=_commands(markdown))


@pytest.mark.parametrize("csv_path", LEADERBOARDS, ids=lambda p: p.parent.name)
def test_committed_cells_record_the_machine(csv_path):
    devices = set(_read(csv_path).query("status == 'done'")["device"])
    assert devices and all(":" in d or "CUDA" in d for d in devices), f"no CPU model / GPU in {devices}"
