"""Cost of the runner's object guard (robench.guard): fingerprints of the model around every batch.

Times, in one process, on ``resnet18-standard`` and the first ``N`` CIFAR-10 test images:

  (a) one fingerprint of the model (its 11.2M parameters and buffers), the median of
      ``--repeats`` calls;
  (b) ``run_grid`` for one oblivious ``pgd:steps=STEPS`` cell into a fresh store, with the guard
      (as robench runs) and with :meth:`robench.guard.Guard.check` and the fingerprints replaced
      by no-ops, alternating a-b / b-a after one untimed warm-up of each.

Prints the median fingerprint time, both cell wall times, the ratio with / without, the number
of fingerprints a cell takes (objects x (2 + batches)) and both robust accuracies, which must be
equal. A measurement, not a test: the exit code is 0 unless something raises.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/guard.py --n 32 --steps 10 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

from _timing import alternate, load_warning, stats, timed, use_default_data

use_default_data()

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from robench import guard, registry  # noqa: E402
from robench.cell import Cell  # noqa: E402
from robench.env import pick_device  # noqa: E402
from robench.runner import run_grid  # noqa: E402
from robench.store import Store  # noqa: E402
from robench.threat import ThreatModel  # noqa: E402

MODEL = "resnet18-standard"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="number of CIFAR-10 test images (one batch)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the cell")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each path")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser.parse_args()


def fingerprint_seconds(device: torch.device, repeats: int) -> float:
    model = registry.build("models", MODEL).to(device).eval()
    guard.fingerprint(model)
    times = []
    for _ in range(max(repeats, 3)):
        with timed(device) as took:
            guard.fingerprint(model)
        times.append(took["wall"])
    return statistics.median(times)


def cell_path(cell: Cell, device: torch.device, guarded: bool):
    def run():
        with tempfile.TemporaryDirectory(prefix="robench-guard-") as tmp, Store(Path(tmp) / "s.sqlite") as store:
            off = [] if guarded else [mock.patch.object(guard.Guard, "check", lambda self: None),
                                      mock.patch.object(guard, "fingerprint", lambda module: {})]
            for patch in off:
                patch.start()
            try:
                with timed(device) as took:
                    (key,) = run_grid([cell], store, benchmark="guard", device=device, progress=False).computed
            finally:
                for patch in off:
                    patch.stop()
            return took, store.cell(key).summary["robust_acc"]
    return run


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    load = [os.getloadavg()[0]]
    one = fingerprint_seconds(device, args.repeats)
    cell = Cell(dataset="cifar10", model=MODEL, defense="none", attack=f"pgd:steps={args.steps}",
                threat=ThreatModel("Linf", 8 / 255), setting="oblivious", n=args.n, batch_size=args.n)
    results = alternate({"guarded": cell_path(cell, device, True), "unguarded": cell_path(cell, device, False)},
                        args.repeats)
    load.append(os.getloadavg()[0])
    rows = []
    for name, runs in results.items():
        found = stats([took for took, _ in runs])
        rows.append([name, f"{found['wall']:.2f}", f"{found['min']:.2f}", f"{found['cpu']:.2f}", found["all"],
                     ", ".join(sorted({f"{acc:.4f}" for _, acc in runs}))])
    print(f"device {device}, {time.strftime('%F %T')}: one fingerprint of {MODEL} takes {one * 1000:.1f} ms; "
          f"a cell of one batch takes 3 of the model (before, after the checks, after the batch), "
          f"{3 * one:.2f} s, and 3 of the empty defense 'none'")
    print(tabulate(rows, headers=["path", "median wall s", "min wall s", "median cpu s", "all wall s", "robust acc"]))
    print(f"guarded / unguarded: median wall {float(rows[0][1]) / float(rows[1][1]):.3f}, "
          f"min wall {float(rows[0][2]) / float(rows[1][2]):.3f}, cpu {float(rows[0][3]) / float(rows[1][3]):.3f}")
    warning = load_warning(tuple(load))
    if warning:
        print(warning)


if __name__ == "__main__":
    main()
