"""RDP's cost next to the classifier's: purifier forward at 32 and 299 pixels, and one training step.

In one process, on the same device, with one untimed warm-up and the median of ``--repeats`` runs:

  * at 32x32 (CIFAR-10 batch, ``resnet18-standard``) and 299x299 (NIPS 2017 DEV size,
    ``inception-v3:pretrained=false``, the ImageNet backbones' cost class): images per second of
    RDP's P forward (no grad), of the classifier's forward, and of one attack step on the
    classifier (forward + backward to the input); the ratio P forward / classifier attack step is
    the share of an attack step that purification adds (target: a small fraction, < 0.5);
  * one ``robench train rdp`` step at 32x32 (SSP examples, L_P, L_R and D's loss, three Adam
    updates) with F = ``vgg16:pretrained=false`` (VGG-16 relu3_3's cost, no download), next to the
    classifier's attack step.

The purifier is the paper-size default (width 64, 8 + 8 blocks) unless ``--rdp SPEC`` says
otherwise. A measurement, not a test: the exit code is 0 unless something raises.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/rdp.py --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from _timing import timed, use_default_data

use_default_data()

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

from robench import registry  # noqa: E402
from robench.env import pick_device  # noqa: E402


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
    parser.add_argument("--rdp", default="rdp", help="RDP spec (default: paper size)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rdp = registry.build("defenses", args.rdp).to(device).eval()
    rows = []
    for size, classifier_spec in ((32, "resnet18-standard"), (299, "inception-v3:pretrained=false")):
        batch = args.batch if size == 32 else max(1, args.batch // 16)
        x = torch.rand(batch, 3, size, size, device=device)
        classifier = registry.build("models", classifier_spec).to(device).eval()
        purify = median_rate(no_grad(rdp, x), batch, args.repeats, device)
        forward = median_rate(no_grad(classifier, x), batch, args.repeats, device)
        step = median_rate(attack_step(classifier, x), batch, args.repeats, device)
        rows.append([f"{size}x{size}", classifier_spec, batch, f"{purify:.1f}", f"{forward:.1f}", f"{step:.1f}",
                     f"{step / purify:.2f}"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, RDP {args.rdp}")
    print(tabulate(rows, headers=["size", "classifier", "batch", "P fwd img/s", "clf fwd img/s",
                                  "clf attack step img/s", "P fwd / attack step (time)"], tablefmt="github"))

    from robench.defenses.rdp.trainer import RDPTraining
    from robench.train import Evaluation, Runtime

    os.environ.setdefault("ROBENCH_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        run = RDPTraining.plan('rdp:features="vgg16:pretrained=false",crop=32', model=args.rdp, dataset="synthetic",
                               split="test", n=args.batch, batch_size=args.batch, epochs=1,
                               evaluation=Evaluation(n=0), output=f"{folder}/rdp.pt")
        phase = run.phases()[0]
        for network in phase.networks.values():
            network.to(device).train()
        x = run.train.x[: args.batch].to(device)
        y = run.train.y[: args.batch].to(device)
        generator = torch.Generator(device=device).manual_seed(0)
        optimisers = {name: torch.optim.Adam(net.parameters(), lr=1e-4) for name, net in phase.networks.items()}

        def train_step():
            losses = phase.step(x, y, generator).loss
            for name, loss in losses.items():
                optimisers[name].zero_grad()
                params = list(phase.networks[name].parameters())
                torch.autograd.backward(loss, inputs=params, retain_graph=True)
                optimisers[name].step()

        training = median_rate(train_step, args.batch, args.repeats, device)
    classifier = registry.build("models", "resnet18-standard").to(device).eval()
    step = median_rate(attack_step(classifier, x), args.batch, args.repeats, device)
    print(f"\none training step at 32x32 (SSP {run.recipe.ssp_steps} steps, three Adam updates): "
          f"{training:.1f} img/s = {step / training:.1f} classifier attack steps")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: wall times are noisy")


if __name__ == "__main__":
    main()
