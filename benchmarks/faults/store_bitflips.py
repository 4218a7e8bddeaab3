"""Random bit flips in a finished store: does robench notice, and does ``robench verify --repair`` mend it?

Builds a reference store of a small grid (``tiny`` model, ``synthetic`` data, 4 cells of 64
examples in batches of 16), then for each of ``--flips`` seeded trials flips one random bit of a
copy of the file and runs, in process, as a user would:

  1. ``robench run`` of the same grid: exit code, and whether its rows equal the reference's;
  2. when the run did not end with the reference's rows: ``robench verify --repair``, then the
     run again, and whether the rows are now the reference's.

Each trial is counted in one row: ``same rows`` (as robench reads them: the flip hit nothing
that matters, or the run recomputed what it hit; ``index damage left for verify`` when SQLite's
full ``integrity_check``, which a run does not pay for, still finds a damaged index entry that
no read used), ``refused, exit 2`` (a clear error naming the store and the fix),
``silent damage`` (exit 0 with rows that differ from the reference: the failure this guards
against), ``traceback`` (an exception escaped). Then how many of the refused stores ``verify
--repair`` brought back to the reference's rows. A measurement, not a test.

Run from the repository root::

    .venv/bin/python benchmarks/faults/store_bitflips.py --flips 40 --seed 0
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

from click.testing import CliRunner
from tabulate import tabulate

from robench.cli import main as cli
from robench.store import Store, StoreError

GRID = ["--dataset", "synthetic", "--model", "tiny", "--defense", "none", "--defense", "bit-depth", "--attack", "fgsm",
        "--attack", "pgd:steps=3", "--eps", "6/255", "-n", "64", "--batch-size", "16", "--name", "flips",
        "--no-progress", "--device", "cpu"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flips", type=int, default=40, help="number of trials, one flipped bit each")
    parser.add_argument("--seed", type=int, default=0, help="seed of the flipped positions")
    return parser.parse_args()


def invoke(*args) -> tuple[int, bool]:
    """Exit code of a robench command, and whether an exception (a traceback) escaped."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    return result.exit_code, escaped


def rows(store: Path) -> list[tuple] | None:
    """Every example row as robench reads it (by cell key, through the index), or None when unreadable."""
    try:
        with Store(store, create=False) as opened:
            keys = [r[0] for r in opened._db.execute("SELECT key FROM cells ORDER BY key")]
            return [(key, tuple(row.values())) for key in keys for row in opened.examples(key)]
    except (StoreError, sqlite3.DatabaseError):
        return None


def sound(store: Path) -> bool:
    """Whether SQLite's full ``integrity_check`` finds nothing (``quick_check`` skips index contents)."""
    with Store(store, create=False) as opened:
        return not opened.integrity_problems(full=True)


def trial(reference: Path, folder: Path, rng: random.Random, expected: list[tuple]) -> tuple[str, str, str]:
    """One flipped bit: (where in the file, outcome of the run, outcome of verify --repair)."""
    store = folder / "s.sqlite"
    shutil.copy(reference, store)
    data = bytearray(store.read_bytes())
    offset, bit = rng.randrange(len(data)), rng.randrange(8)
    data[offset] ^= 1 << bit
    store.write_bytes(bytes(data))
    where = f"page {offset // 4096 + 1}, byte {offset % 4096}"
    code, escaped = invoke("run", *GRID, "--store", store, "--results", folder / "r")
    if escaped:
        return where, "traceback", ""
    if code == 0:
        if rows(store) != expected:
            return where, "silent damage", ""
        return where, "same rows" if sound(store) else "same rows, index damage left for verify", ""
    if code != 2:
        return where, f"exit {code}", ""
    _, escaped = invoke("verify", "--repair", "--store", store, "--device", "cpu")
    again, escaped_again = invoke("run", *GRID, "--store", store, "--results", folder / "r")
    repaired = not escaped and not escaped_again and again == 0 and rows(store) == expected
    return where, "refused, exit 2", "repaired" if repaired else "not repaired"


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="robench-flips-") as tmp:
        reference = Path(tmp) / "reference.sqlite"
        code, escaped = invoke("run", *GRID, "--store", reference, "--results", Path(tmp) / "r")
        assert code == 0 and not escaped, "the reference run failed"
        expected = rows(reference)
        outcomes = []
        for index in range(args.flips):
            folder = Path(tmp) / f"trial-{index}"
            folder.mkdir()
            outcomes.append(trial(reference, folder, rng, expected))
            shutil.rmtree(folder)
    print(tabulate([[i, *o] for i, o in enumerate(outcomes)], headers=["trial", "flipped bit", "run", "verify --repair"]))
    runs, repairs = Counter(o[1] for o in outcomes), Counter(o[2] for o in outcomes if o[2])
    print(f"\n{args.flips} flips (seed {args.seed}): " + ", ".join(f"{k} {v}" for k, v in sorted(runs.items())))
    print("after verify --repair: " + (", ".join(f"{k} {v}" for k, v in sorted(repairs.items())) or "nothing to repair"))


if __name__ == "__main__":
    main()
