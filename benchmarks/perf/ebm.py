"""EBM purification's cost (Hill et al. 2021, specs A15), the dominant cost of DIR's Table 3.

In one process: images per second of ``ebm`` purification (``--steps`` Langevin steps, all
chains of a batch in one call), per Langevin step, and of one BPDA+EOT attack step as DIR Table
3's benchmark runs it (``--eot`` draws of the purifier batched as parallel chains, the
classifier's gradient at the purified images applied to the input), next to one plain attack
step on ``resnet18-standard``; and the projected cost of Table 3's EBM cell per image
(``--attack-steps`` steps plus the scoring draws). Random EBM weights: the cost does not depend
on them. A measurement, not a test.

Run from the repository root::

    ROBENCH_DATA=../shared/data .venv/bin/python benchmarks/perf/ebm.py --batch 16 --steps 50 --eot 15
"""

from __future__ import annotations

import argparse
import os

from _timing import use_default_data

use_default_data()

import torch  # noqa: E402

from purifiers import attack_step, median_rate  # noqa: E402
from robench import registry  # noqa: E402
from robench.defense import gradient_view  # noqa: E402
from robench.env import pick_device  # noqa: E402
from robench.target import EOT, Pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50, help="Langevin steps timed (the paper's 1500 scale linearly)")
    parser.add_argument("--eot", type=int, default=15, help="EOT draws of the attack (DIR Table 3's benchmark: 15)")
    parser.add_argument("--attack-steps", type=int, default=40)
    parser.add_argument("--draws", type=int, default=10, help="scoring draws of the cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    x = torch.rand(args.batch, 3, 32, 32, device=device)
    classifier = registry.build("models", "resnet18-standard").to(device).eval()
    purifier = registry.build("defenses", f"ebm:steps={args.steps}").to(device).eval()
    purify = median_rate(lambda: purifier(x), args.batch, args.repeats, device)
    attacked = EOT(Pipeline(classifier, gradient_view(purifier)), args.eot)
    bpda_eot = median_rate(attack_step(attacked, x), args.batch, args.repeats, device)
    plain = median_rate(attack_step(classifier, x), args.batch, args.repeats, device)
    per_step = 1 / (purify * args.steps)  # seconds per image per Langevin step
    paper = 1500 * per_step
    cell = paper * (args.eot * (args.attack_steps + 1) + 2 * args.draws)  # EOT chains per step, clean + adversarial scoring
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {args.batch}")
    print(f"ebm purification, {args.steps} Langevin steps: {purify:.3g} img/s ({per_step * 1e3:.3g} ms per image per step)")
    print(f"one BPDA+EOT step (EOT {args.eot}, {args.steps} Langevin steps): {bpda_eot:.3g} img/s "
          f"= {plain / bpda_eot:.3g} plain resnet18-standard attack steps ({plain:.3g} img/s)")
    print(f"projected at the paper's 1500 steps: {paper:.3g} s per image per purification; DIR Table 3's EBM cell "
          f"(PGD-{args.attack_steps}, EOT {args.eot}, {args.draws} scoring draws) about {cell / 60:.3g} min per image, "
          f"{cell * 1000 / 3600:.3g} h for its 1,000 images")
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: wall times are noisy")


if __name__ == "__main__":
    main()
