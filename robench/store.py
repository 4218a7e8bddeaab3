"""The SQLite result store: runs, cells and per-example outcomes, committed per batch.

One transaction writes a batch's example rows together with its completion marker, so a run
killed at any point resumes at the first missing batch without losing or duplicating rows.
Every table a user sees is computed from these rows (``robench.report``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

DEFAULT_RESULTS = Path("robench-results")  # a user's runs; committed leaderboards are written with --results results
STORE_NAME = "robench.sqlite"


def store_in(results_dir: "str | Path") -> Path:
    """The store kept beside a results folder's leaderboards."""
    return Path(results_dir) / STORE_NAME


SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    started     REAL NOT NULL,
    finished    REAL,
    command     TEXT,
    environment TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cells (
    key         TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('running', 'done', 'error')),
    summary     TEXT,
    flags       TEXT NOT NULL DEFAULT '[]',
    provenance  TEXT NOT NULL,
    error       TEXT,
    run_id      INTEGER REFERENCES runs(run_id),
    started     REAL,
    finished    REAL,
    wall_s      REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS benchmark_cells (
    benchmark   TEXT NOT NULL,
    key         TEXT NOT NULL REFERENCES cells(key),
    PRIMARY KEY (benchmark, key)
);
CREATE TABLE IF NOT EXISTS batches (
    key         TEXT NOT NULL REFERENCES cells(key),
    batch       INTEGER NOT NULL,
    wall_s      REAL NOT NULL,
    PRIMARY KEY (key, batch)
);
CREATE TABLE IF NOT EXISTS examples (
    key               TEXT NOT NULL REFERENCES cells(key),
    example_id        TEXT NOT NULL,
    batch             INTEGER NOT NULL,
    label             INTEGER NOT NULL,
    clean_correct     INTEGER NOT NULL,
    clean_draw_acc    REAL NOT NULL,
    attacked          INTEGER NOT NULL,
    robust_correct    INTEGER NOT NULL,
    robust_draw_acc   REAL NOT NULL,
    adv_prediction    INTEGER,
    perturbation      REAL NOT NULL,
    PRIMARY KEY (key, example_id)
);
CREATE TABLE IF NOT EXISTS cell_labels (
    benchmark   TEXT NOT NULL,
    key         TEXT NOT NULL,
    labels      TEXT NOT NULL,
    PRIMARY KEY (benchmark, key)
);
CREATE TABLE IF NOT EXISTS missing_cells (
    benchmark   TEXT NOT NULL,
    key         TEXT NOT NULL,
    spec        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (benchmark, key)
);
"""

EXAMPLE_COLUMNS = (
    "example_id", "batch", "label", "clean_correct", "clean_draw_acc", "attacked",
    "robust_correct", "robust_draw_acc", "adv_prediction", "perturbation",
)


@dataclass(frozen=True)
class CellRecord:
    """One stored cell: its key, spec, status, summary, flags and provenance."""

    key: str
    spec: dict
    status: str
    summary: dict | None
    flags: list[str]
    provenance: dict
    error: str | None
    wall_s: float


@dataclass(frozen=True)
class MissingRecord:
    """A cell of a benchmark's latest grid that could not be built, and why (nothing was computed)."""

    key: str
    spec: dict
    reason: str


class Store:
    """A result store in one SQLite file (WAL mode); safe to reopen after any interruption."""

    def __init__(self, path: "str | Path"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # runs ---------------------------------------------------------------------------------
    def start_run(self, command: str, environment: dict) -> int:
        """Record a new run (command line and environment) and return its id."""
        with self._db:
            cur = self._db.execute(
                "INSERT INTO runs (started, command, environment) VALUES (?, ?, ?)",
                (time.time(), command, json.dumps(environment, sort_keys=True)),
            )
        return int(cur.lastrowid)

    def finish_run(self, run_id: int) -> None:
        with self._db:
            self._db.execute("UPDATE runs SET finished = ? WHERE run_id = ?", (time.time(), run_id))

    # cells --------------------------------------------------------------------------------
    def cell(self, key: str) -> CellRecord | None:
        """The stored cell with this key, or None."""
        row = self._db.execute(
            "SELECT key, spec, status, summary, flags, provenance, error, wall_s FROM cells WHERE key = ?", (key,)
        ).fetchone()
        return _record(row) if row else None

    def find_cells(self, prefix: str) -> list[CellRecord]:
        """Cells whose key starts with ``prefix`` (for ``robench show``)."""
        rows = self._db.execute(
            "SELECT key, spec, status, summary, flags, provenance, error, wall_s FROM cells WHERE key LIKE ?",
            (prefix + "%",),
        ).fetchall()
        return [_record(r) for r in rows]

    def begin_cell(self, key: str, spec: dict, provenance: dict, run_id: int, benchmark: str) -> None:
        """Register a cell as running (keeping any batches a previous run completed)."""
        with self._db:
            self._db.execute(
                "INSERT INTO cells (key, spec, status, provenance, run_id, started) VALUES (?, ?, 'running', ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status='running', error=NULL, run_id=excluded.run_id, "
                "provenance=excluded.provenance",
                (key, json.dumps(spec, sort_keys=True), json.dumps(provenance, sort_keys=True), run_id, time.time()),
            )
            self.tag(key, benchmark, commit=False)

    def tag(self, key: str, benchmark: str, *, commit: bool = True) -> None:
        """Record that a cell belongs to a benchmark (a cell may serve several)."""
        self._db.execute("INSERT OR IGNORE INTO benchmark_cells (benchmark, key) VALUES (?, ?)", (benchmark, key))
        if commit:
            self._db.commit()

    def set_members(self, benchmark: str, keys: list[str]) -> None:
        """Make ``keys`` the cells of a benchmark (its latest grid); other cells stay in the store, untagged."""
        with self._db:
            self._db.execute("DELETE FROM benchmark_cells WHERE benchmark = ?", (benchmark,))
            self._db.executemany(
                "INSERT OR IGNORE INTO benchmark_cells (benchmark, key) SELECT ?, key FROM cells WHERE key = ?",
                [(benchmark, key) for key in keys],
            )

    def set_labels(self, benchmark: str, labels: dict[str, list[dict]]) -> None:
        """Make ``labels`` (cell key -> paper labels) those of a benchmark's latest grid."""
        with self._db:
            self._db.execute("DELETE FROM cell_labels WHERE benchmark = ?", (benchmark,))
            self._db.executemany(
                "INSERT INTO cell_labels (benchmark, key, labels) VALUES (?, ?, ?)",
                [(benchmark, key, json.dumps(found, sort_keys=True)) for key, found in labels.items() if found],
            )

    def set_missing(self, benchmark: str, records: list[MissingRecord]) -> None:
        """Make ``records`` the missing cells of a benchmark's latest grid."""
        with self._db:
            self._db.execute("DELETE FROM missing_cells WHERE benchmark = ?", (benchmark,))
            self._db.executemany(
                "INSERT OR REPLACE INTO missing_cells (benchmark, key, spec, reason) VALUES (?, ?, ?, ?)",
                [(benchmark, r.key, json.dumps(r.spec, sort_keys=True), r.reason) for r in records],
            )

    def completed_batches(self, key: str) -> set[int]:
        """Indices of the batches of a cell already committed."""
        return {r[0] for r in self._db.execute("SELECT batch FROM batches WHERE key = ?", (key,))}

    def add_batch(self, key: str, batch: int, rows: Iterable[dict], wall_s: float) -> None:
        """Commit one batch's example rows and its completion marker in one transaction."""
        values = [tuple(row[c] for c in EXAMPLE_COLUMNS) for row in rows]
        with self._db:
            self._db.executemany(
                f"INSERT INTO examples (key, {', '.join(EXAMPLE_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(EXAMPLE_COLUMNS))})",
                [(key, *v) for v in values],
            )
            self._db.execute("INSERT INTO batches (key, batch, wall_s) VALUES (?, ?, ?)", (key, batch, wall_s))

    def finish_cell(self, key: str, summary: dict, flags: list[str]) -> None:
        """Mark a cell done with its summary and sanity flags."""
        wall = self._db.execute("SELECT COALESCE(SUM(wall_s), 0) FROM batches WHERE key = ?", (key,)).fetchone()[0]
        with self._db:
            self._db.execute(
                "UPDATE cells SET status='done', summary=?, flags=?, finished=?, wall_s=? WHERE key=?",
                (json.dumps(summary, sort_keys=True), json.dumps(sorted(flags)), time.time(), wall, key),
            )

    def fail_cell(self, key: str, spec: dict, provenance: dict, run_id: int, benchmark: str, message: str) -> None:
        """Record a cell that raised: an ``error`` row; its committed batches are kept for resume."""
        with self._db:
            self._db.execute(
                "INSERT INTO cells (key, spec, status, provenance, run_id, error, finished) "
                "VALUES (?, ?, 'error', ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET status='error', "
                "error=excluded.error, finished=excluded.finished",
                (key, json.dumps(spec, sort_keys=True), json.dumps(provenance, sort_keys=True), run_id,
                 message, time.time()),
            )
            self.tag(key, benchmark, commit=False)

    # reading ------------------------------------------------------------------------------
    def examples(self, key: str) -> list[dict]:
        """Per-example outcomes of a cell, ordered by example id."""
        cur = self._db.execute(
            f"SELECT {', '.join(EXAMPLE_COLUMNS)} FROM examples WHERE key = ? ORDER BY batch, example_id", (key,)
        )
        return [dict(zip(EXAMPLE_COLUMNS, row)) for row in cur]

    def benchmarks(self) -> list[str]:
        """Names of every benchmark with at least one cell (computed, failed or missing) in the store."""
        return [r[0] for r in self._db.execute(
            "SELECT benchmark FROM benchmark_cells UNION SELECT benchmark FROM missing_cells ORDER BY benchmark"
        )]

    def missing_cells(self, benchmark: str) -> list[MissingRecord]:
        """The missing cells of a benchmark's latest grid."""
        rows = self._db.execute(
            "SELECT key, spec, reason FROM missing_cells WHERE benchmark = ? ORDER BY rowid", (benchmark,)
        )
        return [MissingRecord(key, json.loads(spec), reason) for key, spec, reason in rows]

    def labels(self, benchmark: str) -> dict[str, list[dict]]:
        """Paper labels of a benchmark's cells (computed or missing), by cell key."""
        rows = self._db.execute("SELECT key, labels FROM cell_labels WHERE benchmark = ?", (benchmark,))
        return {key: json.loads(labels) for key, labels in rows}

    def benchmark_cells(self, benchmark: str) -> list[CellRecord]:
        """Every cell recorded for a benchmark."""
        rows = self._db.execute(
            "SELECT c.key, c.spec, c.status, c.summary, c.flags, c.provenance, c.error, c.wall_s "
            "FROM cells c JOIN benchmark_cells b ON b.key = c.key WHERE b.benchmark = ? ORDER BY c.started",
            (benchmark,),
        ).fetchall()
        return [_record(r) for r in rows]

    def commands(self, benchmark: str) -> list[str]:
        """The command lines of the runs that computed a benchmark's cells, oldest first."""
        rows = self._db.execute(
            "SELECT DISTINCT r.command FROM runs r JOIN cells c ON c.run_id = r.run_id "
            "JOIN benchmark_cells b ON b.key = c.key WHERE b.benchmark = ? AND r.command != '' ORDER BY r.run_id",
            (benchmark,),
        )
        return [r[0] for r in rows]


def _record(row: tuple) -> CellRecord:
    key, spec, status, summary, flags, provenance, error, wall_s = row
    return CellRecord(
        key=key,
        spec=json.loads(spec),
        status=status,
        summary=json.loads(summary) if summary else None,
        flags=json.loads(flags or "[]"),
        provenance=json.loads(provenance),
        error=error,
        wall_s=float(wall_s or 0),
    )
