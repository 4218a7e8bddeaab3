"""Everything robench measures on a GPU, in one run: one JSON and one Markdown summary.

Runs, on the first CUDA device, each step with its own time limit, and records its output and
wall time: ``pytest -m gpu``; ``attacks.py`` (PGD-20 and AutoAttack standard, robench against
torchattacks / pyautoattack, on ``resnet18-standard`` with ``--attack-n`` images); ``purifiers.py``
(the learned purifiers' throughput); one epoch of adversarial training (``robench train at
--model resnet18``, PGD-10 inner attack) and one epoch of DIR training (``robench train
dir:pretrain_epochs=0``, Algorithm 1, in front of ``resnet18-standard``), each at the paper's
batch size on the first ``--train-n`` offline CIFAR-10 training images, with images per second,
peak memory (``torch.cuda.max_memory_allocated``) and model FLOP utilisation: the FLOPs of one
training batch, counted with ``torch.utils.flop_counter``'s table in a separate untimed run,
times the images per second, over the device's peak (``--peak-tflops``; known devices' dense
bf16 peak otherwise, since training runs under bf16 autocast on CUDA). Exits at once, with
status 2, when torch sees no CUDA device. Called by ``gpu.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import REPO_ROOT, use_default_data

use_default_data()

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from robench.cli import main as robench_cli  # noqa: E402

HERE = Path(__file__).resolve().parent
# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s), by a substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
TRAININGS = {
    # name -> robench train arguments (the paper's batch size: 128 for AT and for DIR, DIR Sec. 4.1)
    "at": ["at", "--model", "resnet18", "--dataset", "cifar10", "--batch-size", "128"],
    "dir": ["dir:pretrain_epochs=0", "--model", "dir", "--target", "resnet18-standard", "--dataset", "cifar10",
            "--batch-size", "128"],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "perf", help="folder of gpu.json / gpu.md")
    parser.add_argument("--attack-n", type=int, default=1000, help="CIFAR-10 test images for the attack ratios")
    parser.add_argument("--train-n", type=int, default=5000, help="offline CIFAR-10 training images per epoch")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak (default: known devices)")
    return parser.parse_args()


def run_step(name: str, command: list[str], limit_s: int) -> dict:
    """Run ``command`` from the repository root with a time limit; its exit code, wall time and output."""
    began = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=limit_s)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:
        code, output = "timeout", f"stopped after {limit_s} s\n{stopped.stdout or ''}"
    print(f"{name}: exit {code} in {time.perf_counter() - began:.0f} s", flush=True)
    return {"command": " ".join(command), "exit": code, "seconds": round(time.perf_counter() - began, 1),
            "output": output[-20000:]}


class CountFlops(TorchDispatchMode):
    """Sums the FLOPs of every operator torch's flop counter knows (matmul, convolution, attention...).

    torch's own ``FlopCounterMode`` also tracks modules with backward hooks, which fail inside the
    ``torch.autograd.grad`` calls of an attack; this counts the same table without them.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = flop_registry.get(func._overloadpacket)
        if counter is not None:
            self.total += counter(*args, **kwargs, out_val=out)
        return out


def train_epoch(name: str, n: int, peak_tflops: float | None, workdir: Path) -> dict:
    """One epoch of ``robench train`` (no evaluation): images/s, peak memory and FLOP utilisation."""
    arguments = TRAININGS[name]
    batch = int(arguments[arguments.index("--batch-size") + 1])
    common = ["--epochs", "1", "--eval-n", "0", "--device", "cuda", "--no-progress"]
    with CountFlops() as counter:  # one batch, untimed: FLOPs per training image
        robench_cli(["train", *arguments, *common, "-n", str(batch), "--output", str(workdir / f"{name}-count.pt")],
                    standalone_mode=False)
    flops_per_image = counter.total / batch
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    output = workdir / f"{name}.pt"
    robench_cli(["train", *arguments, *common, "-n", str(n), "--output", str(output)], standalone_mode=False)
    torch.cuda.synchronize()
    wall = time.perf_counter() - began
    seconds = json.loads(output.with_suffix(".json").read_text())["training_s"]  # the epoch alone (model card)
    images_per_s = n / seconds
    achieved = flops_per_image * images_per_s / 1e12
    return {"command": "robench train " + " ".join([*arguments, *common, "-n", str(n)]), "images": n,
            "epoch_s": seconds, "wall_s": round(wall, 2), "images_per_s": round(images_per_s, 1),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "tflops_per_image_step": flops_per_image / 1e12, "achieved_tflops": round(achieved, 2),
            "mfu": None if peak_tflops is None else round(achieved / peak_tflops, 4)}


def peak_of(device_name: str, given: float | None) -> float | None:
    if given is not None:
        return given
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device_name), None)


def markdown(summary: dict) -> str:
    """The summary as Markdown: the environment, one table of the training epochs, each step's output."""
    lines = [f"# GPU measurements on {summary['device']}", "",
             f"torch {summary['torch']}, CUDA {summary['cuda']}, peak {summary['peak_tflops']} TFLOP/s (bf16 dense), "
             f"{summary['seconds']:.0f} s in all. Command: `benchmarks/perf/gpu.sh`.", "",
             "| training epoch | images | images/s | peak memory GiB | achieved TFLOP/s | MFU |",
             "|---|---|---|---|---|---|"]
    for name, row in summary["training"].items():
        if "error" in row:
            lines.append(f"| {name} | error: {row['error']} | | | | |")
            continue
        lines.append(f"| {name} | {row['images']} | {row['images_per_s']} | {row['peak_memory_gib']} | "
                     f"{row['achieved_tflops']} | {row['mfu']} |")
    for name, step in summary["steps"].items():
        lines += ["", f"## {name} (exit {step['exit']}, {step['seconds']} s)", "", f"`{step['command']}`", "",
                  "```", step["output"].strip()[-6000:], "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available():
        print("gpu.py: torch sees no CUDA device; the CPU measurements are the other scripts in benchmarks/perf",
              file=sys.stderr)
        sys.exit(2)
    began = time.perf_counter()
    device_name = torch.cuda.get_device_name(0)
    python = sys.executable
    steps = {
        "pytest -m gpu": run_step("pytest", [python, "-m", "pytest", "-m", "gpu", "-q"], 90),
        "attacks.py": run_step("attacks", [python, str(HERE / "attacks.py"), "--device", "cuda", "--n",
                                           str(args.attack_n), "--repeats", "1", "--no-bf16",
                                           "--sections", "pgd", "autoattack"], 150),
        "purifiers.py": run_step("purifiers", [python, str(HERE / "purifiers.py"), "--device", "cuda",
                                               "--batch", "128", "--repeats", "3"], 90),
    }
    peak = peak_of(device_name, args.peak_tflops)
    training = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name in TRAININGS:
            try:
                training[name] = train_epoch(name, args.train_n, peak, Path(workdir))
            except Exception as err:  # one failed measurement must not lose the others
                training[name] = {"error": repr(err)}
            print(f"training {name}: {training[name]}", flush=True)
    summary = {"device": device_name, "torch": torch.__version__, "cuda": torch.version.cuda, "peak_tflops": peak,
               "seconds": round(time.perf_counter() - began, 1), "training": training, "steps": steps}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "gpu-" + "".join(c if c.isalnum() else "-" for c in device_name).strip("-").lower()
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(summary))
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    os.environ.setdefault("ROBENCH_OFFLINE", "1")
    main()
