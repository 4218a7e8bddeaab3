"""Scaling of a grid over Ray workers: local executor vs Ray on 1, 2, ... workers, one torch thread each.

Runs the same grid (``--cells`` PGD cells of the registered ``tiny`` model on synthetic images, or
any ``--model``/``--dataset``) into a fresh temporary store with:

  local:     robench's default executor, in this process;
  ray xK:    a local Ray cluster with K CPUs (or K GPUs with ``--gpus``), one task per cell.

Each Ray cluster first runs an untimed warm-up grid (worker start, imports, models built once
per worker), then the timed one. Prints the wall time, throughput (cells/s), parallel efficiency
(Ray x1 time / (K x Ray xK time); target >= 0.8 at 2 workers on 2 free cores) and the Ray overhead per
task, measured on ``--tiny-cells`` one-example FGSM cells (Ray x1 minus local, per task). Also
checks that every mode stored the same example rows. It is a measurement, not a test.

Run from the repository root (about a minute with the defaults; keep other work off the cores)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/perf/scaling.py --workers 1 2
    .venv/bin/python benchmarks/perf/scaling.py --gpus --workers 1 2 4 --model resnet18-standard \\
        --dataset cifar10 --n 256 --batch-size 128          # on a machine with 4 GPUs
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

import torch
from tabulate import tabulate

from robench.cell import Cell
from robench.env import pick_device
from robench.executors import make_executor
from robench.runner import run_grid
from robench.store import Store
from robench.threat import ThreatModel


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray cluster sizes to time")
    parser.add_argument("--gpus", action="store_true", help="one GPU per task and per worker instead of one CPU")
    parser.add_argument("--model", default="tiny:size=64")
    parser.add_argument("--dataset", default="synthetic:image_size=64")
    parser.add_argument("--cells", type=int, default=8, help="cells of the timed grid (seeds 0..cells-1)")
    parser.add_argument("--n", type=int, default=64, help="examples per cell")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="PGD steps")
    parser.add_argument("--tiny-cells", type=int, default=16, help="one-example cells timing the per-task overhead")
    return parser.parse_args()


def grid(args, seeds: range, *, tiny: bool = False) -> list[Cell]:
    attack = "fgsm" if tiny else f"pgd:steps={args.steps}"
    n, batch = (1, 1) if tiny else (args.n, args.batch_size)
    return [Cell(dataset=args.dataset, model=args.model, defense="none", attack=attack,
                 threat=ThreatModel("Linf", 6 / 255), n=n, batch_size=batch, seed=seed) for seed in seeds]


def timed_run(cells: list[Cell], executor, device: torch.device, folder: Path, name: str) -> tuple[float, list]:
    path = folder / f"{name}.sqlite"
    began = time.perf_counter()
    with Store(path) as store:
        result = run_grid(cells, store, benchmark="scaling", device=device, progress=False, executor=executor)
    wall = time.perf_counter() - began
    if not result.ok:
        raise RuntimeError(f"{name}: cells failed: {result.failed}")
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT * FROM examples ORDER BY key, example_id").fetchall()
    return wall, rows


def main() -> None:
    import ray

    args = parse_args()
    torch.set_num_threads(1)
    device = pick_device("cuda" if args.gpus else "cpu")
    cells, tiny = grid(args, range(args.cells)), grid(args, range(1000, 1000 + args.tiny_cells), tiny=True)
    warm = grid(args, range(100, 100 + max(args.workers)))
    with tempfile.TemporaryDirectory(prefix="rbscale") as folder:
        folder = Path(folder)
        timed_run(warm, make_executor("local"), device, folder, "local-warm")
        local, reference = timed_run(cells, make_executor("local"), device, folder, "local")
        local_tiny, _ = timed_run(tiny, make_executor("local"), device, folder, "local-tiny")
        rows = [["local", 1, f"{local:.2f}", f"{args.cells / local:.2f}", "", ""]]
        ray_one = None
        for workers in args.workers:
            resources = {"num_gpus": workers, "num_cpus": workers} if args.gpus else {"num_cpus": workers}
            ray.init(include_dashboard=False, log_to_driver=False, _temp_dir=str(folder / f"r{workers}"), **resources)
            try:
                executor = make_executor("ray", gpus_per_cell=1 if args.gpus else 0, cpus_per_cell=1)
                timed_run(warm, executor, device, folder, f"ray{workers}-warm")
                wall, stored = timed_run(cells, executor, device, folder, f"ray{workers}")
                wall_tiny, _ = timed_run(tiny, executor, device, folder, f"ray{workers}-tiny")
            finally:
                ray.shutdown()
            same = "yes" if stored == reference else "NO"
            ray_one = wall if workers == 1 else ray_one
            efficiency = f"{ray_one / (workers * wall):.2f}" if ray_one else ""
            overhead = f"{(wall_tiny - local_tiny) / args.tiny_cells * 1000:.0f}" if workers == 1 else ""
            rows.append([f"ray x{workers}", workers, f"{wall:.2f}", f"{args.cells / wall:.2f}", efficiency, overhead,
                         same])
    print(f"{args.cells} cells of {args.n} examples, PGD-{args.steps}, {args.model} on {args.dataset}, "
          f"{'one GPU' if args.gpus else 'one CPU thread'} per task")
    print(tabulate(rows, headers=["executor", "workers", "wall s", "cells/s", "parallel efficiency",
                                  "Ray overhead ms/task", "rows = local"], tablefmt="simple", disable_numparse=True))


if __name__ == "__main__":
    main()
