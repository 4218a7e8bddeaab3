"""DIR's evaluation cost: white-box PGD-20 through target(DIR(x)) in images per second, float32 next to bf16.

DIR (Zhou et al., ICML 2023) is stochastic (fresh complementary masks on every call), so the
white-box attack differentiates the EOT view (``--eot`` mask draws per step, batched into one
call). For a batch of ``--batch`` CIFAR-10 test images (``$ROBENCH_DATA``; random images when
absent) the script times, on each device:

* DIR's forward alone (no grad) and the pipeline's forward + backward to the input;
* robench ``pgd`` (20 steps, 2/255, eps 8/255) through the adaptive view, float32 and with
  ``autocast=bf16``, and ``early_stop`` on top of bf16,

and prints images per second, the bf16/float32 throughput ratio and each path's robust accuracy
(scored through the real pipeline with one fresh mask draw), so a speed-up that changes the
answer is visible. Without ``--weights`` DIR is untrained: the timing is the same, the accuracy
meaningless. It is a measurement, not a test.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/dir.py --batch 64 --repeats 1
    # options: --device all|cpu|cuda, --batch, --eot, --repeats, --threads, --weights PATH, --model SPEC
"""

from __future__ import annotations

import argparse
import os

import torch
from tabulate import tabulate

from _timing import alternate, load_warning, stats, timed, use_default_data

use_default_data()

from robench import registry  # noqa: E402
from robench.target import Pipeline, adaptive_view  # noqa: E402
from robench.threat import ThreatModel  # noqa: E402

THREAT = ThreatModel("Linf", 8 / 255)
ATTACKS = {
    "pgd-20 float32": "pgd:steps=20,step_size=2/255,autocast=off,channels_last=false",
    "pgd-20 bf16": "pgd:steps=20,step_size=2/255,autocast=bf16,channels_last=false",
    "pgd-20 bf16 early_stop": "pgd:steps=20,step_size=2/255,autocast=bf16,channels_last=false,early_stop=true",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=256, help="images per attack call")
    parser.add_argument("--eot", type=int, default=10, help="mask draws averaged per attack step (robench's default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--weights", default=None, help="a trained DIR state dict (robench train dir)")
    parser.add_argument("--model", default="resnet18-standard", help="target classifier spec")
    return parser.parse_args()


def images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` CIFAR-10 test images and labels."""
    data = registry.build("datasets", "cifar10").load(n=n)
    return data.x, data.y


def measure(device: torch.device, args) -> list[list]:
    dir_spec = "dir" if args.weights is None else f"dir:weights={args.weights}"
    defense = registry.build("defenses", dir_spec).to(device).eval()
    model = registry.build("models", args.model).to(device).eval()
    pipeline = Pipeline(model, defense).eval()
    view = adaptive_view(model, defense, eot_draws=args.eot)
    x, y = images(args.batch)
    x, y = x.to(device), y.to(device)

    def forward_only():
        with timed(device) as took, torch.no_grad():
            defense(x)
        return took, None

    def forward_backward():
        probe = x.clone().requires_grad_(True)
        with timed(device) as took:
            torch.autograd.grad(torch.nn.functional.cross_entropy(pipeline(probe), y), probe)
        return took, None

    def attack_path(spec):
        attack = registry.build("attacks", spec)

        def run():
            with timed(device) as took:
                x_adv = attack(view, x, y, THREAT, seed=0)
            with torch.no_grad():
                accuracy = (pipeline(x_adv).argmax(1) == y).float().mean().item()
            return took, accuracy

        return run

    paths = {"dir forward": forward_only, "pipeline fwd+bwd": forward_backward}
    paths.update({name: attack_path(spec) for name, spec in ATTACKS.items()})
    results = alternate(paths, args.repeats)
    base = stats([t for t, _ in results["pgd-20 float32"]])["wall"]
    rows = []
    for name, runs in results.items():
        timing = stats([t for t, _ in runs])
        accuracies = [a for _, a in runs if a is not None]
        rows.append([
            str(device), name, f"{args.batch / timing['wall']:.1f}", f"{timing['wall']:.2f}",
            f"{base / timing['wall']:.2f}" if name.startswith("pgd") else "",
            ", ".join(f"{a:.4f}" for a in sorted(set(accuracies))), timing["all"],
        ])
    return rows


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    before = os.getloadavg()[0]
    rows = [row for device in devices for row in measure(device, args)]
    headers = ["device", "path", "images/s", "wall s (median)", "throughput vs float32", "robust acc", "all walls"]
    print(f"batch {args.batch}, EOT {args.eot}, model {args.model}, DIR weights {args.weights or 'untrained'}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    warning = load_warning((before, os.getloadavg()[0]))
    if warning:
        print(warning)


if __name__ == "__main__":
    main()
