"""The SQLite result store: runs, cells and per-example outcomes, committed per batch.

One transaction writes a batch's example rows together with its completion marker, so a run
killed at any point resumes at the first missing batch without losing or duplicating rows.
Every table a user sees is computed from these rows (``robench.report``).

Several writers (processes, or the driver of a distributed executor) may share one store.
Every write is a ``BEGIN IMMEDIATE`` transaction in WAL mode with a busy timeout. A writer
*claims* a cell before computing it (:meth:`Store.claim`): a claim names its owner and is kept
alive by a heartbeat (:meth:`Store.heartbeat`); it expires when the heartbeat stops for
``CLAIM_TTL`` seconds, or at once when its owner was a process of this host that is gone. Batch
writes are idempotent (the same rows again are accepted, different rows are a
:class:`BatchConflict`), a ``done`` cell's state is never overwritten, and a done cell whose
rows disagree with its summary is refused on read (:class:`StoreDamaged`) until
``robench verify --repair`` marks it for recomputation.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from robench.errors import ConfigError

DEFAULT_RESULTS = Path("robench-results")  # a user's runs; committed leaderboards are written with --results results
STORE_NAME = "robench.sqlite"


CLAIM_TTL = 60.0  # seconds without a heartbeat after which a claim is free for another writer
HEARTBEAT_S = 10.0
BUSY_TIMEOUT_MS = 60_000


class StoreError(ConfigError):
    """A store that cannot be opened or used as it is (not a database, damaged, unusable path)."""


class StoreDamaged(StoreError):
    """Done cells whose stored rows disagree with their summaries."""


class BatchConflict(RuntimeError):
    """A batch written again with rows that differ from the stored ones."""


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
CREATE TABLE IF NOT EXISTS claims (
    key         TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    heartbeat   REAL NOT NULL
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
    """A result store in one SQLite file (WAL mode); safe to reopen after any interruption and to share.

    ``create=False`` opens an existing store for reading (never creating it, its folder or its
    tables). Raises :class:`StoreError` naming the file when it cannot be used.
    """

    def __init__(self, path: "str | Path", *, create: bool = True):
        self.path = _usable_path(path, create=create)
        try:
            if not create:
                self._db = _connect_existing(self.path)
            else:
                self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.execute("PRAGMA foreign_keys=ON")
                with self._write():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
        except sqlite3.DatabaseError as err:
            raise StoreError(_unusable(self.path, err)) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction that takes the write lock first (``BEGIN IMMEDIATE``), so no writer upgrades late."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def check_integrity(self) -> None:
        """Run ``PRAGMA quick_check``; raise :class:`StoreError` naming the problems and the fix."""
        problems = self.integrity_problems()
        if problems:
            raise StoreError(
                f"{self.path} is damaged ({'; '.join(problems[:3])}); run `robench verify --repair --store "
                f"{self.path}` (or move the file away to start a new store)"
            )

    def integrity_problems(self, *, full: bool = False) -> list[str]:
        """What SQLite's ``quick_check`` (``integrity_check`` when ``full``) finds wrong; empty when sound."""
        try:
            rows = self._db.execute(f"PRAGMA {'integrity_check' if full else 'quick_check'}").fetchall()
        except sqlite3.DatabaseError as err:
            return [str(err)]
        lines = [line for (text,) in rows for line in text.splitlines()]
        return [line for line in lines if line != "ok" and not line.startswith("*** in database")]

    # runs ---------------------------------------------------------------------------------
    def start_run(self, command: str, environment: dict) -> int:
        """Record a new run (command line and environment) and return its id."""
        with self._write():
            cur = self._db.execute(
                "INSERT INTO runs (started, command, environment) VALUES (?, ?, ?)",
                (time.time(), command, json.dumps(environment, sort_keys=True)),
            )
        return int(cur.lastrowid)

    def finish_run(self, run_id: int) -> None:
        with self._write():
            self._db.execute("UPDATE runs SET finished = ? WHERE run_id = ?", (time.time(), run_id))

    # claims -------------------------------------------------------------------------------
    def claim(self, key: str, owner: str) -> str:
        """Claim a cell for ``owner``: ``'claimed'``, ``'done'`` (nothing to do) or ``'busy'`` (a live owner has it)."""
        with self._write():
            status = self._db.execute("SELECT status FROM cells WHERE key = ?", (key,)).fetchone()
            if status is not None and status[0] == "done":
                return "done"
            held = self._db.execute("SELECT owner, heartbeat FROM claims WHERE key = ?", (key,)).fetchone()
            if held is not None and held[0] != owner and claim_alive(*held):
                return "busy"
            self._db.execute(
                "INSERT INTO claims (key, owner, heartbeat) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET owner=excluded.owner, heartbeat=excluded.heartbeat",
                (key, owner, time.time()),
            )
        return "claimed"

    def release(self, key: str, owner: str) -> None:
        """Give up ``owner``'s claim on a cell (no-op when another owner holds it)."""
        with self._write():
            self._db.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (key, owner))

    def heartbeat(self, owner: str) -> None:
        """Keep every claim of ``owner`` alive."""
        with self._write():
            self._db.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    @contextmanager
    def heartbeats(self, owner: str, every: float = HEARTBEAT_S) -> Iterator[None]:
        """Beat ``owner``'s claims from a background thread (its own connection) while the block runs."""
        stop = threading.Event()

        def beat() -> None:
            with Store(self.path) as own:
                while not stop.wait(every):
                    own.heartbeat(owner)

        thread = threading.Thread(target=beat, name="robench-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # cells --------------------------------------------------------------------------------
    def cell(self, key: str) -> CellRecord | None:
        """The stored cell with this key, or None; a done cell whose rows disagree with its summary raises."""
        row = self._db.execute(f"SELECT {CELL_COLUMNS} FROM cells WHERE key = ?", (key,)).fetchone()
        return self._checked([_record(row)])[0] if row else None

    def find_cells(self, prefix: str) -> list[CellRecord]:
        """Cells whose key starts with ``prefix`` (for ``robench show``)."""
        rows = self._db.execute(f"SELECT {CELL_COLUMNS} FROM cells WHERE key LIKE ?", (prefix + "%",)).fetchall()
        return self._checked([_record(r) for r in rows])

    def spec(self, key: str) -> dict:
        """The stored spec of a cell, as :meth:`robench.cell.Cell.to_json` wrote it."""
        return json.loads(self._db.execute("SELECT spec FROM cells WHERE key = ?", (key,)).fetchone()[0])

    def begin_cell(self, key: str, spec: dict, provenance: dict, run_id: int, benchmark: str | None) -> None:
        """Register a cell as running (keeping any batches a previous run completed); a done cell is left as it is.

        ``benchmark`` (None: leave its memberships as they are) gains the cell.
        """
        with self._write():
            self._db.execute(
                "INSERT INTO cells (key, spec, status, provenance, run_id, started) VALUES (?, ?, 'running', ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET status='running', error=NULL, run_id=excluded.run_id, "
                "provenance=excluded.provenance WHERE status != 'done'",
                (key, json.dumps(spec, sort_keys=True), json.dumps(provenance, sort_keys=True), run_id, time.time()),
            )
            self._tag(key, benchmark)

    def tag(self, key: str, benchmark: str | None) -> None:
        """Record that a cell belongs to a benchmark (a cell may serve several; None: no change)."""
        with self._write():
            self._tag(key, benchmark)

    def _tag(self, key: str, benchmark: str | None) -> None:
        if benchmark is not None:
            self._db.execute(
                "INSERT OR IGNORE INTO benchmark_cells (benchmark, key) VALUES (?, ?)", (benchmark, key))

    def set_members(self, benchmark: str, keys: list[str], *, replace: bool = True) -> None:
        """Make ``keys`` the cells of a benchmark (its latest grid), or only add them (``replace=False``).

        Replaced cells stay in the store, untagged. Writers sharing a benchmark name at the same
        time add (an ad-hoc grid), so one never removes the cells of another.
        """
        with self._write():
            if replace:
                self._db.execute("DELETE FROM benchmark_cells WHERE benchmark = ?", (benchmark,))
            self._db.executemany(
                "INSERT OR IGNORE INTO benchmark_cells (benchmark, key) SELECT ?, key FROM cells WHERE key = ?",
                [(benchmark, key) for key in keys],
            )

    def set_labels(self, benchmark: str, labels: dict[str, list[dict]], *, replace: bool = True) -> None:
        """Make ``labels`` (cell key -> paper labels) those of a benchmark's latest grid (or add them)."""
        with self._write():
            if replace:
                self._db.execute("DELETE FROM cell_labels WHERE benchmark = ?", (benchmark,))
            self._db.executemany(
                "INSERT OR REPLACE INTO cell_labels (benchmark, key, labels) VALUES (?, ?, ?)",
                [(benchmark, key, json.dumps(found, sort_keys=True)) for key, found in labels.items() if found],
            )

    def set_missing(self, benchmark: str, records: list[MissingRecord], *, replace: bool = True) -> None:
        """Make ``records`` the missing cells of a benchmark's latest grid (or add them)."""
        with self._write():
            if replace:
                self._db.execute("DELETE FROM missing_cells WHERE benchmark = ?", (benchmark,))
            self._db.executemany(
                "INSERT OR REPLACE INTO missing_cells (benchmark, key, spec, reason) VALUES (?, ?, ?, ?)",
                [(benchmark, r.key, json.dumps(r.spec, sort_keys=True), r.reason) for r in records],
            )

    def completed_batches(self, key: str) -> set[int]:
        """Indices of the batches of a cell already committed."""
        return {r[0] for r in self._db.execute("SELECT batch FROM batches WHERE key = ?", (key,))}

    def stored_rows(self, key: str) -> dict[int, int]:
        """Number of example rows stored for each batch of a cell."""
        return dict(self._db.execute("SELECT batch, COUNT(*) FROM examples WHERE key = ? GROUP BY batch", (key,)))

    def add_batch(self, key: str, batch: int, rows: Iterable[dict], wall_s: float) -> None:
        """Commit one batch's example rows and its completion marker in one transaction.

        Idempotent: rows already stored must equal the new ones (a :class:`BatchConflict` names
        both otherwise) and only the missing ones are added, so a partly present batch is
        recomputable and two writers of the same batch agree.
        """
        rows = list(rows)
        with self._write():
            ids = [row["example_id"] for row in rows]
            stored = {  # under any batch number: an example stored in another batch is a conflict too
                r[0]: dict(zip(EXAMPLE_COLUMNS, r)) for chunk in _chunks(ids) for r in self._db.execute(
                    f"SELECT {', '.join(EXAMPLE_COLUMNS)} FROM examples WHERE key = ? "
                    f"AND example_id IN ({', '.join('?' * len(chunk))})", (key, *chunk))
            }
            differing = [(stored[r["example_id"]], r) for r in rows
                         if r["example_id"] in stored and _differs(stored[r["example_id"]], r)]
            if differing:
                raise BatchConflict(_conflict(key, batch, differing, len(rows)))
            new = [row for row in rows if row["example_id"] not in stored]
            self._db.executemany(
                f"INSERT INTO examples (key, {', '.join(EXAMPLE_COLUMNS)}) "
                f"VALUES (?, {', '.join('?' * len(EXAMPLE_COLUMNS))})",
                [(key, *(row[c] for c in EXAMPLE_COLUMNS)) for row in new],
            )
            self._db.execute("INSERT OR IGNORE INTO batches (key, batch, wall_s) VALUES (?, ?, ?)",
                             (key, batch, wall_s))

    def finish_cell(self, key: str, summary: dict, flags: list[str]) -> None:
        """Mark a cell done with its summary and flags; a done cell keeps its state.

        The summary gains ``rows_sha256`` (of every value of its rows) and ``record_sha256`` (of its
        spec, provenance, summary and flags), which reads compare (:meth:`damage`).
        """
        with self._write():
            (wall,) = self._db.execute("SELECT COALESCE(SUM(wall_s), 0) FROM batches WHERE key = ?", (key,)).fetchone()
            summary = {**summary, DIGEST: self._digest(key)}
            summary[RECORD_DIGEST] = self._record_digest(key, summary, flags)
            self._db.execute(
                "UPDATE cells SET status='done', summary=?, flags=?, finished=?, wall_s=?, error=NULL "
                "WHERE key=? AND status != 'done'",
                (json.dumps(summary, sort_keys=True), _flags_text(flags), time.time(), wall, key),
            )

    def fail_cell(self, key: str, spec: dict, provenance: dict, run_id: int, benchmark: str | None,
                  message: str) -> None:
        """Record a cell that raised: an ``error`` row; its batches are kept for resume; a done cell stays done."""
        with self._write():
            self._db.execute(
                "INSERT INTO cells (key, spec, status, provenance, run_id, error, finished) "
                "VALUES (?, ?, 'error', ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET status='error', "
                "error=excluded.error, finished=excluded.finished WHERE status != 'done'",
                (key, json.dumps(spec, sort_keys=True), json.dumps(provenance, sort_keys=True), run_id,
                 message, time.time()),
            )
            self._tag(key, benchmark)

    # damage -------------------------------------------------------------------------------
    def damage(self, keys: Iterable[str] | None = None, *, full: bool = False) -> dict[str, str]:
        """Done cells (of ``keys``, default all) whose rows disagree with their summary, with what disagrees.

        Compares the count and the sums of the 0/1 columns and the sha256 of the cell's spec,
        provenance, summary and flags (cheap, done on every read); ``full`` also compares the
        sha256 of every value of the rows with the one taken when the cell finished.
        """
        if keys is None:
            keys = [r[0] for r in self._db.execute("SELECT key FROM cells WHERE status = 'done'")]
        found = {}
        for key in keys:
            row = self._db.execute("SELECT status, summary, flags FROM cells WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] != "done":
                continue
            try:
                summary, flags = json.loads(row[1] or "{}"), json.loads(row[2] or "[]")
            except ValueError:
                found[key] = RECORD_DAMAGED
                continue
            problem = _disagreement(summary, self._totals(key))
            if not problem and RECORD_DIGEST in summary and summary[RECORD_DIGEST] != self._record_digest(
                    key, summary, flags):
                problem = RECORD_DAMAGED
            if not problem and full and DIGEST in summary and summary[DIGEST] != self._digest(key):
                problem = "the rows' values differ from those the cell finished with (sha256)"
            if problem:
                found[key] = problem
        return found

    def _record_digest(self, key: str, summary: dict, flags: list[str]) -> str:
        spec, provenance = self._db.execute("SELECT spec, provenance FROM cells WHERE key = ?", (key,)).fetchone()
        summary = json.dumps({k: v for k, v in summary.items() if k != RECORD_DIGEST}, sort_keys=True)
        return hashlib.sha256(f"{spec}\n{provenance}\n{summary}\n{_flags_text(flags)}".encode()).hexdigest()

    def _digest(self, key: str) -> str:
        rows = self._db.execute(
            f"SELECT {', '.join(EXAMPLE_COLUMNS)} FROM examples WHERE key = ? ORDER BY example_id", (key,)
        ).fetchall()
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def _totals(self, key: str) -> dict:
        n, clean, robust, attacked = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(clean_correct), 0), COALESCE(SUM(robust_correct), 0), "
            "COALESCE(SUM(attacked), 0) FROM examples WHERE key = ?", (key,),
        ).fetchone()
        return {"n": n, "clean_correct": clean, "robust_correct": robust, "attacked": attacked}

    def check_cells(self, keys: Iterable[str], *, full: bool = False) -> None:
        """Raise :class:`StoreDamaged` naming the done cells of ``keys`` whose rows disagree with their summary."""
        damaged = self.damage(keys, full=full)
        if damaged:
            raise StoreDamaged(_damage_message(self.path, damaged))

    def _checked(self, records: list[CellRecord]) -> list[CellRecord]:
        self.check_cells([r.key for r in records if r.status == "done"])
        return records

    def mark_for_recompute(self, key: str, reason: str) -> list[int] | None:
        """Make a damaged done cell recomputable; returns the batches to recompute (None: the cell was removed).

        Batches whose row count is not the one the cell's batch size gives them (rows lost, or a
        batch number altered) lose their rows and completion marker; when every count is right
        (values altered), every row of the cell goes. A cell whose own record (spec, provenance)
        is damaged cannot be rebuilt from it: it is removed, and rerunning its benchmark computes it.
        """
        if reason == RECORD_DAMAGED:
            self._remove(key)
            return None
        with self._write():
            spec = self.spec(key)
            counts = self.stored_rows(key)
            size, n = spec["batch_size"], spec["n"]
            expected = {b: min(size, n - b * size) for b in range((n + size - 1) // size)}
            off = sorted(b for b in {*expected, *counts} if counts.get(b, 0) != expected.get(b, 0))
            if not off:
                off = sorted(expected)
            for batch in off:
                self._db.execute("DELETE FROM examples WHERE key = ? AND batch = ?", (key, batch))
                self._db.execute("DELETE FROM batches WHERE key = ? AND batch = ?", (key, batch))
            recomputed = [b for b in off if b in expected]
            self._db.execute(
                "UPDATE cells SET status='error', error=? WHERE key = ?",
                (f"damaged ({reason}); batches {recomputed} marked for recomputation: rerun to recompute them", key),
            )
        return recomputed

    def _remove(self, key: str) -> None:
        with self._write():
            for table in ("examples", "batches", "benchmark_cells", "cell_labels", "claims", "cells"):
                self._db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))

    def memberships(self, key: str) -> list[str]:
        """The benchmarks a cell belongs to."""
        return [r[0] for r in self._db.execute("SELECT benchmark FROM benchmark_cells WHERE key = ?", (key,))]

    def reindex(self) -> list[str]:
        """Rebuild every index from its table (mends index damage); returns the problems left."""
        try:
            with self._write():
                self._db.execute("REINDEX")
        except sqlite3.DatabaseError as err:
            return [f"REINDEX failed: {err}"]
        return self.integrity_problems(full=True)

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
        """Every cell recorded for a benchmark; a done cell whose rows disagree with its summary raises."""
        rows = self._db.execute(
            f"SELECT {', '.join('c.' + c for c in CELL_COLUMNS.split(', '))} "
            "FROM cells c JOIN benchmark_cells b ON b.key = c.key WHERE b.benchmark = ? ORDER BY c.started",
            (benchmark,),
        ).fetchall()
        return self._checked([_record(r) for r in rows])

    def commands(self, benchmark: str) -> list[str]:
        """The command lines of the runs that computed a benchmark's cells, oldest first."""
        rows = self._db.execute(
            "SELECT DISTINCT r.command FROM runs r JOIN cells c ON c.run_id = r.run_id "
            "JOIN benchmark_cells b ON b.key = c.key WHERE b.benchmark = ? AND r.command != '' ORDER BY r.run_id",
            (benchmark,),
        )
        return [r[0] for r in rows]


CELL_COLUMNS = "key, spec, status, summary, flags, provenance, error, wall_s"
SUMMED = ("n", "clean_correct", "robust_correct", "attacked")
DIGEST = "rows_sha256"
RECORD_DIGEST = "record_sha256"
RECORD_DAMAGED = ("its stored record (spec, provenance, summary or flags) differs from the one it finished with "
                  "(sha256)")


def new_owner() -> str:
    """A claim owner unique to this process: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_alive(owner: str, heartbeat: float) -> bool:
    """Whether a claim still holds: a recent heartbeat, and (on this host) a live owner process."""
    if time.time() - heartbeat > CLAIM_TTL:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _connect_existing(path: Path) -> sqlite3.Connection:
    """Open an existing file without ever creating one (``mode=rw``; ``mode=ro`` where it cannot be written)."""
    uri = path.resolve().as_uri()
    try:
        return _connect_uri(f"{uri}?mode=rw")
    except sqlite3.OperationalError:  # a file this user cannot write: read it as it is
        return _connect_uri(f"{uri}?mode=ro")


def _connect_uri(uri: str) -> sqlite3.Connection:
    db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # fails here on a file that is not a database
    return db


def _usable_path(path: "str | Path", *, create: bool) -> Path:
    if str(path) == "":
        raise StoreError("the store path is empty; give a file such as robench-results/robench.sqlite")
    path = Path(path)
    if path.exists() and not path.is_file():
        raise StoreError(f"store {path} is not a regular file (a folder or a device); give a file path")
    if not create:
        if not path.is_file():
            raise StoreError(f"no store at {path}; run a benchmark first (robench run ...) or pass --store PATH")
        return path
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(f"cannot create store {path}: {parent} is a file, not a folder; give another path")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(f"cannot create the folder of store {path}: {err.strerror}") from None
    return path


def _unusable(path: Path, err: sqlite3.DatabaseError) -> str:
    if "not a database" in str(err):
        return (f"{path} is not a robench store ({err}): it is damaged or another kind of file; move it away "
                "(or restore a backup) and rerun to start a new store, or pass --store with another path")
    if "malformed" in str(err):
        return (f"store {path} is damaged ({err}); `robench verify --repair --store {path}` mends what it can "
                "(schema, indexes, unreadable pages) and recomputes the cells that lost rows")
    return f"cannot open store {path}: {err}"


def _differs(stored: dict, new: dict) -> bool:
    return any(stored[c] != new[c] for c in EXAMPLE_COLUMNS)


def _conflict(key: str, batch: int, differing: list[tuple[dict, dict]], size: int) -> str:
    stored, new = differing[0]
    columns = [c for c in EXAMPLE_COLUMNS if stored[c] != new[c]]
    shown = ", ".join(f"{c} stored {stored[c]!r} vs new {new[c]!r}" for c in columns)
    return (f"batch {batch} of cell {key[:12]} differs from the stored one in {len(differing)} of {size} examples "
            f"(first: {stored['example_id']}: {shown}); a cell's numbers must not depend on who computes them: "
            "check the plugins for unseeded randomness, or run `robench verify --repair` if the store was damaged")


def _disagreement(summary: dict, totals: dict) -> str:
    wrong = [f"{name} {summary[name]} in the summary but {totals[name]} in the rows"
             for name in SUMMED if name in summary and summary[name] != totals[name]]
    return "; ".join(wrong)


def _damage_message(path: Path, damaged: dict[str, str]) -> str:
    listed = "; ".join(f"{key[:12]}: {problem}" for key, problem in list(damaged.items())[:3])
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    return (f"{len(damaged)} done cell(s) in {path} disagree with their stored rows ({listed}{more}); run "
            f"`robench verify --repair --store {path}` to mark them for recomputation, then rerun")


def _chunks(items: list, size: int = 500) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _flags_text(flags: list[str]) -> str:
    return json.dumps(sorted(flags))


def _record(row: tuple) -> CellRecord:
    key, spec, status, summary, flags, provenance, error, wall_s = row
    try:
        return _decoded(key, spec, status, summary, flags, provenance, error, wall_s)
    except (ValueError, TypeError) as err:
        raise StoreDamaged(f"the stored record of cell {key[:12]} is damaged ({err}); run `robench verify --repair` "
                           "to remove it, then rerun its benchmark to compute it again") from None


def _decoded(key, spec, status, summary, flags, provenance, error, wall_s) -> CellRecord:
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
