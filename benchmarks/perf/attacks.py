"""Wall time of robench's attacks against the libraries they wrap, side by side in one process.

On the same model, the same first ``N`` CIFAR-10 test images, the same seed and device, it times
only the attack calls (robust accuracy is computed afterwards, untimed, in float32):

  (a) ``torchattacks.PGD(model, eps=8/255, alpha=2/255, steps=20)(x, y)`` against robench's
      ``pgd:steps=20`` built with ``registry.build("attacks", ...)`` and called through its public
      call, with the default options (the torchattacks path), with ``early_stop=true``, with
      ``early_stop=true,autocast=bf16`` and with ``channels_last=true``; on ``resnet18-standard``
      (which PGD breaks entirely), and again on the robust ``convex-cifar-small``, where the
      accuracy effect of early stop and bf16 can show;
  (b) ``pyautoattack.AutoAttack(version="standard").run_standard_evaluation`` against robench's
      ``autoattack`` (``engine=robench``: its own APGD and FAB-T, where broken examples leave the
      batch and target classes run side by side, and its own Linf Square), on
      ``resnet18-standard`` (APGD-CE breaks every image, so only it runs; target ratio >= 5) and
      on the robust ``convex-cifar-small`` (``--robust-n`` images, default 32), where all four
      components run (target >= 1.2);
  (c) ``version="rand"`` (APGD-CE and APGD-DLR with EOT over 20 draws) against
      ``autoattack:variant=rand``, on ``--rand-model`` (default ``resnet20-akamaster``) behind the
      stochastic ``gaussian-noise`` defense (``--rand-n`` images, default 16), with robench's
      default for rand (every example kept for all iterations) and with ``early_stop=true``; a
      stochastic pipeline's draws differ between runs, so equal accuracy is not required there.

Each path gets one untimed warm-up (unless ``--no-warmup``); then ``--repeats`` measurements
alternate the order forwards and backwards. Prints a table of median wall times, the throughput
ratio direct/robench (target >= 1.0 unless stated above), the robust accuracy of each path and
whether it equals the direct call's, then one verdict per robench path. The default ``pgd`` path
runs the same computation as the direct call, so it can only tie it (as does
``autoattack:engine=official``, not timed here); ``early_stop`` and the robench AutoAttack engine
must give an equal accuracy (except behind the stochastic defense); bf16 and
channels_last are speed options whose accuracy effect is reported. A measurement, not a test:
the exit code is 0 unless something raises.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/attacks.py --n 64 --repeats 3

``--sections autoattack autoattack-robust`` times only the AutoAttack comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import platform
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

from _timing import alternate, format_values, load_warning, stats, timed, use_default_data

use_default_data()

import pyautoattack  # noqa: E402
import torch  # noqa: E402
import torchattacks  # noqa: E402
from tabulate import tabulate  # noqa: E402

import robench  # noqa: E402
from robench import registry  # noqa: E402
from robench.env import pick_device  # noqa: E402
from robench.target import Pipeline  # noqa: E402
from robench.threat import ThreatModel  # noqa: E402

DATASET = "cifar10"
STANDARD, ROBUST = "resnet18-standard", "convex-cifar-small"
THREAT = ThreatModel("Linf", 8 / 255)
ALPHA, STEPS = 2 / 255, 20
TARGET_RATIO = 1.0
SECTIONS = ("pgd", "pgd-robust", "autoattack", "autoattack-robust", "autoattack-rand")
# throughput target of the robench paths, per section (DESIGN section 8 and the AutoAttack early-stop goal)
TARGETS = {"autoattack": 5.0, "autoattack-robust": 1.2}
RAND_DEFENSE = "gaussian-noise"
# robench PGD paths: label -> (spec, must the robust accuracy equal the direct call's?)
# Device options are written out: their ``auto`` default is bf16 and channels_last on CUDA.
FLOAT32 = "autocast=off,channels_last=false"
PGD_PATHS = {
    "robench pgd": (f"pgd:steps={STEPS},{FLOAT32}", True),
    "robench pgd early_stop": (f"pgd:steps={STEPS},early_stop=true,{FLOAT32}", True),
    "robench pgd early_stop+bf16": (f"pgd:steps={STEPS},early_stop=true,autocast=bf16,channels_last=false", False),
    "robench pgd channels_last": (f"pgd:steps={STEPS},autocast=off,channels_last=true", False),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="CIFAR-10 test images (the first n) for PGD")
    parser.add_argument("--aa-n", type=int, default=None, help="images for AutoAttack on resnet18 (default: --n)")
    parser.add_argument("--robust-n", type=int, default=32, help="images for PGD and AutoAttack on convex-cifar-small")
    parser.add_argument("--rand-n", type=int, default=16, help="images for AutoAttack rand behind gaussian-noise")
    parser.add_argument("--rand-model", default="resnet20-akamaster", help="classifier behind gaussian-noise for rand")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up of each path")
    parser.add_argument("--repeats", type=int, default=3, help="timed measurements of each path")
    parser.add_argument("--seed", type=int, default=0, help="seed of every attack's randomness")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--no-bf16", action="store_true",
                        help="leave out the bf16 path (very slow on CPUs without native bf16)")
    return parser.parse_args()


@dataclass
class Row:
    """One timed path: the direct call it is compared with, and its (took, x_adv) results."""

    section: str
    label: str
    model: str
    n: int
    direct: str | None  # label of the direct row this one is compared with; None for a direct row
    must_equal: bool
    target: float
    results: list


class _Collect(logging.Handler):
    """Counts log messages instead of printing them (AutoAttack repeats its checks on every run)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: Counter = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[record.getMessage()] += 1


def robust_accuracy(model: torch.nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x_adv).argmax(dim=1) == y).float().mean().item()


def direct_pgd(model, x, y, seed: int, device: torch.device):
    """torchattacks PGD-20 on the whole batch, seeded as robench seeds."""
    with timed(device) as took:
        torch.manual_seed(seed)
        x_adv = torchattacks.PGD(model, eps=THREAT.eps, alpha=ALPHA, steps=STEPS, random_start=True)(x, y)
    return took, x_adv


def direct_autoattack(model, x, y, seed: int, device: torch.device, version: str = "standard"):
    """The official AutoAttack evaluation (``version``), seeded as robench's adapter seeds it."""
    with contextlib.redirect_stdout(io.StringIO()), timed(device) as took:
        torch.manual_seed(seed)
        aa_seed = int(torch.randint(0, 2**31 - 1, ()).item())
        adversary = pyautoattack.AutoAttack(model, norm=THREAT.norm, eps=THREAT.eps, version=version,
                                            seed=aa_seed, device=device)
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=len(x))
    return took, x_adv


def robench_attack(spec: str, model, x, y, seed: int, device: torch.device):
    """A robench attack built from its spec and called through the public call (building included)."""
    with contextlib.redirect_stdout(io.StringIO()), timed(device) as took:
        x_adv = registry.build("attacks", spec)(model, x, y, THREAT, seed=seed)
    return took, x_adv


def measure(args, device: torch.device) -> tuple[list[Row], dict]:
    """Time every section asked for; returns its rows and, per model, the model and its images."""
    n_aa = args.aa_n or args.n
    sizes = {"pgd": (STANDARD, args.n), "pgd-robust": (ROBUST, args.robust_n), "autoattack": (STANDARD, n_aa),
             "autoattack-robust": (ROBUST, args.robust_n), "autoattack-rand": (args.rand_model, args.rand_n)}
    wanted = [s for s in SECTIONS if s in args.sections]
    examples = registry.build("datasets", DATASET).load(split="test", n=max(sizes[s][1] for s in wanted))
    models = {name: registry.build("models", name).to(device).eval() for name in {sizes[s][0] for s in wanted}}
    rows, data = [], {}
    for section in wanted:
        name, n = sizes[section]
        model, x, y = models[name], examples.x[:n].to(device), examples.y[:n].to(device)
        if section == "autoattack-rand":
            model = Pipeline(model, registry.build("defenses", RAND_DEFENSE)).to(device).eval()
            name = f"{name} behind {RAND_DEFENSE}"
        data[section] = (model, x, y)
        seed = args.seed
        paths: dict[str, tuple[Callable, bool]] = {}
        if section.startswith("pgd"):
            direct = f"torchattacks PGD-{STEPS}"
            paths[direct] = (lambda m=model, a=x, b=y: direct_pgd(m, a, b, seed, device), False)
            for label, (spec, must_equal) in PGD_PATHS.items():
                if args.no_bf16 and "bf16" in spec:
                    continue
                paths[label] = (lambda s=spec, m=model, a=x, b=y: robench_attack(s, m, a, b, seed, device), must_equal)
        else:
            version = "rand" if section == "autoattack-rand" else "standard"
            spec, deterministic = f"autoattack:variant={version}", version == "standard"
            direct = f"pyautoattack {version}"
            paths[direct] = (lambda m=model, a=x, b=y: direct_autoattack(m, a, b, seed, device, version), False)
            paths["robench autoattack"] = (
                lambda m=model, a=x, b=y: robench_attack(spec, m, a, b, seed, device), deterministic)
            if not deterministic:  # rand keeps every example by default; early stop is its speed option
                paths["robench autoattack early_stop=true"] = (
                    lambda m=model, a=x, b=y: robench_attack(f"{spec},early_stop=true", m, a, b, seed, device), False)
        print(f"timing {section}: {', '.join(paths)} on {name}, N={n} ...", flush=True)
        results = alternate({label: fn for label, (fn, _) in paths.items()}, args.repeats, warmup=not args.no_warmup)
        for label, (_, must_equal) in paths.items():
            target = TARGETS.get(section, TARGET_RATIO)
            rows.append(Row(section, label, name, n, None if label == direct else direct, must_equal, target,
                            results[label]))
    return rows, data


def report(args, device: torch.device, rows: list[Row], data: dict, load: tuple[float, float]) -> None:
    """Print the environment, the table and one verdict per robench path."""
    by_label = {(r.section, r.label): r for r in rows}
    table, verdicts = [], []
    for row in rows:
        model, x, y = data[row.section]
        s = stats([took for took, _ in row.results])
        accs = [robust_accuracy(model, x_adv, y) for _, x_adv in row.results]
        for _, x_adv in row.results:
            THREAT.check(x_adv, x)
        if row.direct is None:
            table.append([row.label, f"{row.model} N={row.n}", s["wall"], s["min"], s["cpu"], "(reference)",
                          format_values(accs), "", ""])
            continue
        ref = by_label[(row.section, row.direct)]
        r = stats([took for took, _ in ref.results])
        ref_accs = [robust_accuracy(model, x_adv, y) for _, x_adv in ref.results]
        ratio = r["wall"] / s["wall"]
        equal = len(set(ref_accs)) == 1 and set(accs) == set(ref_accs)
        delta = max(abs(a - b) for a in accs for b in ref_accs)
        same = max((a - b).abs().max().item() for (_, a), (_, b) in zip(row.results, ref.results))
        table.append([row.label, f"{row.model} N={row.n}", s["wall"], s["min"], s["cpu"], f"{ratio:.3f}",
                      format_values(accs), "yes" if equal else f"no (max |Δ| {delta:.4f})", f"{same:.2g}"])
        met = ratio >= row.target and (equal or not row.must_equal)
        needs = "equal accuracy" if row.must_equal else "accuracy effect reported"
        verdicts.append(f"{'TARGET MET' if met else 'TARGET MISSED'}: {row.label} ({row.section}) "
                        f"throughput ratio {ratio:.3f} (target >= {row.target:.1f}; min-wall ratio "
                        f"{r['min'] / s['min']:.3f}, cpu ratio {r['cpu'] / s['cpu']:.3f}), {needs}: "
                        f"{'equal' if equal else f'differs by {delta:.4f}'}")
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        bf16 = "native bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no native bf16"
        where = f"cpu ({platform.machine()}, {torch.backends.cpu.get_cpu_capability()}, {bf16})"
    print(f"\ndevice: {where} | robench {robench.__version__} | torch {torch.__version__} | torchattacks "
          f"{torchattacks.__version__} | pyautoattack {metadata.version('pyautoattack')} | threads "
          f"{torch.get_num_threads()} | seed={args.seed} | repeats={args.repeats} | load {load[0]:.1f} -> {load[1]:.1f}")
    print(f"threat: {THREAT}; PGD-{STEPS} step 2/255 with random start; {DATASET} test images from index 0")
    print(tabulate(table, headers=["path", "model", "median wall s", "min wall s", "median cpu s",
                                   "ratio direct/robench", "robust acc", "equal to direct?", "max |Δx_adv|"],
                   tablefmt="simple", floatfmt=("", "", ".2f", ".2f", ".2f")))
    warning = load_warning(load)
    if warning:
        print(warning + "; with OpenMP threads oversubscribed, --threads 1 is often faster and steadier")
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported() and not args.no_bf16:
        print("NOTE: this CPU has no native bf16: autocast=bf16 runs emulated kernels, far slower than float32 here")
    for line in verdicts:
        print(line)


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    logger, collected = logging.getLogger("auto-attack"), _Collect()
    logger.setLevel(logging.WARNING)
    logger.addHandler(collected)
    logger.propagate = False
    load_before = os.getloadavg()[0]
    rows, data = measure(args, device)
    report(args, device, rows, data, (load_before, os.getloadavg()[0]))
    for message, count in collected.seen.items():
        print(f"AutoAttack logged {count}x (direct and robench runs together): {message}")


if __name__ == "__main__":
    main()
