"""Paper-layout tables: every number a paper prints, with robench's number for the same cell beside it.

A paper's tables ship as CSV files (one per table, a ``source`` column naming it). Benchmark
cells carry paper labels (:mod:`robench.labels`) that the runner stores with each benchmark's
latest grid; a report is a function of the store and those CSVs (plus the model cards beside
the checkpoints the cells used, checked against the sha256 the store recorded).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd
from robench.document import REPRODUCIBILITY, Document, Item, Table, flag_notes, joined, marks_of, provenance
from robench.render.markdown import render_markdown
from robench.report import machine_label, wilson_interval
from robench.spec import brief, parse_spec
from robench.store import CellRecord, Store

TEXT_COLUMNS = ("source",)
NO_CELL = "—"
UNITS_FILE = "units.yaml"  # table stem -> unit, beside the paper CSVs; tables not listed print accuracy
# What each unit's value column holds; every unit is computed over all n images of the cell.
UNITS = {
    "accuracy": "robench's accuracy in % on the first n test images (n in brackets)",
    "success-rate": "robench's defense success rate in % (the accuracy w.r.t. the true label, as the paper "
                    "defines it) on the first n test images (n in brackets)",
    "error-rate": "robench's error rate in % (100 minus the accuracy: every image the defended model gets "
                  "wrong, clean or attacked, over all n images, as the paper counts) (n in brackets)",
}


class PaperReportError(ValueError):
    """Labels that do not fit a paper table, or two cells claiming one printed number."""


@dataclass(frozen=True)
class PaperTable:
    """One printed table: its row-label columns, value columns and rows, as strings exactly as printed."""

    name: str
    keys: tuple[str, ...]
    values: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    source: str
    unit: str = "accuracy"


@dataclass(frozen=True)
class Entry:
    """A stored cell filling one printed number: its benchmark, key, labels, record or missing reason."""

    benchmark: str
    key: str
    labels: dict
    record: CellRecord | None
    missing: str | None


def paper_folder(paper: str) -> Path:
    """The paper tables shipped with a benchmark sub-package: ``robench/benchmarks/<paper>/paper/``."""
    root = resources.files("robench.benchmarks")
    known = sorted(p.name for p in root.iterdir() if p.joinpath("paper").is_dir())
    if paper not in known:  # chosen from what exists: a name is never taken as a path
        raise PaperReportError(f"no paper tables for {brief(paper)}; robench ships them for: "
                               f"{', '.join(known) or 'none'} (or pass --paper-dir DIR)")
    return Path(str(root.joinpath(paper, "paper")))


def shipped_papers() -> dict[str, Path]:
    """Every paper whose tables robench ships, name -> folder of its CSVs."""
    root = resources.files("robench.benchmarks")
    return {p.name: Path(str(p.joinpath("paper"))) for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.joinpath("paper").is_dir()}


def read_paper_tables(folder: "str | Path", row_columns: dict[str, set[str]] | None = None) -> dict[str, PaperTable]:
    """Read every ``*.csv`` of a paper folder; numeric columns not used as row labels are value columns.

    A ``units.yaml`` beside them maps a table to the unit it prints (:data:`UNITS`; default accuracy).
    """
    units = _units(Path(folder))
    tables = {}
    for path in sorted(Path(folder).glob("*.csv")):
        with open(path, newline="") as handle:
            rows = [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(handle)]
        columns = list(rows[0]) if rows else []
        labels = (row_columns or {}).get(path.stem, set())
        values = tuple(c for c in columns if c not in TEXT_COLUMNS and c not in labels and all(_is_number(r[c]) for r in rows))
        keys = tuple(c for c in columns if c not in TEXT_COLUMNS and c not in values)
        source = "; ".join(dict.fromkeys(r.get("source", "") for r in rows if r.get("source")))
        tables[path.stem] = PaperTable(path.stem, keys, values, tuple(rows), source, units.get(path.stem, "accuracy"))
    return tables


def _units(folder: Path) -> dict[str, str]:
    path = folder / UNITS_FILE
    if not path.is_file():
        return {}
    import yaml

    units = yaml.safe_load(path.read_text()) or {}
    wrong = {table: unit for table, unit in units.items() if unit not in UNITS}
    if not isinstance(units, dict) or wrong:
        raise PaperReportError(f"{path}: units must map table names to one of {', '.join(UNITS)}; got {wrong or units}")
    return units


def paper_entries(store: Store, tables: set[str], benchmarks: list[str] | None = None) -> list[Entry]:
    """Every stored cell (of the given benchmarks, default all) whose labels name one of ``tables``."""
    entries = []
    for benchmark in benchmarks or store.benchmarks():
        missing = {m.key: m.reason for m in store.missing_cells(benchmark)}
        for key, found in store.labels(benchmark).items():
            for labels in found:
                if labels["table"] in tables:
                    entries.append(Entry(benchmark, key, labels, store.cell(key), missing.get(key)))
    return entries


def layout(table: PaperTable, entries: list[Entry]) -> pd.DataFrame:
    """One row per printed number: the paper's row labels, column, number, and robench's cell for it."""
    claims: dict[tuple[int, str], Entry] = {}
    for entry in entries:
        row = _row_index(table, entry)
        for metric in ("robust", "clean"):
            column = entry.labels.get(metric)
            if column is None:
                continue
            if column not in table.values:
                raise PaperReportError(
                    f"benchmark {entry.benchmark}: column {column!r} is not a value column of {table.name} "
                    f"({', '.join(table.values)})"
                )
            earlier = claims.get((row, column))
            if earlier is not None and (earlier.key, earlier.labels.get(metric)) != (entry.key, column):
                raise PaperReportError(
                    f"{table.name} row {row + 1}, column {column!r} is claimed by two cells: {_who(earlier)} and "
                    f"{_who(entry)}; report one benchmark with --benchmark"
                )
            claims[(row, column)] = Entry(entry.benchmark, entry.key, {**entry.labels, "metric": metric},
                                          entry.record, entry.missing)
    records = []
    for i, paper_row in enumerate(table.rows):
        for column in table.values:
            entry = claims.get((i, column))
            records.append({
                "paper_row": i + 1,
                **{k: paper_row[k] for k in table.keys},
                "paper_column": column,
                "paper": paper_row[column],
                **_robench_numbers(entry, table.unit),
            })
    return pd.DataFrame(records)


def paper_document(table: PaperTable, frame: pd.DataFrame, entries: list[Entry], commands: list[str],
                   cell_href=None) -> Document:
    """The table in the paper's layout as a :class:`Document`: each value column as robench's number beside the paper's."""
    flags = flag_notes(frame["robench_flags"])
    wide = []
    for _, group in frame.groupby("paper_row", sort=True):
        row = {k: Item(str(group.iloc[0][k])) for k in table.keys}
        for r in group.to_dict("records"):
            row[r["paper_column"]] = _cell_item(r, flags, cell_href)
            row[f"{r['paper_column']} (paper)"] = Item(r["paper"], sort=_number(r["paper"]))
        wide.append(row)
    columns = tuple(wide[0]) if wide else table.keys
    numeric = frozenset(columns[len(table.keys):])
    shown = Table(table.name, "", columns, tuple(tuple(r[c] for c in columns) for r in wide), numeric=numeric)
    done = [e.record for e in entries if e.record is not None and e.record.status == "done"]
    env = [r.provenance.get("environment", {}) for r in done]
    header = (
        ("n", joined(r.summary.get("n") for r in done)), ("seed", joined(r.spec["seed"] for r in done)),
        ("scoring draws", joined(r.spec["draws"] for r in done)), ("EOT draws", joined(r.spec["eot"] for r in done)),
        *provenance((machine_label(e) for e in env), (_versions(e) for e in env)),
        ("benchmarks", joined(e.benchmark for e in entries)),
    )
    cards = _model_cards([e.record for e in entries if e.record is not None])
    if cards:
        header += (("checkpoints and their model cards", "; ".join(cards)),)
    notes = (f"Each value column is {UNITS[table.unit]}; the column beside it, marked (paper), is the number the paper "
             "prints. For stochastic defenses an example counts as robust only if it survives every scoring draw "
             "(the per-draw mean is in the CSV).", REPRODUCIBILITY)
    gaps: dict[tuple[str, str], dict[str, list[str]]] = {}
    for r in frame[frame["robench_status"].isin(["missing", "error", "not run"])].to_dict("records"):
        row = " / ".join(str(r[k]) for k in table.keys)
        gaps.setdefault((r["robench_status"], r["robench_reason"]), {}).setdefault(row, []).append(r["paper_column"])
    missing = ()
    if gaps:
        missing = ("Cells without a number:", *(
            f"- {status}: {reason}. Rows: " + "; ".join(f"{row} ({', '.join(cols)})" for row, cols in rows.items())
            for (status, reason), rows in gaps.items()))
    return Document(table.source or table.name, header, tuple(commands), notes, (shown,), flags, missing, (), frame)


def render_paper_markdown(table: PaperTable, frame: pd.DataFrame, entries: list[Entry], commands: list[str]) -> str:
    """The table in the paper's layout as Markdown (:func:`paper_document`)."""
    return render_markdown(paper_document(table, frame, entries, commands))


def paper_documents(
    store: Store, paper_dir: "str | Path", benchmarks: list[str] | None = None, cell_href=None
) -> dict[str, tuple[Document, list[Entry]]]:
    """Every paper CSV in ``paper_dir`` as a :class:`Document` in the paper's layout, with the cells filling it."""
    names = {p.stem for p in Path(paper_dir).glob("*.csv")}
    if not names:
        raise PaperReportError(f"no paper tables (*.csv) in {paper_dir}")
    entries = paper_entries(store, names, benchmarks)
    row_columns: dict[str, set[str]] = {}
    for entry in entries:
        row_columns.setdefault(entry.labels["table"], set()).update(entry.labels.get("row", {}))
    documents = {}
    for name, table in read_paper_tables(paper_dir, row_columns).items():
        mine = [e for e in entries if e.labels["table"] == name]
        commands = list(dict.fromkeys(c for b in dict.fromkeys(e.benchmark for e in mine) for c in store.commands(b)))
        documents[name] = (paper_document(table, layout(table, mine), mine, commands, cell_href), mine)
    return documents


def write_paper_report(
    store: Store, paper_dir: "str | Path", out_dir: "str | Path", benchmarks: list[str] | None = None
) -> list[Path]:
    """Write ``<out_dir>/<table>.md`` and ``.csv`` for every paper CSV in ``paper_dir``; returns the paths."""
    from robench.render.csv import render_csv

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (document, _) in paper_documents(store, paper_dir, benchmarks).items():
        csv_path, md_path = folder / f"{name}.csv", folder / f"{name}.md"
        csv_path.write_text(render_csv(document))
        md_path.write_text(render_markdown(document))
        written += [csv_path, md_path]
    return written


def _row_index(table: PaperTable, entry: Entry) -> int:
    wanted = entry.labels.get("row", {})
    unknown = set(wanted) - set(table.keys)
    if unknown:
        raise PaperReportError(f"benchmark {entry.benchmark}: {sorted(unknown)} are not row-label columns of "
                               f"{table.name} ({', '.join(table.keys)})")
    hits = [i for i, row in enumerate(table.rows) if all(row[k] == v for k, v in wanted.items())]
    if len(hits) != 1:
        raise PaperReportError(f"benchmark {entry.benchmark}: row labels {wanted} match {len(hits)} rows of "
                               f"{table.name}, not exactly one")
    return hits[0]


def _robench_numbers(entry: Entry | None, unit: str = "accuracy") -> dict:
    numbers = {"robench": math.nan, "robench_n": None, "robench_ci_low": math.nan, "robench_ci_high": math.nan,
               "robench_draw_mean": math.nan, "robench_unit": unit, "robench_metric": "", "robench_status": "",
               "robench_reason": "", "robench_flags": "", "robench_benchmark": "", "robench_key": ""}
    if entry is None:
        return numbers
    metric = entry.labels["metric"]
    numbers.update(robench_metric=metric, robench_benchmark=entry.benchmark, robench_key=entry.key[:12])
    record = entry.record
    if entry.missing is not None:
        return {**numbers, "robench_status": "missing", "robench_reason": entry.missing}
    if record is None:
        return {**numbers, "robench_status": "not run", "robench_reason": "the benchmark's latest run stopped before it"}
    numbers.update(robench_status=record.status, robench_flags=";".join(record.flags))
    if record.status != "done":
        return {**numbers, "robench_reason": (record.error or "").splitlines()[0] if record.error else ""}
    summary = record.summary
    correct = summary[f"{metric}_correct"]
    low, high = wilson_interval(correct, summary["n"])
    accuracy, draw_mean = 100 * correct / summary["n"], 100 * summary.get(f"{metric}_draw_acc", math.nan)
    if unit == "error-rate":  # the errors' interval is the mirror image of the accuracy's
        accuracy, low, high, draw_mean = 100 - accuracy, 1 - high, 1 - low, 100 - draw_mean
    return {**numbers, "robench": accuracy, "robench_n": summary["n"], "robench_unit": unit,
            "robench_ci_low": 100 * low, "robench_ci_high": 100 * high, "robench_draw_mean": draw_mean}


def _cell_item(row: dict, flags, cell_href=None) -> Item:
    href = cell_href(row["robench_key"]) if cell_href and row["robench_key"] else ""
    if row["robench_status"] == "done":
        title = f"95% CI [{row['robench_ci_low']:.1f}, {row['robench_ci_high']:.1f}]; benchmark {row['robench_benchmark']}"
        return Item(f"{row['robench']:.1f} (n={int(row['robench_n'])})", title=title, sort=row["robench"],
                    marks=marks_of(row["robench_flags"], flags), href=href)
    return Item(row["robench_status"] or NO_CELL, title=row["robench_reason"], sort=-1.0, href=href)


def _number(text: str) -> float:
    return float(text) if _is_number(text) else -1.0


def _model_cards(records: list[CellRecord]) -> list[str]:
    """One line per checkpoint named by a ``weights`` option: its sha256 and its model card's fields."""
    lines = {}
    for record in records:
        hashes = record.provenance.get("checkpoints", {})
        for field in ("model", "defense", "attack_defense", "sources"):
            value = record.spec.get(field)
            for text in value if isinstance(value, list) else [value]:
                if not text:
                    continue
                spec = parse_spec(text)
                path = spec.options.get("weights")
                if isinstance(path, str) and path not in lines:
                    lines[path] = _card_line(path, set(_shas(hashes.get(str(spec), {}))))
    return [lines[p] for p in sorted(lines)]


def _card_line(path: str, recorded: set[str]) -> str:
    # a model card is ``<checkpoint stem>.json`` beside the checkpoint (written by ``robench train``)
    card = Path(path).with_suffix(".json")
    used = f"`{path}` (sha256 {', '.join(sorted(s[:12] for s in recorded)) or 'not recorded'})"
    if not card.is_file():
        return f"{used}: no model card at {card}"
    data = json.loads(card.read_text())
    sha = _card_sha(data)
    if sha and recorded and sha not in recorded:
        return f"{used}: the model card at {card} describes another file (sha256 {sha[:12]}); retrain or rerun"
    return f"{used}: " + ", ".join(f"{k}={v}" for k, v in _flatten(data))


def _flatten(data, prefix: str = "") -> list[tuple[str, str]]:
    """Scalar fields of a card (nested mappings dotted); data fingerprints, long lists and records left out."""
    out = []
    for key, value in (data.items() if isinstance(data, dict) else []):
        name = f"{prefix}{key}"
        if key.endswith("fingerprint"):
            continue
        if isinstance(value, dict):
            out += _flatten(value, f"{name}.")
        elif isinstance(value, (str, int, float, bool)) or value is None:
            out.append((name, value))
        elif isinstance(value, list) and len(value) <= 8 and all(isinstance(v, (str, int, float)) for v in value):
            out.append((name, value))
    return out


def _card_sha(card) -> str | None:
    """The checkpoint sha256 a card states, at its top level or under ``checkpoint``."""
    if not isinstance(card, dict):
        return None
    nested = card.get("checkpoint")
    sha = card.get("sha256") or (nested.get("sha256") if isinstance(nested, dict) else None)
    return sha if isinstance(sha, str) else None


def _shas(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _shas(v)]
    return [value] if isinstance(value, str) else []


def _versions(env: dict) -> str:
    return ", ".join(f"{k} {env[k]}" for k in ("robench", "torch", "torchattacks") if k in env)


def _who(entry: Entry) -> str:
    spec = entry.record.spec if entry.record else {}
    return f"{entry.benchmark} ({spec.get('defense', '?')} | {spec.get('attack', '?')} | key {entry.key[:12]})"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

