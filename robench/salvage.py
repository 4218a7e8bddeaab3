"""Mending a store SQLite cannot repair by itself: a damaged schema text, damaged table pages.

Both work on the file while no store object has it open; ``robench verify --repair`` calls them
(:mod:`robench.verify`), then finds the cells that lost rows and recomputes them.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from robench.store import SCHEMA, Store

SALVAGED = ("runs", "cells", "benchmark_cells", "batches", "examples", "cell_labels", "missing_cells")
PROBE_LIMIT = 10_000  # rowids probed past a damaged page before a table's end is taken as reached


def restore_schema(path: "str | Path") -> list[str]:
    """Put robench's own table definitions back where a store's schema text was damaged; the tables restored.

    A damaged schema stops SQLite from opening the file at all, although the rows may be intact.
    """
    canonical = {}
    for statement in filter(None, (part.strip() for part in SCHEMA.split(";"))):
        canonical[statement.split()[5]] = statement.replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE", 1)
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error:
        return []
    try:
        db.execute("PRAGMA writable_schema=ON")  # read and write the schema table without parsing it
        stored = dict(db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        restored = [name for name, sql in canonical.items() if name in stored and stored[name] != sql]
        for name in restored:
            db.execute("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (canonical[name], name))
        return restored
    except sqlite3.DatabaseError:
        return []
    finally:
        db.close()


def salvage(path: "str | Path") -> Path:
    """Replace a store whose tables are damaged by a new file with every row SQLite can still read.

    Rows whose cell record was lost go too. The damaged file is kept as ``<name>.damaged``
    (returned). Run it while no other process uses the store.
    """
    path = Path(path)
    fresh = path.with_name(path.name + ".salvage")
    fresh.unlink(missing_ok=True)
    damaged = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        with Store(fresh) as new:
            db = new._db
            db.execute("PRAGMA foreign_keys=OFF")
            for table in SALVAGED:
                columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
                rows = _readable_rows(damaged, table, columns)
                db.execute("BEGIN IMMEDIATE")
                db.executemany(f"INSERT OR IGNORE INTO {table} ({', '.join(columns)}) "
                               f"VALUES ({', '.join('?' * len(columns))})", rows)
                db.execute("COMMIT")
            for table in ("examples", "batches", "benchmark_cells"):
                db.execute(f"DELETE FROM {table} WHERE key NOT IN (SELECT key FROM cells)")
    finally:
        damaged.close()
    kept = path.with_name(path.name + ".damaged")
    os.replace(path, kept)
    for leftover in ("-wal", "-shm"):
        Path(f"{path}{leftover}").unlink(missing_ok=True)
    os.replace(fresh, path)
    return kept


def _readable_rows(db: sqlite3.Connection, table: str, columns: list[str]) -> list[tuple]:
    """Every row of ``table`` SQLite can read: scan by rowid, and past an unreadable page probe rowid by rowid."""
    select = f"SELECT rowid, {', '.join(columns)} FROM {table}"
    rows, after, misses = [], 0, 0
    while misses < PROBE_LIMIT:
        try:
            for row in db.execute(f"{select} WHERE rowid > ? ORDER BY rowid", (after,)):
                rows.append(row[1:])
                after = row[0]
            return rows
        except sqlite3.DatabaseError:
            pass
        while misses < PROBE_LIMIT:  # the scan stopped at a damaged page: find the next row past it
            after, misses = after + 1, misses + 1
            try:
                found = db.execute(f"{select} WHERE rowid = ?", (after,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            if found is not None:
                rows.append(found[1:])
                misses = 0
                break
    return rows
