"""Throughput of every registered defense next to the classifier's, to see which defenses dominate an attack's cost.

On each device, for a batch of ``--batch`` (256) CIFAR-sized 32x32 images (the first CIFAR-10
test images from ``$ROBENCH_DATA``, random images when the file is absent), times:

* ``resnet18-standard`` forward (no grad), and forward + backward to the input (what one
  gradient step of an attack pays, ``torch.autograd.grad`` w.r.t. the images as torchattacks does);
* every registered defense forward (no grad), with the example spec where the defaults need
  arguments (``compose``) plus the CIFAR configuration of ``random-resize-pad`` next to its
  ImageNet defaults;
* every defense's gradient view (itself, or its BPDA view) forward + backward to the input,
  which is what an adaptive attack runs on top of the classifier at every step.

Each timing is one untimed warm-up then the median of ``--repeats`` runs (CUDA synchronised).
The table gives images per second, milliseconds per batch and two ratios:
``defense/forward`` (defense time / classifier forward time: how many classifier forwards one
purification costs) and ``view/fwd+bwd`` (gradient-view forward+backward time / classifier
forward+backward time: the extra cost per attack step). It is a measurement, not a test.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/defenses.py
    # options: --device all|cpu|cuda, --batch 256, --repeats 3, --threads N, --defense SPEC (repeatable)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("ROBENCH_DATA", str(REPO_ROOT.parent / "shared" / "data"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tabulate import tabulate  # noqa: E402

from robench import registry  # noqa: E402
from robench.defense import gradient_view  # noqa: E402

MODEL = "resnet18-standard"
# Defenses whose defaults cannot be built, or whose defaults are not the CIFAR-10 setting.
EXAMPLE_SPECS = {"compose": ['compose:defenses=["gaussian-noise:sigma=0.05","jpeg"]']}
EXTRA_SPECS = {"random-resize-pad": ["random-resize-pad:min_size=32,pad_to=36"]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"],
                        help="all: CPU, and CUDA too when torch sees a GPU")
    parser.add_argument("--batch", type=int, default=256, help="images per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--defense", action="append", default=None, metavar="SPEC",
                        help="time only these defense specs (repeatable); default: every registered defense")
    return parser.parse_args()


def default_specs() -> list[str]:
    """Every registered defense (its example spec where needed) plus the extra configurations."""
    specs = []
    for name in registry.names("defenses"):
        specs += EXAMPLE_SPECS.get(name, [name]) + EXTRA_SPECS.get(name, [])
    return specs


def load_images(n: int) -> tuple[torch.Tensor, str]:
    """The first ``n`` CIFAR-10 test images ``(n, 3, 32, 32)`` in [0, 1], or random ones when absent."""
    path = Path(os.environ["ROBENCH_DATA"]) / "cifar10_test_head.npz"
    if path.is_file():
        x = np.load(path)["x"]
        if len(x) >= n:
            return torch.from_numpy(x[:n]).permute(0, 3, 1, 2).float().div(255).contiguous(), f"CIFAR-10 test[:{n}]"
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=g), f"random uniform ({path} absent or short)"


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    """One untimed warm-up call of ``fn``, then the median wall time of ``repeats`` calls."""

    def once() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def model_timings(x: torch.Tensor, y: torch.Tensor, device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds per batch of the classifier's forward and forward + input-gradient backward."""
    model = registry.build("models", MODEL).to(device).eval()

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        images = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(images), y)
        torch.autograd.grad(loss, images)

    return {"forward": median_seconds(forward, device, repeats),
            "fwd+bwd": median_seconds(forward_backward, device, repeats)}


def defense_timings(spec: str, x: torch.Tensor, device: torch.device, repeats: int) -> dict:
    """Seconds per batch of the defense (no grad) and of its gradient view forward + backward."""
    defense = registry.build("defenses", spec).to(device).eval()
    view = gradient_view(defense)
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(device)

    def forward():
        with torch.no_grad():
            defense(x)

    def view_forward_backward():
        images = x.clone().requires_grad_(True)
        torch.autograd.grad(view(images), images, grad_outputs=weights)

    return {"defense": defense, "forward": median_seconds(forward, device, repeats),
            "view": median_seconds(view_forward_backward, device, repeats)}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def run_device(device: torch.device, specs: list[str], args, images: torch.Tensor) -> None:
    """Time the classifier and every defense on one device and print the table."""
    x = images.to(device)
    y = torch.zeros(len(x), dtype=torch.long, device=device)
    n = len(x)
    model = model_timings(x, y, device, args.repeats)
    rows = [
        [f"{MODEL} forward", "", "", n / model["forward"], 1000 * model["forward"], 1.0, "", ""],
        [f"{MODEL} fwd+bwd (input grad)", "", "", n / model["fwd+bwd"], 1000 * model["fwd+bwd"],
         model["fwd+bwd"] / model["forward"], "", ""],
    ]
    for spec in specs:
        try:
            t = defense_timings(spec, x, device, args.repeats)
        except Exception as err:  # noqa: BLE001 - one broken defense must not hide the others
            rows.append([spec, "", "", "", "", "", "", f"ERROR {type(err).__name__}: {err}"[:80]])
            continue
        d = t["defense"]
        rows.append([
            spec, "yes" if d.stochastic else "no", "yes" if d.differentiable else "BPDA",
            n / t["forward"], 1000 * t["forward"], t["forward"] / model["forward"],
            n / t["view"], t["view"] / model["fwd+bwd"],
        ])
    print(f"\n== {describe(device)} | batch {n} x 3x32x32 ==")
    print(tabulate(
        rows,
        headers=["", "stochastic", "gradient", "img/s", "ms/batch", "defense/forward", "view fwd+bwd img/s",
                 "view/fwd+bwd"],
        tablefmt="simple", floatfmt=("", "", "", ",.0f", ",.1f", ".3f", ",.0f", ".3f"),
    ))


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device == "cuda" or (args.device == "all" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
        devices.append(torch.device("cuda"))
    specs = args.defense or default_specs()
    images, source = load_images(args.batch)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__} | threads {torch.get_num_threads()} | cores {cores} | "
          f"devices {', '.join(describe(d) for d in devices)} | images: {source} | repeats {args.repeats} (median, "
          "after 1 warm-up)")
    for device in devices:
        run_device(device, specs, args, images)
    load_after = os.getloadavg()[0]
    print(f"\nload average (1 min): {load_before:.2f} before, {load_after:.2f} after, on {cores} cores")
    if max(load_before, load_after) > cores:
        advice = " or with --threads 1" if torch.get_num_threads() > 1 else ""
        print(f"WARNING: load average above {cores} cores: other processes compete for the CPU, so CPU timings "
              f"are noisy and multi-threaded kernels can slow down sharply; rerun on a quiet machine{advice} "
              "to compare defenses")
    print("defense/forward: defense time / classifier forward time (no grad). view/fwd+bwd: the defense's "
          "gradient view (itself, or BPDA) forward+backward time / classifier forward+backward time.")


if __name__ == "__main__":
    main()
