"""Overhead of robench's runner over calling torchattacks directly: one PGD-10 cell, and a grid of small cells.

Times, in one process, on the same model (``resnet18-standard``), the same first CIFAR-10 test
images, the same seed and device:

  (a) direct:  ``torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=10)(x, y)`` on the first
      ``N`` images, then the model's accuracy on the output;
  (b) robench: ``run_grid([cell], Store(tmp), ...)`` for the equivalent oblivious cell, timed as a
      whole (resolving, clean pass, sanity checks, attack, verification, re-scoring, store writes)
      into a fresh temporary store, robust accuracy read back from the stored summary;
  (c) direct grid: ``--grid-cells`` such calls on the first ``--grid-n`` images, eps 1/255, 2/255, ...;
  (d) robench grid: one ``run_grid`` call for the equivalent ``--grid-cells`` cells (models, data
      and check results built once per grid are shared by its cells).

One untimed warm-up of each path comes first (imports, file caches, lazy initialisation); then
``--repeats`` measurements alternate the order. Prints the median and minimum wall times and
median CPU times, the per-cell overhead (robench minus direct, per cell), the rest of
``run_grid`` outside its batch loop, and a verdict per target: per-cell overhead of the grid
under 0.5 s on CPU, median wall ratio robench/direct of the single cell <= 1.05 with equal robust
accuracies. It is a measurement, not a test: the exit code is 0 unless something raises.
``--profile`` adds a cProfile of one robench grid call.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/overhead.py --n 64 --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import statistics
import tempfile
from pathlib import Path

from _timing import REPO_ROOT, alternate, format_values, load_warning, stats, timed, use_default_data

use_default_data()

import torch  # noqa: E402
import torchattacks  # noqa: E402
from tabulate import tabulate  # noqa: E402

from robench import registry  # noqa: E402
from robench.cell import Cell  # noqa: E402
from robench.env import pick_device  # noqa: E402
from robench.runner import run_grid  # noqa: E402
from robench.store import Store  # noqa: E402
from robench.threat import ThreatModel  # noqa: E402

MODEL = "resnet18-standard"
DATASET = "cifar10"
EPS, ALPHA, STEPS = 8 / 255, 2 / 255, 10
TARGET_RATIO = 1.05
TARGET_PER_CELL_S = 0.5  # on CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of CIFAR-10 test images (the first n)")
    parser.add_argument("--grid-cells", type=int, default=8, help="cells of the grid measurement (eps 1/255, 2/255, ...)")
    parser.add_argument("--grid-n", type=int, default=8, help="images per cell of the grid measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed measurements of each path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's random start")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--profile", action="store_true", help="also cProfile one robench grid call")
    return parser.parse_args()


def direct_setup(n: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model and the first ``n`` test images, built once outside the timings."""
    model = registry.build("models", MODEL).to(device).eval()
    examples = registry.build("datasets", DATASET).load(split="test", n=n)
    return model, examples.x, examples.y


def direct_attack(model, x, y, seed: int, device: torch.device, eps: float = EPS) -> float:
    """torchattacks PGD on the whole batch, then the model's robust accuracy on its output."""
    torch.manual_seed(seed)
    x, y = x.to(device), y.to(device)
    attack = torchattacks.PGD(model, eps=eps, alpha=ALPHA, steps=STEPS, random_start=True)
    x_adv = attack(x, y)
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) == y).float().mean().item()


def run_direct(model, x, y, seed: int, device: torch.device) -> tuple[dict, float]:
    """(a): one direct call; returns ({wall, cpu} seconds, robust accuracy)."""
    with timed(device) as took:
        robust = direct_attack(model, x, y, seed, device)
    return took, robust


def grid_eps(cells: int) -> list[float]:
    """The budgets of the grid measurement: 1/255, 2/255, ..."""
    return [k / 255 for k in range(1, cells + 1)]


def run_direct_grid(model, x, y, seed: int, device: torch.device, cells: int) -> tuple[dict, list[float]]:
    """(c): one direct call per budget; returns ({wall, cpu} seconds, robust accuracy per call)."""
    with timed(device) as took:
        robust = [direct_attack(model, x, y, seed, device, eps) for eps in grid_eps(cells)]
    return took, robust


def perf_cell(n: int, seed: int, eps: float = EPS) -> Cell:
    """The robench cell equivalent to a direct call."""
    return Cell(
        dataset=DATASET, model=MODEL, defense="none", setting="oblivious",
        attack=f"pgd:steps={STEPS},autocast=off,channels_last=false",  # torchattacks' path on every device
        threat=ThreatModel("Linf", eps), n=n, batch_size=n, seed=seed,
    )


def run_robench(cells: list[Cell], device: torch.device) -> tuple[dict, list[dict]]:
    """(b), (d): one ``run_grid`` call into a fresh store; returns ({wall, cpu} s, summary per cell, in order).

    Each summary holds ``batch_wall_s``, the cell's stored batch-loop wall time.
    """
    with tempfile.TemporaryDirectory(prefix="robench-perf-") as tmp, Store(Path(tmp) / "perf.sqlite") as store:
        with timed(device) as took:
            result = run_grid(cells, store, benchmark="perf", device=device, progress=False)
        if not result.ok:
            raise RuntimeError(f"robench cell failed: {result.failed}")
        by_eps = {}
        for key in result.computed:
            record = store.cell(key)
            by_eps[store.spec(key)["threat"]["eps"]] = {**record.summary, "batch_wall_s": record.wall_s}
    return took, [by_eps[cell.threat.eps] for cell in cells]


def measure(args, device: torch.device) -> dict:
    """Warm up every path, then alternate timed runs; returns per-path timings and accuracies."""
    model, x, y = direct_setup(max(args.n, args.grid_n), device)
    cell = perf_cell(args.n, args.seed)
    grid = [perf_cell(args.grid_n, args.seed, eps) for eps in grid_eps(args.grid_cells)]
    xs, ys = x[: args.n], y[: args.n]
    xg, yg = x[: args.grid_n], y[: args.grid_n]

    def robench_path(cells):
        took, summaries = run_robench(cells, device)
        return took, summaries

    results = alternate({
        "direct": lambda: run_direct(model, xs, ys, args.seed, device),
        "robench": lambda: robench_path([cell]),
        "direct grid": lambda: run_direct_grid(model, xg, yg, args.seed, device, args.grid_cells),
        "robench grid": lambda: robench_path(grid),
    }, args.repeats)
    runs = {path: [took for took, _ in results[path]] for path in results}
    accs = {"direct": [acc for _, acc in results["direct"]],
            "robench": [summaries[0]["robust_acc"] for _, summaries in results["robench"]],
            "direct grid": [accs for _, accs in results["direct grid"]],
            "robench grid": [[s["robust_acc"] for s in summaries] for _, summaries in results["robench grid"]]}
    loops = {path: [sum(s["batch_wall_s"] for s in summaries) for _, summaries in results[path]]
             for path in ("robench", "robench grid")}
    return {"runs": runs, "accs": accs, "loops": loops, "summary": results["robench"][-1][1][0]}


def report(args, device: torch.device, m: dict, load: tuple[float, float]) -> None:
    """Print the environment line, the table, the per-cell overheads, the ratio and a verdict per target."""
    s = {path: stats(runs) for path, runs in m["runs"].items()}
    cells = {"direct": 1, "robench": 1, "direct grid": args.grid_cells, "robench grid": args.grid_cells}
    names = {"direct": "(a) torchattacks direct", "robench": "(b) robench run_grid",
             "direct grid": f"(c) direct x{args.grid_cells}", "robench grid": f"(d) robench grid of {args.grid_cells}"}
    accs = {"direct": format_values(m["accs"]["direct"]), "robench": format_values(m["accs"]["robench"]),
            "direct grid": _grid_accs(m["accs"]["direct grid"]), "robench grid": _grid_accs(m["accs"]["robench grid"])}
    rows = [[names[p], cells[p], s[p]["wall"], s[p]["min"], s[p]["cpu"], s[p]["all"], accs[p]] for p in names]
    print(f"device: {device} | torch {torch.__version__} | torchattacks {torchattacks.__version__} | "
          f"threads {torch.get_num_threads()} | N={args.n} | grid {args.grid_cells} cells of {args.grid_n} | "
          f"seed={args.seed} | repeats={args.repeats}")
    print(f"attack: PGD-{STEPS} Linf alpha=2/255, random start, eps 8/255 (single cell), 1/255..{args.grid_cells}/255 "
          f"(grid) | model {MODEL} | {DATASET} test images")
    print(tabulate(rows, headers=["path", "cells", "median wall s", "min wall s", "median cpu s", "all wall s",
                                  "robust acc"],
                   tablefmt="simple", floatfmt=("", "", ".3f", ".3f", ".3f", "", "")))
    per_cell, per_cell_cpu = {}, {}
    for single, label in (("", "single cell"), (" grid", "grid")):
        a, b, n = s["direct" + single], s["robench" + single], cells["robench" + single]
        loop = statistics.median(m["loops"]["robench" + single])
        per_cell[label], per_cell_cpu[label] = (b["wall"] - a["wall"]) / n, (b["cpu"] - a["cpu"]) / n
        print(f"per-cell overhead, {label}: median wall {per_cell[label]:.3f} s, min wall {(b['min'] - a['min']) / n:.3f} s, "
              f"median cpu {per_cell_cpu[label]:.3f} s; outside the batch loops {(b['wall'] - loop) / n:.3f} s "
              "per cell (median)")
    summary = m["summary"]
    print(f"robench: clean acc {summary['clean_acc']:.4f}, attacked {summary['attacked']}/{summary['n']} "
          f"(direct attacks all {args.n})")
    warning = load_warning(load)
    if warning:
        print(warning)
    a, b = s["direct"], s["robench"]
    ratio, ratio_cpu = b["wall"] / a["wall"], b["cpu"] / a["cpu"]
    print(f"ratio robench/direct, single cell: median wall {ratio:.3f}, min wall {b['min'] / a['min']:.3f}, "
          f"median cpu {ratio_cpu:.3f}")
    equal = len(set(m["accs"]["direct"])) == 1 and set(m["accs"]["direct"]) == set(m["accs"]["robench"])
    print(f"robust accuracies {'EQUAL' if equal else 'DIFFER'}: direct {accs['direct']}, robench {accs['robench']}")
    overhead, overhead_cpu = per_cell["grid"], per_cell_cpu["grid"]
    target = f"target < {TARGET_PER_CELL_S} s" + ("" if device.type == "cpu" else ", set for CPU")
    print(f"{_verdict(overhead < TARGET_PER_CELL_S)}: per-cell overhead of the grid {overhead:.3f} s by median wall "
          f"({target}); by median cpu {overhead_cpu:.3f} s: {_verdict(overhead_cpu < TARGET_PER_CELL_S)}")
    print(f"{_verdict(ratio <= TARGET_RATIO and equal)}: median wall ratio robench/direct {ratio:.3f} (target <= "
          f"{TARGET_RATIO:.2f}, accuracies {'equal' if equal else 'differ'}); by median cpu {ratio_cpu:.3f}: "
          f"{_verdict(ratio_cpu <= TARGET_RATIO and equal)}")


def _verdict(met: bool) -> str:
    return "TARGET MET" if met else "TARGET MISSED"


def _grid_accs(runs: list[list[float]]) -> str:
    """A grid's robust accuracies in budget order (the last run's; each budget's values must agree across runs)."""
    stable = all(run == runs[0] for run in runs)
    return " ".join(f"{acc:.2f}" for acc in runs[-1]) + ("" if stable else " (varied between runs)")


def profile_robench(args, device: torch.device, top: int = 25) -> None:
    """cProfile one (warm) robench grid call: this repository's functions by cumulative time, all by own time."""
    grid = [perf_cell(args.grid_n, args.seed, eps) for eps in grid_eps(args.grid_cells)]
    profiler = cProfile.Profile()
    profiler.enable()
    run_robench(grid, device)
    profiler.disable()
    for key, only in (("cumulative", re.escape(str(REPO_ROOT)) + r"/(?!\.venv)"), ("tottime", "")):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(only, top)
        where = "functions in this repository" if only else "all functions"
        print(f"\n--- cProfile of one robench grid call: top {top} {where} by {key} ---")
        text = out.getvalue()
        print(text[text.find("   ncalls"):].rstrip())  # drop pstats' preamble


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    load_before = os.getloadavg()[0]
    m = measure(args, device)
    report(args, device, m, (load_before, os.getloadavg()[0]))
    if args.profile:
        profile_robench(args, device)


if __name__ == "__main__":
    main()
