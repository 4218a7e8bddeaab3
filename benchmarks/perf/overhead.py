"""Overhead of robench's runner over calling torchattacks directly, for one PGD-10 cell.

Times, in one process, on the same model (``resnet18-standard``), the same first ``N`` CIFAR-10
test images, the same seed and device:

  (a) direct:  ``torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=10)(x, y)`` on the batch,
      then the model's accuracy on the output;
  (b) robench: ``run_grid([cell], Store(tmp), ...)`` for the equivalent oblivious cell, timed as a
      whole (resolving, clean pass, sanity checks, attack, verification, re-scoring, store writes)
      into a fresh temporary store, robust accuracy read back from the stored summary.

One untimed warm-up of each path comes first (imports, file caches, lazy initialisation); then
``--repeats`` measurements alternate the order a-b / b-a. Prints the median wall times, the ratio
robench / direct (target <= 1.10) and both robust accuracies. It is a measurement, not a test:
the exit code is 0 unless something raises. ``--profile`` adds a cProfile of one robench call.

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
TARGET_RATIO = 1.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="number of CIFAR-10 test images (the first n)")
    parser.add_argument("--repeats", type=int, default=3, help="timed measurements of each path")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's random start")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--profile", action="store_true", help="also cProfile one robench call")
    return parser.parse_args()


def direct_setup(n: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model and the first ``n`` test images, built once outside the timings."""
    model = registry.build("models", MODEL).to(device).eval()
    examples = registry.build("datasets", DATASET).load(split="test", n=n)
    return model, examples.x, examples.y


def run_direct(model, x, y, seed: int, device: torch.device) -> tuple[dict, float]:
    """(a): torchattacks PGD on the whole batch; returns ({wall, cpu} seconds, robust accuracy)."""
    with timed(device) as took:
        torch.manual_seed(seed)
        x, y = x.to(device), y.to(device)
        attack = torchattacks.PGD(model, eps=EPS, alpha=ALPHA, steps=STEPS, random_start=True)
        x_adv = attack(x, y)
        with torch.no_grad():
            robust = (model(x_adv).argmax(dim=1) == y).float().mean().item()
    return took, robust


def perf_cell(n: int, seed: int) -> Cell:
    """The robench cell equivalent to the direct call."""
    return Cell(
        dataset=DATASET, model=MODEL, defense="none", setting="oblivious",
        attack=f"pgd:steps={STEPS},autocast=off,channels_last=false",  # torchattacks' path on every device
        threat=ThreatModel("Linf", EPS), n=n, batch_size=n, seed=seed,
    )


def run_robench(cell: Cell, device: torch.device) -> tuple[dict, float, dict]:
    """(b): the whole ``run_grid`` call into a fresh store; returns ({wall, cpu} s, robust acc, summary)."""
    with tempfile.TemporaryDirectory(prefix="robench-perf-") as tmp, Store(Path(tmp) / "perf.sqlite") as store:
        with timed(device) as took:
            result = run_grid([cell], store, benchmark="perf", device=device, progress=False)
        if not result.ok:
            raise RuntimeError(f"robench cell failed: {result.failed}")
        record = store.cell(result.computed[0])
        summary = {**record.summary, "batch_wall_s": record.wall_s}
    return took, summary["robust_acc"], summary


def measure(args, device: torch.device) -> dict:
    """Warm up both paths, then alternate timed runs; returns per-path timings and accuracies."""
    model, x, y = direct_setup(args.n, device)
    cell = perf_cell(args.n, args.seed)

    def robench_path():
        took, acc, summary = run_robench(cell, device)
        return took, (acc, summary)

    results = alternate({"direct": lambda: run_direct(model, x, y, args.seed, device), "robench": robench_path},
                        args.repeats)
    runs = {path: [took for took, _ in results[path]] for path in results}
    accs = {"direct": {acc for _, acc in results["direct"]}, "robench": {acc for _, (acc, _) in results["robench"]}}
    summaries = [summary for _, (_, summary) in results["robench"]]
    return {"runs": runs, "accs": accs, "batch_walls": [s["batch_wall_s"] for s in summaries],
            "summary": summaries[-1]}


def report(args, device: torch.device, m: dict, load: tuple[float, float]) -> None:
    """Print the environment line, the table, the ratio and the TARGET MET / MISSED verdict."""
    a, b = stats(m["runs"]["direct"]), stats(m["runs"]["robench"])
    rows = [[name, s["wall"], s["min"], s["cpu"], s["all"], format_values(m["accs"][key])]
            for name, key, s in (("(a) torchattacks direct", "direct", a), ("(b) robench run_grid", "robench", b))]
    rows.append(["ratio b/a", b["wall"] / a["wall"], b["min"] / a["min"], b["cpu"] / a["cpu"], "", ""])
    print(f"device: {device} | torch {torch.__version__} | torchattacks {torchattacks.__version__} | "
          f"threads {torch.get_num_threads()} | N={args.n} | seed={args.seed} | repeats={args.repeats}")
    print(f"attack: PGD-{STEPS} Linf eps=8/255 alpha=2/255, random start | model {MODEL} | {DATASET} test[:{args.n}]")
    print(tabulate(rows, headers=["path", "median wall s", "min wall s", "median cpu s", "all wall s", "robust acc"],
                   tablefmt="simple", floatfmt=("", ".3f", ".3f", ".3f", "", ".4f")))
    s, batch = m["summary"], statistics.median(m["batch_walls"])
    print(f"robench: clean acc {s['clean_acc']:.4f}, attacked {s['attacked']}/{s['n']} (direct attacks all {args.n}); "
          f"median batch loop (stored wall_s) {batch:.3f} s, rest of run_grid {b['wall'] - batch:.3f} s")
    warning = load_warning(load)
    if warning:
        print(warning)
    ratio = b["wall"] / a["wall"]
    equal = len(m["accs"]["direct"]) == 1 and m["accs"]["direct"] == m["accs"]["robench"]
    print(f"robust accuracies {'EQUAL' if equal else 'DIFFER'}: direct {format_values(m['accs']['direct'])}, "
          f"robench {format_values(m['accs']['robench'])}")
    verdict = "TARGET MET" if ratio <= TARGET_RATIO and equal else "TARGET MISSED"
    print(f"{verdict}: median wall ratio robench/direct {ratio:.3f} (target <= {TARGET_RATIO:.2f}, "
          f"accuracies {'equal' if equal else 'differ'})")


def profile_robench(args, device: torch.device, top: int = 25) -> None:
    """cProfile one (warm) robench call: this repository's functions by cumulative time, all by own time."""
    cell = perf_cell(args.n, args.seed)
    profiler = cProfile.Profile()
    profiler.enable()
    run_robench(cell, device)
    profiler.disable()
    for key, only in (("cumulative", re.escape(str(REPO_ROOT)) + r"/(?!\.venv)"), ("tottime", "")):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(only, top)
        where = "functions in this repository" if only else "all functions"
        print(f"\n--- cProfile of one robench call: top {top} {where} by {key} ---")
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
