"""Targeted FAB with every target class in one batch and early stopping (Croce & Hein, "Minimally
distorted adversarial examples with a fast adaptive boundary attack", ICML 2020, Alg. 1; the FAB-T
of AutoAttack, ICML 2020), outcome-identical to the official code.

Written here rather than called from ``pyautoattack`` because the official ``FABAttack.perturb``
runs its target classes one after the other, each a loop of 100 small steps over all the examples
still robust: on a robust model (where FAB-T breaks few examples) its time goes to per-step
overhead on small batches, 9 times over, and an example stays in the batch after FAB has found
an adversarial point within eps. This FAB-T copies the official step (``fab_base.py``
``attack_single_run`` with ``is_targeted=True`` and no random start, as AutoAttack's fab-t runs
it, one restart; the projections are the official functions) element for element, with two changes:

- the target classes run side by side: row ``(k, i)`` of the batch is example ``i`` attacked
  towards its ``k``-th most likely other class, in groups of targets as large as
  :func:`robench.attacks.apgd.side_by_side` allows, in the official order;
- an example leaves the batch (all its rows) at the first iterate that is misclassified within eps.

Why the outcomes are the official ones. The official code runs target ``k`` on the examples no
earlier target broke, and an example is broken iff some target's smallest misclassified iterate
lies within eps. Every quantity of a run is per row: the hyperplane, its projection (row by row),
the step, the backward step and the smallest norm so far, which enters no later step; there is no
randomness (the random start belongs to restarts after the first). The model is in eval mode, so
a row's logits and gradient do not depend on the other rows. Hence a row follows the official
trajectory of its (example, target) whatever else is in the batch, an example is broken here iff
some target of the official run breaks it, and running a target on an example an earlier target
broke changes no outcome. The returned point differs: the first misclassified iterate within eps
here, the smallest one of the first successful target in the official code; both are
misclassified within eps. The same exception as for :mod:`robench.attacks.apgd`: kernels whose
float rounding depends on the batch size can move a logit by ~1e-6, which matters only on the
decision boundary.
"""

from __future__ import annotations

import torch
from pyautoattack.fab_projections import projection_l2, projection_linf
from torch import nn

from robench.attacks.apgd import side_by_side
from robench.threat import ThreatModel

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # the official defaults: largest bias towards x, overshoot, backward step
MIN_STEP = 1e-8  # the official guard on the step lengths
PROJECTION = {"Linf": projection_linf, "L2": projection_l2}


def fab_targeted(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, n_targets: int = 9,
    n_iter: int = 100, alpha_max: float = ALPHA_MAX, eta: float = ETA, beta: float = BETA,
) -> torch.Tensor:
    """FAB-T (Croce & Hein 2020, Alg. 1, targeted): the official fab-t of AutoAttack, targets batched, early stop.

    Attacks the correctly classified examples of x (B, C, H, W) in [0, 1] towards their 2nd, 3rd,
    ... most likely classes; returns a misclassified point within ``threat.eps`` for each example
    broken and the clean image for the others.
    """
    if threat.norm not in PROJECTION:
        raise ValueError(f"FAB-T here supports {', '.join(PROJECTION)}, not {threat.norm}")
    with torch.no_grad():
        clean = model(x)
    robust, ranked = clean.max(1)[1] == y, clean.sort(dim=-1)[1]  # the official target order
    x_adv = x.clone()
    group = side_by_side(int(robust.sum()), x.shape[1:])
    for first in range(2, n_targets + 2, group):
        ranks = range(first, min(first + group, n_targets + 2))
        index = robust.nonzero().squeeze(1)
        if len(index) == 0:
            break
        found, broken = _run(model, x[index], y[index], ranked[index], ranks, threat, n_iter, alpha_max, eta, beta)
        robust[index[broken]] = False
        x_adv[index[broken]] = found[broken]
    return x_adv


def _run(model, x, y, ranked, ranks, threat: ThreatModel, n_iter: int, alpha_max: float, eta: float, beta: float):
    """The official ``attack_single_run`` (targeted, no random start) for each target rank in ``ranks``, side by side.

    Returns, per example, a point and whether it is misclassified within eps.
    """
    n, shape = len(x), x.shape[1:]
    found, broken = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
    owner = torch.arange(n, device=x.device).repeat(len(ranks))  # row (k, i) -> example i
    im2, la2 = x[owner], y[owner]
    la_target = torch.cat([ranked[:, -rank] for rank in ranks])
    x1 = im2.clone()
    project, ndims = PROJECTION[threat.norm], [1] * len(shape)
    with torch.no_grad():
        for _ in range(n_iter):
            rows = len(x1)
            df, dg = _difference_and_gradient(model, x1, la2, la_target)
            b = -df + (dg * x1).reshape(rows, -1).sum(dim=-1)
            w = dg.reshape(rows, -1)
            flat = x1.reshape(rows, -1)
            d3 = project(torch.cat((flat, im2.reshape(rows, -1)), 0), torch.cat((w, w), 0), torch.cat((b, b), 0))
            d1, d2 = d3[:rows].reshape(x1.shape), d3[-rows:].reshape(x1.shape)
            if threat.norm == "Linf":
                a0 = d3.abs().max(dim=1, keepdim=True)[0].view(-1, *ndims)
            else:
                a0 = (d3 ** 2).sum(dim=1, keepdim=True).sqrt().view(-1, *ndims)
            a0 = torch.max(a0, MIN_STEP * torch.ones(a0.shape, device=a0.device))
            a1, a2 = a0[:rows], a0[-rows:]
            alpha = torch.min(torch.max(a1 / (a1 + a2), torch.zeros(a1.shape, device=a1.device)),
                              alpha_max * torch.ones(a1.shape, device=a1.device))
            x1 = ((x1 + eta * d1) * (1 - alpha) + (im2 + d2 * eta) * alpha).clamp(0.0, 1.0)
            is_adv = model(x1).max(1)[1] != la2
            if not is_adv.any():
                continue
            distance = _norm(x1[is_adv] - im2[is_adv], threat.norm)
            settled = torch.zeros_like(is_adv)
            settled[is_adv] = distance <= threat.eps
            if settled.any():  # an example leaves at its first misclassified iterate within eps
                first = _first_row_of_each_example(owner, settled)
                broken[owner[first]], found[owner[first]] = True, x1[first]
                is_adv &= ~settled
            x1[is_adv] = im2[is_adv] + (x1[is_adv] - im2[is_adv]) * beta  # the official backward step
            keep = ~broken[owner]
            if not keep.all():
                owner, im2, la2, la_target, x1 = owner[keep], im2[keep], la2[keep], la_target[keep], x1[keep]
                if len(owner) == 0:
                    break
    return found, broken


def _first_row_of_each_example(owner: torch.Tensor, settled: torch.Tensor) -> torch.Tensor:
    """The first of the ``settled`` rows of each example: its lowest target rank (rows keep the official order).

    Several targets of one example can settle in the same step. Writing all their rows into the
    example's slot would be an assignment with repeated indices, whose result torch leaves
    undefined (on a multi-threaded CPU it mixes pixels of different rows into a point that may
    not be adversarial), so each example takes one row.
    """
    rows = settled.nonzero().squeeze(1)
    examples, position = torch.unique(owner[rows], return_inverse=True)
    first = torch.full((len(examples),), len(rows), dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, position, torch.arange(len(rows), device=rows.device), reduce="amin")
    return rows[first]


def _difference_and_gradient(model, x1, la, la_target):
    """The official ``get_diff_logits_grads_batch_targeted``: z_t - z_y at x1 and its gradient, shaped (rows, 1, ...)."""
    u = torch.arange(len(x1), device=x1.device)
    im = x1.clone().requires_grad_()
    with torch.enable_grad():
        logits = model(im)
        diffy = -(logits[u, la] - logits[u, la_target])
        (grad,) = torch.autograd.grad(diffy.sum(), [im])
    return diffy.detach(), grad


def _norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-row Linf or L2 norm, computed as the official code computes the distance it compares with eps."""
    flat = delta.reshape(len(delta), -1)
    return flat.abs().max(dim=1)[0] if norm == "Linf" else (flat ** 2).sum(dim=-1).sqrt()
