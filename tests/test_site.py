"""The static results site: its pages and links from the store alone, then checked in headless Chromium.

The browser tests drive Debian's ``chromium`` through Playwright (``executable_path``, never a
downloaded browser build) and skip, saying why, when either is absent.
"""

from __future__ import annotations

import io
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from robench.grid import expand, load_benchmark
from robench.plots import plots_note
from robench.report import write_leaderboard
from robench.runner import run_grid
from robench.site import write_site
from robench.spec import parse_spec
from robench.store import Store
from tests.test_paper_tables import PGD, grid_file, paper_dir

SWEEP_DEFENSES = ["none", "bit-depth:bits=3"]
SWEEP_ATTACKS = ["fgsm", PGD]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store with a paper-labelled benchmark (one missing defense) and an eps sweep, and the site written from it."""
    tmp = tmp_path_factory.mktemp("site")
    grid = load_benchmark(grid_file(tmp))
    sweep = expand({"models": ["tiny"], "defenses": SWEEP_DEFENSES, "attacks": SWEEP_ATTACKS,
                    "eps": ["2/255", "6/255"], "settings": ["adaptive", "oblivious"]},
                   {"dataset": "synthetic", "n": 24, "batch_size": 24}, where="test")
    with Store(tmp / "s.sqlite") as store:
        run_grid(list(grid.cells), store, benchmark=grid.name, device=torch.device("cpu"), progress=False,
                 labels=grid.labels, expected=grid.expected, command="robench run fake.yaml")
        run_grid(list(sweep), store, benchmark="sweep", device=torch.device("cpu"), progress=False,
                 command="robench run sweep.yaml")
        index = write_site(store, tmp / "site", papers={"fake": paper_dir(tmp)})
        write_leaderboard(store, "sweep", tmp / "results")
        keys = [r.key[:12] for name in store.benchmarks() for r in store.benchmark_cells(name)]
    return index.parent, keys, tmp


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def _pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_the_site_has_an_index_a_page_per_benchmark_paper_table_and_cell(built):
    site, keys, _ = built
    assert (site / "index.html").is_file()
    assert (site / "fake-paper" / "index.html").is_file() and (site / "sweep" / "index.html").is_file()
    assert (site / "papers" / "fake" / "fake_table.html").is_file()
    assert {p.stem for p in (site / "cells").glob("*.html")} == set(keys)
    paper = (site / "papers" / "fake" / "fake_table.html").read_text()
    assert "PGD (paper)" in paper and "32.00" in paper, "the paper's number beside robench's"


def test_every_link_resolves_and_nothing_is_fetched_from_elsewhere(built):
    site, _, _ = built
    for page in _pages(site):
        parser = _Links()
        parser.feed(page.read_text())
        for link in parser.links:
            assert not re.match(r"^([a-z]+:)?//", link), f"{page}: external reference {link}"
            assert (page.parent / link.split("#")[0]).resolve().is_file(), f"{page}: broken link {link}"
    index = (site / "index.html").read_text()
    assert 'href="sweep/index.html"' in index and 'href="papers/fake/fake_table.html"' in index


def test_the_benchmark_page_holds_the_same_numbers_as_the_leaderboard_csv(built):
    site, _, tmp = built
    assert (site / "sweep" / "leaderboard.csv").read_text() == (tmp / "results" / "sweep" / "leaderboard.csv").read_text()


@pytest.mark.skipif(plots_note() is not None, reason="plots need matplotlib (pip install 'robench[plots]')")
def test_the_sweep_page_embeds_its_figures_as_png_with_svg_beside(built):
    site, _, _ = built
    page = (site / "sweep" / "index.html").read_text()
    for name in ("eps-sweep", "worst-case"):
        assert f'src="{name}.png"' in page
        assert (site / "sweep" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert (site / "sweep" / f"{name}.svg").read_text().lstrip().startswith("<?xml")


# --- in a real browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium); .ci/run installs it")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser: pip install playwright")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _open(browser, path: Path, page=None, problems=None):
    """Open a page (in a new tab, or in ``page``); return it with the console errors, page errors and failed
    requests seen while loading."""
    if page is None:
        page, problems = browser.new_page(viewport={"width": 1280, "height": 900}), []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"failed request: {r.url}"))
    page.goto(path.as_uri(), wait_until="load")
    return page, problems


def test_every_page_loads_without_errors_and_its_images_load(built, browser):
    site, _, _ = built
    page = problems = None
    for path in _pages(site):
        page, problems = _open(browser, path, page, problems)
        broken = page.eval_on_selector_all("img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0))"
                                                  ".map(i => i.src)")
        assert problems == [] and broken == [], f"{path}: {problems} {broken}"
    page.close()


def test_the_pivot_has_a_row_per_defense_and_a_column_per_attack_and_setting(built, browser):
    site, _, _ = built
    page, _ = _open(browser, site / "sweep" / "index.html")
    pivot = page.locator("#table-pivot-1")
    heads = pivot.locator("thead tr").last.locator("th").all_inner_texts()
    groups = pivot.locator("thead tr").first.locator("th").all_inner_texts()
    defenses = pivot.locator("tbody tr td:first-child").all_inner_texts()
    page.close()
    pgd = str(parse_spec(PGD))
    assert [h.strip() for h in heads] == ["defense", "clean %", "fgsm", pgd, "fgsm", pgd, "worst case"]
    assert [g.strip() for g in groups] == ["", "adaptive", "oblivious", ""]
    assert sorted(defenses) == sorted(SWEEP_DEFENSES)


def test_clicking_a_column_header_sorts_the_rows_by_it(built, browser):
    site, _, _ = built
    page, _ = _open(browser, site / "fake-paper" / "index.html")
    table = page.locator("#table-cells")
    column = table.locator("thead th").all_inner_texts().index("robust %")
    values = f"rows => rows.map(r => parseFloat(r.cells[{column}].getAttribute('data-sort')))"
    before = table.locator("tbody tr").evaluate_all(values)
    table.locator("thead th").nth(column).click()
    ascending = table.locator("tbody tr").evaluate_all(values)
    table.locator("thead th").nth(column).click()
    descending = table.locator("tbody tr").evaluate_all(values)
    page.close()
    assert sorted(before) == ascending and ascending == sorted(ascending) and descending == ascending[::-1]
    assert ascending != before or before == sorted(before), "the order changed unless it was sorted already"


def test_the_index_and_a_benchmark_page_are_not_blank(built, browser):
    from PIL import Image

    site, _, _ = built
    for path in (site / "index.html", site / "sweep" / "index.html"):
        page, _ = _open(browser, path)
        shot = Image.open(io.BytesIO(page.screenshot(full_page=False))).convert("L")
        page.close()
        histogram = shot.histogram()
        background = max(histogram) / sum(histogram)
        assert background < 0.97, f"{path}: {background:.1%} of the screenshot is one shade"
        assert len([h for h in histogram if h]) > 20, f"{path}: too few shades for text, tables and figures"


def test_typing_in_the_filter_box_hides_the_rows_without_the_text(built, browser):
    site, _, _ = built
    page, _ = _open(browser, site / "sweep" / "index.html")
    table = page.locator("#table-cells")
    total = table.locator("tbody tr").count()
    page.locator('input[data-table="table-cells"]').fill("bit-depth")
    shown = table.locator("tbody tr:not([hidden])").all_inner_texts()
    page.locator('input[data-table="table-cells"]').fill("")
    restored = table.locator("tbody tr:not([hidden])").count()
    page.close()
    assert 0 < len(shown) < total and all("bit-depth" in row for row in shown)
    assert restored == total
