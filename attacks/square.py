"""Square Attack, Linf (Andriushchenko et al., "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020, Alg. 1 and 2), the official code's queries with
less bookkeeping per query.

Written here rather than called from ``pyautoattack`` because on a small robust model most of the
official ``SquareAttack``'s time goes to bookkeeping around each query: every query gathers the
examples still to fool out of the whole batch and scatters the results back, and computes a
cross-entropy that the margin loss never reads. This copy of the official Linf branch
(``square.py``, ``attack_single_run`` and ``perturb``, one restart, margin loss, AutoAttack's
parameters) keeps the examples still to fool in contiguous tensors and gathers or scatters only
when one of them is fooled.

Why the outcomes are the official ones. The random draws are the official draws in the official
order, from a generator seeded with the seed as the official code seeds the global one: the
initial stripes for the whole batch, then per query one square position and one sign per channel
shared by all the examples. Each query is sent for the same examples (those whose best margin is
still positive) as in the official code, so the model sees the same batches, and every update is
the official element-wise arithmetic (a 0/1 float mask selects between the new and the best
point, which ``torch.where`` does exactly). The loss of the margin version equals the margin, so
its best value is the best margin. Hence the returned points are the official ones, bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import nn

P_INIT, QUERIES = 0.8, 5000  # AutoAttack's Square: initial fraction of pixels per square, queries


def square_linf(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, n_queries: int = QUERIES,
    p_init: float = P_INIT, rescale_schedule: bool = False, seed: int = 0,
) -> torch.Tensor:
    """Untargeted Linf Square Attack on the margin loss (Andriushchenko et al. 2020, Alg. 1); x (B, C, H, W) in [0, 1].

    Returns the point of each example that a final forward pass finds misclassified and the clean
    image of the others (the official ``SquareAttack.perturb``); ``rescale_schedule`` is the
    official ``resc_schedule`` (False in AutoAttack).
    """
    generator = torch.Generator().manual_seed(int(seed))
    adv = x.clone()
    with torch.no_grad():
        robust = (model(x).max(1)[1] == y).nonzero().squeeze(1)
        if len(robust) == 0:
            return adv
        x_best = _search(model, x[robust], y[robust], eps, n_queries, p_init, rescale_schedule, generator)
        fooled = model(x_best).max(1)[1] != y[robust]
    adv[robust[fooled]] = x_best[fooled]
    return adv


def _search(model, x, y, eps: float, n_queries: int, p_init: float, rescale: bool, generator) -> torch.Tensor:
    """The official Linf ``attack_single_run``: random squares of shrinking size, kept where the margin drops."""
    c, h, w = x.shape[1:]
    n_features = c * h * w
    x_best = torch.clamp(x + eps * _random_sign([len(x), c, 1, w], generator).to(x.device), 0.0, 1.0)
    margin_min = _margin(model, x_best, y)
    if (margin_min < 0.0).all():
        return x_best
    active = torch.arange(len(x), device=x.device)  # the examples whose margin is still positive
    x_cur, y_cur, x_best_cur, margin_cur = x, y, x_best.clone(), margin_min.clone()
    refresh = not (margin_min > 0.0).all()
    for i_iter in range(n_queries):
        if refresh:  # gather the examples still to fool, as the official code does before every query
            x_best[active], margin_min[active] = x_best_cur, margin_cur
            active = (margin_min > 0.0).nonzero().squeeze(1)
            x_cur, y_cur, x_best_cur, margin_cur = x[active], y[active], x_best[active], margin_min[active]
        p = _p_selection(i_iter, n_queries, p_init, rescale)
        s = min(max(int(round(math.sqrt(p * n_features / c))), 1), min(h, w))
        vh = int(_random_int(h - s, generator))
        vw = int(_random_int(w - s, generator))
        new_deltas = torch.zeros([c, h, w], device=x.device)
        new_deltas[:, vh:vh + s, vw:vw + s] = 2.0 * eps * _random_sign([c, 1, 1], generator).to(x.device)
        x_new = torch.min(torch.max(x_best_cur + new_deltas, x_cur - eps), x_cur + eps)
        x_new = torch.clamp(x_new, 0.0, 1.0)
        margin = _margin(model, x_new, y_cur)
        improved = (margin < margin_cur) | (margin <= 0.0)
        margin_cur = torch.where(improved, margin, margin_cur)
        x_best_cur = torch.where(improved.view(-1, 1, 1, 1), x_new, x_best_cur)
        refresh = bool((margin_cur <= 0.0).any())
        if refresh and (margin_cur <= 0.0).all():
            break  # every example fooled (those no longer active already were)
    x_best[active], margin_min[active] = x_best_cur, margin_cur
    return x_best


def _margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The official ``margin_and_loss`` (margin version): z_y - max_{i != y} z_i."""
    logits = model(x)
    u = torch.arange(len(x), device=x.device)
    y_corr = logits[u, y].clone()
    logits[u, y] = -float("inf")
    return y_corr - logits.max(dim=-1)[0]


def _p_selection(it: int, n_queries: int, p_init: float, rescale: bool) -> float:
    """The official schedule of p, the fraction of pixels a square covers: halved at fixed query counts."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                           (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


def _random_sign(shape, generator) -> torch.Tensor:
    """The official ``random_choice``: +-1 from one uniform draw per element."""
    return torch.sign(2 * torch.rand(shape, generator=generator) - 1)


def _random_int(high: int, generator) -> torch.Tensor:
    """The official ``random_int(0, high)``: one uniform draw scaled and truncated."""
    return (0 + high * torch.rand([1], generator=generator)).long()
