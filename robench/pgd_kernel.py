"""One PGD iteration (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).

The random start, the steepest-ascent direction, the step and the projection onto the threat
model, written once for every projected-gradient loop in robench (the ``pgd`` attack's own loop,
``bpda-eot``, ``mask-adaptive``, the adversarial-training inner maximisation, DIR's inner
maximisation). The update rule is torchattacks' PGD (Linf) / PGDL2 (L2), so a loop built from
these pieces gives torchattacks' iterates draw for draw.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from robench.device_options import float32
from robench.threat import ThreatModel

STARTS = ("none", "uniform", "normal", "noise-image")
# Added to the gradient's L2 norm before dividing (torchattacks' PGDL2): a zero gradient gives a zero step, not NaN.
L2_GUARD = 1e-10
# TRADES', MART's and DIR's reference code start at x + 0.001 * N(0, I).
NORMAL_START_STD = 0.001


def random_start(
    x: torch.Tensor, threat: ThreatModel, kind: str, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Starting point of the ascent from clean ``x`` (B, C, H, W), drawn from ``generator`` (None: the global one).

    ``none``: ``x`` itself. ``uniform``: torchattacks' draw, clamped to the bounds: uniform in the
    Linf box; for L2 a uniformly random direction times a radius uniform in [0, eps] (PGDL2).
    ``normal``: ``x + 0.001 N(0, I)``, neither projected nor clamped (TRADES, MART, DIR Eq. 4).
    ``noise-image``: a pure ``N(0, I)`` image projected onto the threat model around ``x`` (SSP,
    Naseer et al. 2020).
    """
    if kind not in STARTS:
        raise ValueError(f"unknown start {kind!r}; choose one of {', '.join(STARTS)}")
    if kind == "none":
        return x.clone()
    if kind == "normal":
        return x + NORMAL_START_STD * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "noise-image":
        return threat.project(torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype), x)
    if threat.norm == "Linf":
        noise = torch.empty_like(x).uniform_(-threat.eps, threat.eps, generator=generator)
    else:
        noise = torch.empty_like(x).normal_(generator=generator)
        norms = noise.flatten(1).norm(p=2, dim=1).view(len(x), *([1] * (x.dim() - 1)))
        radius = torch.zeros_like(norms).uniform_(0, 1, generator=generator)
        noise *= radius / norms * threat.eps
    return (x + noise).clamp(*threat.bounds)


def direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit size in ``norm``: the sign (Linf) or the gradient over its L2 norm."""
    if norm == "Linf":
        return grad.sign()
    length = grad.flatten(1).norm(p=2, dim=1) + L2_GUARD
    return grad / length.view(-1, *([1] * (grad.dim() - 1)))


def step(
    x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, threat: ThreatModel, step_size: float,
    *, project: bool = True,
) -> torch.Tensor:
    """``x_adv`` moved ``step_size`` along :func:`direction`, projected onto ``threat`` around ``x`` unless ``project`` is False."""
    moved = x_adv.detach() + step_size * direction(grad, threat.norm)
    return threat.project(moved, x) if project else moved


def ascend(
    loss_of: Callable[..., Any],
    x: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    start: str = "uniform",
    generator: torch.Generator | None = None,
    project: bool = True,
    early_stop: bool = False,
    confirm: bool = False,
) -> torch.Tensor:
    """PGD: ``steps`` :func:`step` s ascending the scalar ``loss_of(x_adv)`` from :func:`random_start`; returns x_adv detached.

    ``x`` (B, C, H, W) in the threat model's bounds. With ``project`` False the iterates are
    never projected (DIR's released inner maximisation); every other caller keeps the default.

    ``early_stop``: each example keeps its first iterate its attack counts as a success and
    leaves the batch. ``loss_of`` is then called as ``loss_of(x_adv, rows)`` on the examples
    ``rows`` (indices into ``x``) still attacked and returns ``(loss, broken)``, ``broken`` (b,)
    judged on the same forward pass. ``confirm`` re-judges a candidate under
    :func:`robench.device_options.float32` before it leaves (needed when the forward ran under
    autocast: a bf16 verdict alone must not end an example's attack).
    """
    x = x.detach()
    x_adv = random_start(x, threat, start, generator=generator)
    if not early_stop:
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_of(x_adv), x_adv)
            x_adv = step(x_adv, x, grad, threat, step_size, project=project)
        return x_adv.detach()
    out = x_adv.detach().clone()
    rows = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss, broken = loss_of(x_adv, rows)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv, broken = x_adv.detach(), broken.detach().clone()
        if confirm and broken.any():
            index = broken.nonzero().flatten()
            with torch.no_grad(), float32():
                broken[index] = loss_of(x_adv[index], rows[index])[1]
        if broken.any():
            out[rows[broken]] = x_adv[broken]
            keep = ~broken
            rows, x, x_adv, grad = rows[keep], x[keep], x_adv[keep], grad[keep]
            if not len(rows):
                return out
        x_adv = step(x_adv, x, grad, threat, step_size, project=project)
    out[rows] = x_adv.detach()
    return out
