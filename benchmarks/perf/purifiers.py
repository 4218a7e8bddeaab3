"""The learned purifiers' cost next to the classifier's: forward at 32 and 299 pixels, one training step.

In one process, on the same device, with one untimed warm-up and the median of ``--repeats`` runs:

  * for every ``--defense`` (default: paper-size ``rdp``, ``nrp``, ``nrp:arch=resg``,
    ``comdefend``, ``hgd`` and ``sr`` (EDSR baseline, the authors' size; its wavelet step on CPU)
    with random weights, and ``hgd:input_size=32`` and ``dir`` at 32x32 only; a size-specific
    purifier runs only at its ``input_size``), at 32x32 (CIFAR-10 batch,
    ``resnet18-standard``) and 299x299 (NIPS 2017 DEV size, ``inception-v3:pretrained=false``, the
    ImageNet backbones' cost class): images per second of the purifier's forward (no grad), of
    the classifier's forward and of one attack step on the classifier (forward + backward to the
    input); the last column, purifier time over attack-step time, is the share of an attack step
    that purification adds (a small fraction is the goal);
  * one ``robench train rdp`` and one ``robench train nrp`` step at 32x32 (SSP examples, the
    losses and every network's Adam update) with F = ``vgg16:pretrained=false`` (VGG-16 relu3_3's
    cost, no download), and one ``robench train hgd`` step at 32x32 as DIR retrains HGD (PGD-5
    against ``resnet18-standard``, FGD on its last feature map, the DUNET's Adam update) and one
    ``robench train sr`` step (EDSR baseline x2 on 16 -> 32 pixel bicubic pairs, L1, Adam), and
    one ``robench train jatp`` and ``robench train dir`` step in front of ``resnet18-standard``
    (paper-size networks), in classifier attack steps; then each training step's time per image
    relative to DIR's, the comparison of DIR's Table 4 (training time per epoch).

A measurement, not a test: the exit code is 0 unless something raises.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/purifiers.py --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from _timing import timed, use_default_data

use_default_data()

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from robench import registry  # noqa: E402
from robench.env import pick_device  # noqa: E402

DEFAULTS = ["rdp", "nrp", "nrp:arch=resg", "comdefend", "hgd", "hgd:input_size=32", "sr", "dir"]
SSP = 'features="vgg16:pretrained=false",crop=32'
# name, recipe, model, target, what one step does
TRAINING_STEPS = [
    ("rdp", f"rdp:{SSP}", "rdp", None, "SSP 10 steps, every network's Adam update"),
    ("nrp", f"nrp:{SSP}", "nrp", None, "SSP 10 steps, every network's Adam update"),
    ("hgd", "hgd:attack=pgd", "hgd:input_size=32", "resnet18-standard", "PGD-5 on the target, FGD, Adam update"),
    ("sr", "sr:patch=32", "sr", None, "16 -> 32 pixel bicubic pairs, L1, Adam"),
    ("jatp", "jatp", "jatp", "resnet18-standard", "PGD-5 through the DUNET and the target, pixel + feature loss"),
    ("dir", "dir:pretrain_epochs=0", "dir", "resnet18-standard", "PGD-5 through DIR, inner KL-5, L_den"),
]
RELATIVE_TO = "dir"  # DIR's Table 4 compares HGD's and JATP's training time per epoch with DIR's


def median_rate(work, batch: int, repeats: int, device: torch.device) -> float:
    """Images per second of ``work()`` on a batch, median over ``repeats`` after one warm-up."""
    work()
    rates = []
    for _ in range(repeats):
        with timed(device) as took:
            work()
        rates.append(batch / took["wall"])
    return statistics.median(rates)


def attack_step(model, x):
    def work():
        x_adv = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(x_adv), model(x).argmax(1).detach())
        torch.autograd.grad(loss, x_adv)
    return work


def no_grad(module, x):
    def work():
        with torch.no_grad():
            module(x)
    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--defense", action="append", help=f"purifier spec (repeatable; default {DEFAULTS})")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows = []
    for size, classifier_spec in ((32, "resnet18-standard"), (299, "inception-v3:pretrained=false")):
        batch = args.batch if size == 32 else max(1, args.batch // 16)
        x = torch.rand(batch, 3, size, size, device=device)
        classifier = registry.build("models", classifier_spec).to(device).eval()
        forward = median_rate(no_grad(classifier, x), batch, args.repeats, device)
        step = median_rate(attack_step(classifier, x), batch, args.repeats, device)
        for spec in args.defense or DEFAULTS:
            purifier = registry.build("defenses", spec).to(device).eval()
            if getattr(purifier, "input_size", 32) != size or (size != 32 and type(purifier).__name__ == "DIR"):
                continue  # built for one image size (DIR and hgd:input_size=32 for 32x32, hgd for 299x299)
            purify = median_rate(no_grad(purifier, x), batch, args.repeats, device)
            rows.append([f"{size}x{size}", spec, classifier_spec, batch, f"{purify:.3g}", f"{forward:.3g}",
                         f"{step:.3g}", f"{step / purify:.3g}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(tabulate(rows, headers=["size", "purifier", "classifier", "batch", "purifier img/s", "clf fwd img/s",
                                  "clf attack step img/s", "purifier / attack step (time)"], tablefmt="github"))
    os.environ.setdefault("ROBENCH_OFFLINE", "1")
    classifier = registry.build("models", "resnet18-standard").to(device).eval()
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    step = median_rate(attack_step(classifier, x), args.batch, args.repeats, device)
    rates = {}
    for name, recipe, spec, target, what in TRAINING_STEPS:
        work = training_step(name, recipe, spec, target, args.batch, device)
        rates[name] = median_rate(work, args.batch, args.repeats, device)
        print(f"one robench train {name} step at 32x32 ({spec}, {what}): "
              f"{rates[name]:.1f} img/s = {step / rates[name]:.1f} classifier attack steps")
    print(f"training time per image relative to {RELATIVE_TO} (DIR Table 4's comparison): "
          + ", ".join(f"{name} {rates[RELATIVE_TO] / rate:.2f}" for name, rate in rates.items()))
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: wall times are noisy")


def training_step(name: str, recipe: str, spec: str, target: "str | None", batch: int, device: torch.device):
    """One optimisation step of ``robench train NAME`` on a synthetic batch, as a timed callable."""
    from robench.train import Evaluation
    from robench.train.command import defense_trainer

    output = Path(tempfile.gettempdir()) / f"robench-perf-{name}.pt"  # planned only: nothing is written
    run = defense_trainer(name).plan(recipe, model=spec, target=target, dataset="synthetic", split="test", n=batch,
                                     batch_size=batch, epochs=1, evaluation=Evaluation(n=0), output=output)
    if run.target is not None:
        run.target.to(device)
    phase = run.phases()[0]
    networks = phase.networks or {"main": run.module}
    for network in networks.values():
        network.to(device).train()
    x, y = run.train.x[:batch].to(device), run.train.y[:batch].to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    optimisers = {key: torch.optim.Adam(net.parameters(), lr=1e-4) for key, net in networks.items()}

    def work():
        losses = phase.step(x, y, generator).loss
        for key, loss in (losses if isinstance(losses, dict) else {"main": losses}).items():
            optimisers[key].zero_grad()
            parameters = [p for p in networks[key].parameters() if p.requires_grad]
            torch.autograd.backward(loss, inputs=parameters, retain_graph=True)
            optimisers[key].step()
    return work


if __name__ == "__main__":
    main()
