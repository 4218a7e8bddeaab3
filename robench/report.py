"""Leaderboards: pure functions of the store, as a document rendered to CSV, Markdown, HTML or the terminal.

Rows are cells; a ``worst-case`` row per (defense, model, setting, threat) takes, per example,
the AND of robust outcomes over every attack (an example is robust only if it survives all).
Numbers stay numbers until rendered; the interval is Wilson's 95% score interval. Missing cells
(a declared plugin or checkpoint is absent) are rows with status ``missing`` and their reason.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pandas as pd

from robench.destinations import leaderboard_folder
from robench.document import REPRODUCIBILITY, Document, Item, Table, flag_notes, marks_of, provenance
from robench.flags import derived_flags
from robench.pivot import WORST_CASE, pivot_tables
from robench.spec import Spec, format_fraction, parse_spec
from robench.store import CellRecord, MissingRecord, Store

CONSTANT = ["model", "dataset", "threat", "setting", "sources", "n", "draws", "seed"]  # moved to the header when constant
SHOWN = ["defense", "model", "dataset", "threat", "setting", "sources", "attack", "n", "draws", "seed"]
GROUP = ["dataset", "split", "n", "sample_seed", "model", "defense", "setting", "sources", "threat", "seed", "draws"]
COLUMNS = [
    "defense", "model", "dataset", "threat", "setting", "sources", "attack", "clean_acc", "robust_acc", "n",
    "robust_ci_low", "robust_ci_high", "robust_draw_acc", "draws", "seed", "flags", "status", "device", "versions", "key", "reason",
]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))  # contains p despite rounding


def leaderboard(store: Store, benchmark: str) -> pd.DataFrame:
    """One row per cell of a benchmark plus worst-case rows, sorted by defense and setting."""
    records = store.benchmark_cells(benchmark)
    cells = pd.DataFrame([_cell_row(r) for r in records])
    if not cells.empty:
        done = cells[cells["status"] == "done"]
        for index, extra in derived_flags(done).items():
            cells.at[index, "flags"] = ";".join(filter(None, [cells.at[index, "flags"], *extra]))
    rows = cells.to_dict("records") + _worst_case_rows(store, [r for r in records if r.status == "done"])
    rows += [_missing_row(m) for m in store.missing_cells(benchmark)]
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame(rows)
    frame["_worst"] = frame["attack"] == WORST_CASE
    frame = frame.sort_values(["dataset", "model", "threat", "setting", "sources", "defense", "_worst", "attack"])
    return frame[COLUMNS].reset_index(drop=True)


def _cell_row(record: CellRecord) -> dict:
    spec, summary = record.spec, record.summary or {}
    n = summary.get("n", spec["n"])
    robust = summary.get("robust_correct")
    low, high = wilson_interval(robust, n) if robust is not None else (math.nan, math.nan)
    env = record.provenance.get("environment", {})
    flags = list(record.flags) + (["error"] if record.status == "error" else [])
    attack = parse_spec(spec["attack"])
    family = Spec(attack.name, tuple((k, v) for k, v in attack.kwargs if k != "steps"))
    return {
        "norm": spec["threat"]["norm"],
        "eps": spec["threat"]["eps"],
        "steps": attack.options.get("steps"),
        "attack_family": str(family),
        "robust_correct": robust,
        **{k: _group_value(spec, k) for k in GROUP},
        "attack": spec["attack"],
        "clean_acc": summary.get("clean_acc", math.nan),
        "robust_acc": summary.get("robust_acc", math.nan),
        "robust_ci_low": low,
        "robust_ci_high": high,
        "robust_draw_acc": summary.get("robust_draw_acc", math.nan),
        "flags": ";".join(flags),
        "status": record.status,
        "device": machine_label(env),
        "versions": f"robench {env.get('robench', '?')}, torch {env.get('torch', '?')}",
        "key": record.key[:12],
        "reason": (record.error or "").splitlines()[0] if record.status == "error" and record.error else "",
    }


def machine_label(env: dict) -> str:
    """The device with the arithmetic behind it: GPU name, or CPU model with SIMD level, BLAS and threads."""
    device = env.get("device", "")
    if "cuda" in env:
        return f"{device} (CUDA {env['cuda']})"
    if "cpu" not in env:  # stored before robench recorded the machine
        return device
    return f"{device}: {env['cpu']}, {env['cpu_capability']}, {env['blas']}, {env['threads']} threads"


def _missing_row(record: MissingRecord) -> dict:
    """A missing cell: its spec and reason, no numbers."""
    spec = record.spec
    return {
        **{k: _group_value(spec, k) for k in GROUP},
        "attack": spec["attack"],
        **dict.fromkeys(["clean_acc", "robust_acc", "robust_ci_low", "robust_ci_high", "robust_draw_acc"], math.nan),
        "flags": "missing",
        "status": "missing",
        "device": "",
        "versions": "",
        "key": record.key[:12],
        "reason": record.reason,
    }


def _group_value(spec: dict, key: str):
    if key == "threat":
        return f"{spec['threat']['norm']} {format_fraction(spec['threat']['eps'])}"
    if key == "sources":
        return "+".join(spec["sources"])
    return spec[key]


def _worst_case_rows(store: Store, records: list[CellRecord]) -> list[dict]:
    groups: dict[tuple, list[CellRecord]] = {}
    for record in records:
        groups.setdefault(tuple(str(_group_value(record.spec, k)) for k in GROUP), []).append(record)
    rows = []
    for members in groups.values():
        if len(members) < 2:
            continue
        outcomes = [{e["example_id"]: e for e in store.examples(r.key)} for r in members]
        shared = set.intersection(*(set(o) for o in outcomes))
        if not shared:
            continue
        n = len(shared)
        robust = sum(all(o[i]["robust_correct"] for o in outcomes) for i in shared)
        clean = sum(all(o[i]["clean_correct"] for o in outcomes) for i in shared)
        low, high = wilson_interval(robust, n)
        first = _cell_row(members[0])
        rows.append({
            **first,
            "attack": WORST_CASE,
            "clean_acc": clean / n,
            "robust_acc": robust / n,
            "n": n,
            "robust_ci_low": low,
            "robust_ci_high": high,
            "robust_draw_acc": math.nan,
            "flags": ";".join(sorted({f for m in members for f in m.flags})),
            "key": "",
        })
    return rows


def leaderboard_document(frame: pd.DataFrame, *, title: str, commands: list[str],
                         figures: tuple[tuple[str, str], ...] = (), cell_href=None) -> Document:
    """The leaderboard as a :class:`Document`: constant columns in the header, the pivot, then every cell."""
    constant = {c: _only(frame[c]) for c in CONSTANT if c in frame}
    constant = {c: v for c, v in constant.items() if v is not None}
    # a column empty in every row (no sources) is neither shown nor put in the header
    header = tuple((c, v) for c, v in constant.items() if v) + provenance(frame["device"], frame["versions"])
    flags = flag_notes(frame["flags"])
    missing = frame[frame["status"] == "missing"]
    lines = []
    if len(missing):
        lines = [f"Missing cells ({len(missing)}; not computed, no numbers), by reason:", *_missing_by_reason(missing)]
    tables = (*pivot_tables(frame, flags, cell_href), _full_table(frame, [c for c in SHOWN if c not in constant], flags,
                                                                 cell_href))
    return Document(title, header, tuple(commands), (REPRODUCIBILITY,), tables, flags, tuple(lines), figures, frame)


def pivot_only(document: Document) -> Document:
    """The document with its pivot tables only (the terminal's default view): no per-cell table, no notes."""
    return replace(document, tables=tuple(t for t in document.tables if t.name.startswith("pivot")), notes=())


def render_markdown(frame: pd.DataFrame, *, title: str, commands: list[str]) -> str:
    """A Markdown leaderboard: constants and provenance in the header, the pivot, every cell, flag docs."""
    from robench.render.markdown import render_markdown as markdown

    return markdown(leaderboard_document(frame, title=title, commands=commands))


def _only(column: pd.Series) -> str | None:
    """The single value of a column (as printed), or None when it varies."""
    values = {_text(v) for v in column}
    return values.pop() if len(values) == 1 else None


def _full_table(frame: pd.DataFrame, shown: list[str], flags, cell_href) -> Table:
    """Every row of the leaderboard (cells, worst cases, missing cells) with the columns that vary."""
    with_flags = frame["flags"].astype(str).str.len().gt(0).any()
    names = [*shown[:shown.index("attack") + 1], "clean %", "robust %", "95% CI", *shown[shown.index("attack") + 1:]]
    names += ["flags"] if with_flags else []
    rows = []
    for row in frame.to_dict("records"):
        ci = _interval(row["robust_ci_low"], row["robust_ci_high"])
        values = {c: Item(_text(row[c])) for c in shown}
        if _text(row["key"]) and cell_href:
            values["attack"] = Item(row["attack"], href=cell_href(row["key"]))
        values.update({
            "clean %": Item(_percent(row["clean_acc"]), sort=_sortable(row["clean_acc"])),
            "robust %": Item(_percent(row["robust_acc"]), title=f"95% CI {ci}" if ci else _text(row["reason"]),
                             sort=_sortable(row["robust_acc"]), marks=marks_of(row["flags"], flags)),
            "95% CI": Item(ci, sort=_sortable(row["robust_ci_low"])),
            "flags": Item(_text(row["flags"])),
        })
        rows.append(tuple(values[c] for c in names))
    numeric = frozenset({"clean %", "robust %", "n", "draws", "seed"})
    return Table("cells", "Every cell", tuple(names), tuple(rows), numeric=numeric)


def _missing_by_reason(missing: pd.DataFrame, shown: int = 3) -> list[str]:
    """One line per reason: how many cells it keeps out, and a few of them."""
    lines = []
    for reason, group in missing.groupby("reason", sort=False):
        names = [f"{r.defense} | {r.attack} | {r.model} | {r.dataset}" for r in group.itertuples()]
        more = f"; and {len(names) - shown} more" if len(names) > shown else ""
        lines.append(f"- {len(names)} cell{'s' * (len(names) != 1)}: {reason} (e.g. {'; '.join(names[:shown])}{more})")
    return lines


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sortable(value) -> float:
    return -1.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def write_leaderboard(store: Store, benchmark: str, out_dir: "str | Path") -> tuple[Path, Path]:
    """Write ``<out_dir>/<benchmark>/leaderboard.csv`` and ``.md`` from the store alone, and its figures (PNG, SVG)."""
    from robench.plots import write_plots  # matplotlib only when a leaderboard is written
    from robench.render.csv import render_csv
    from robench.render.markdown import render_markdown as markdown

    frame = leaderboard(store, benchmark)
    folder = leaderboard_folder(out_dir, benchmark)
    folder.mkdir(parents=True, exist_ok=True)
    document = leaderboard_document(frame, title=f"robench leaderboard: {benchmark}", commands=store.commands(benchmark))
    csv_path, md_path = folder / "leaderboard.csv", folder / "leaderboard.md"
    csv_path.write_text(render_csv(document))
    md_path.write_text(markdown(document))
    write_plots(frame, folder)
    return csv_path, md_path


def _percent(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _interval(low: float, high: float) -> str:
    if math.isnan(low):
        return ""
    return f"[{100 * low:.1f}, {100 * high:.1f}]"
