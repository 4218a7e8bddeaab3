"""A static, self-contained results site: index, one page per benchmark, per paper table and per cell.

Every page is a :class:`robench.document.Document` rendered by :mod:`robench.render.html` (CSS and
script inline, no external request), written from the store alone, so it always agrees with the
leaderboard CSVs. Layout under the output folder::

    index.html                     every benchmark and paper table
    <benchmark>/index.html         pivot, every cell, flags, missing cells, provenance, figures, CSV
    papers/<paper>/<table>.html    a paper's table, robench's number beside the paper's
    cells/<key>.html               one cell (``robench show`` as a page)
"""

from __future__ import annotations

import math
from dataclasses import replace
from collections import Counter
from pathlib import Path

from robench.document import REPRODUCIBILITY, Document, Item, Table, flag_notes, joined
from robench.paper import paper_documents, paper_entries, shipped_papers
from robench.plots import write_plots
from robench.render.csv import render_csv
from robench.render.html import render_html
from robench.report import leaderboard, leaderboard_document, wilson_interval
from robench.show import provenance_fields, spec_fields
from robench.store import CellRecord, Store

SITE = "site"  # the site's folder inside the results folder
CELLS, PAPERS = "cells", "papers"


def write_site(store: Store, out_dir: "str | Path", benchmarks: list[str] | None = None,
               papers: "dict[str, Path] | None" = None) -> Path:
    """Write the site for the given benchmarks (default: every stored one) into ``out_dir``; returns its index page.

    ``papers`` maps a paper name to the folder of its table CSVs (default: those robench ships).
    """
    out = Path(out_dir)
    names = list(benchmarks or store.benchmarks())
    records = {r.key: r for name in names for r in store.benchmark_cells(name)}
    pages = {key[:12] for key in records}

    def href(depth: int):
        return lambda key: f"{'../' * depth}{CELLS}/{key[:12]}.html" if key and key[:12] in pages else ""

    rows = []
    for name in names:
        rows.append(_benchmark_page(store, name, out, href(1)))
    for record in records.values():
        _write(out / CELLS / f"{record.key[:12]}.html", render_html(cell_document(record, store.examples(record.key)),
                                                                   nav=(("../index.html", "all results"),)))
    paper_rows = []
    for paper, folder in (shipped_papers() if papers is None else papers).items():
        if not paper_entries(store, {p.stem for p in folder.glob("*.csv")}, names):
            continue
        for table, (document, entries) in paper_documents(store, folder, names, href(2)).items():
            if not entries:
                continue
            path = f"{PAPERS}/{paper}/{table}.html"
            _write(out / path, render_html(document, nav=(("../../index.html", "all results"),)))
            filled = sum(r["robench_status"] == "done" for r in document.data.to_dict("records"))
            paper_rows.append((Item(f"{paper} {table}", href=path), Item(document.title),
                               Item(f"{filled} of {len(document.data)}", sort=filled)))
    index = Document(
        "robench results",
        notes=("Every page is generated from the result store alone (robench site), so it agrees with the "
               "leaderboard CSVs. Click a column header to sort; type in the box above a table to filter it.",
               REPRODUCIBILITY),
        tables=(Table("benchmarks", "Benchmarks", ("benchmark", "cells", "defenses", "most robust (worst case %)",
                                                   "flags"), tuple(rows), numeric=frozenset({"cells"})),
                *((Table("papers", "Paper tables (robench's numbers beside the paper's)",
                         ("table", "source", "numbers filled"), tuple(paper_rows)),) if paper_rows else ())),
    )
    _write(out / "index.html", render_html(index))
    return out / "index.html"


def _benchmark_page(store: Store, name: str, out: Path, cell_href) -> tuple[Item, ...]:
    """Write one benchmark's page, its CSV and figures; return its row of the index."""
    from robench.pivot import worst_cases

    frame = leaderboard(store, name)
    folder = out / name
    figures, note = write_plots(frame, folder)
    captions = {"eps-sweep": "robust accuracy against eps, 95% band", "steps-sweep": "robust accuracy against "
                "attack steps, 95% band", "worst-case": "worst-case robust accuracy per defense, 95% interval"}
    document = leaderboard_document(frame, title=f"robench leaderboard: {name}", commands=store.commands(name),
                                    figures=tuple((p.name, captions.get(p.stem, p.stem)) for p in figures),
                                    cell_href=cell_href)
    _write(folder / "leaderboard.csv", render_csv(document))
    notes = (f"Regenerate this page: robench site {name} (or robench leaderboard {name} --format html). "
             "The numbers as CSV: leaderboard.csv.", *((note,) if note else ()))
    document = replace(document, notes=(*notes, *document.notes))
    _write(folder / "index.html", render_html(document, nav=(("../index.html", "all results"),
                                                             ("leaderboard.csv", "CSV"))))
    worst = worst_cases(frame).sort_values("robust_acc", ascending=False)
    best = "" if worst.empty else f"{worst.iloc[0]['defense']} ({100 * worst.iloc[0]['robust_acc']:.1f})"
    cells = frame[frame["attack"] != "worst-case"]
    marks = ", ".join(flag for _, flag, _ in flag_notes(frame["flags"]))
    return (Item(name, href=f"{name}/index.html"), Item(str(len(cells)), sort=len(cells)),
            Item(joined(cells["defense"])), Item(best), Item(marks))


def cell_document(record: CellRecord, examples: list[dict]) -> Document:
    """One cell as a :class:`Document`: spec, accuracies with intervals, per-example summary, timing, provenance."""
    header = (*spec_fields(record.spec), ("status", record.status), ("wall time", f"{record.wall_s:.1f} s"),
              *provenance_fields(record.provenance, record.spec["attack"]))
    tables = []
    summary = record.summary or {}
    if summary:
        rows = []
        for metric in ("clean", "robust"):
            correct, n = summary[f"{metric}_correct"], summary["n"]
            low, high = wilson_interval(correct, n)
            rows.append((Item(metric), Item(_pct(correct / n)), Item(f"{correct}/{n}"),
                         Item(f"[{_pct(low)}, {_pct(high)}]"), Item(_pct(summary.get(f"{metric}_draw_acc", math.nan)))))
        tables.append(Table("accuracy", "Accuracy", ("accuracy", "%", "correct", "95% CI", "mean over draws %"),
                            tuple(rows), numeric=frozenset({"%", "mean over draws %"})))
    if examples:
        tables.append(_per_class(examples))
    flags = flag_notes([";".join(record.flags)])
    missing = (f"error: {record.error.strip().splitlines()[-1]}",) if record.error else ()
    notes = (f"The raw record: robench show {record.key[:12]} --json (with --examples for every example).",)
    return Document(f"cell {record.key[:12]}: {record.spec['defense']} | {record.spec['attack']}", tuple(header),
                    notes=notes, tables=tuple(tables), flags=flags, missing=missing)


def _per_class(examples: list[dict]) -> Table:
    """Per true label: examples, clean correct, attacked, robust correct and the largest perturbation."""
    by_label: dict[int, Counter] = {}
    largest: dict[int, float] = {}
    for e in examples:
        counts = by_label.setdefault(e["label"], Counter())
        counts.update(n=1, clean=int(e["clean_correct"]), attacked=int(e["attacked"]), robust=int(e["robust_correct"]))
        if e["perturbation"] is not None:
            largest[e["label"]] = max(largest.get(e["label"], 0.0), float(e["perturbation"]))
    rows = []
    for label in sorted(by_label):
        c = by_label[label]
        rows.append((Item(str(label), sort=label), Item(str(c["n"]), sort=c["n"]), Item(str(c["clean"]), sort=c["clean"]),
                     Item(str(c["attacked"]), sort=c["attacked"]), Item(str(c["robust"]), sort=c["robust"]),
                     Item(f"{largest.get(label, 0.0):.4g}")))
    columns = ("label", "examples", "clean correct", "attacked", "robust correct", "largest perturbation")
    return Table("per-class", "Per-example outcomes by true label", columns, tuple(rows), numeric=frozenset(columns))


def _pct(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
