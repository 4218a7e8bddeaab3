"""APGD with early stopping (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1), outcome-identical to the official code.

Written here rather than called from ``pyautoattack`` because the official APGD keeps every example
in the batch for all its iterations, also those it has already broken; on a non-robust model nearly
all of AutoAttack's time goes there. This APGD follows the official algorithm element for element
(``autopgd_base.py`` of fra31/auto-attack, the ``pyautoattack`` package), and an example leaves
the batch at its first successful iterate. With early stop, the runs of APGD-T's target classes
(and of restarts) go side by side in one batch where they are small, as the official runs they
would be (:meth:`_Runner.attack_side_by_side` says why the draws stay the official ones).

Why the outcomes are the official ones. Every quantity of the algorithm is per example: the
step size, the best point and its gradient, the loss history and the checkpoint tests; only the
checkpoint schedule is shared, and it depends on the iteration count alone. The random starts
are drawn for the whole batch at once from the seed, as the official code draws them, so each
example gets the same start. The model is in eval mode (Attack's public call sets it), so an
example's logits and gradient do not depend on the other examples in the batch. Hence removing
a broken example changes nothing for the others, and an example is broken here iff it is broken
by some iterate of the official run. The returned point differs: the first successful iterate
here, the last one in the official code; both are misclassified. Exceptions: kernels whose float
rounding depends on the batch size (seen on CPU for batches of one) can move a logit by ~1e-6,
which matters only for an example on the decision boundary; and a stochastic model (the ``rand``
version, EOT) draws different noise for a smaller batch, so there outcomes agree in distribution only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robench.threat import ThreatModel

LOSSES = ("ce", "dlr")
MOMENTUM = 0.75  # Alg. 1: weight of the new step; 1 - MOMENTUM is the weight of the last move
INITIAL_STEP = 2.0  # Alg. 1: the step size starts at 2 eps (Linf and L2)
DIVISION_GUARD = 1e-12  # the official code's guard in its norms and in the DLR denominators
MAX_ELEMENTS = 512 * 3 * 32 * 32  # runs go side by side while the batch holds at most this many pixels (512 CIFAR images)
RECOMPUTE_BUDGET = 2  # side by side runs spend at most this many times the official runs' gradient steps
logger = logging.getLogger("auto-attack")

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Checkpoints:
    """Where APGD tests its step size (Sec. 3.2): lengths 0.22, then shrinking by 0.03 to 0.06 of ``n_iter``."""

    n_iter: int

    @property
    def first(self) -> int:
        return max(int(0.22 * self.n_iter), 1)

    @property
    def shortest(self) -> int:
        return max(int(0.06 * self.n_iter), 1)

    @property
    def shrink(self) -> int:
        return max(int(0.03 * self.n_iter), 1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy (APGD-CE)."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Difference of Logits Ratio, Eq. (5): -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)."""
    top, order = logits.sort(dim=1)
    y_is_top = (order[:, -1] == y).float()
    best_other = top[:, -2] * y_is_top + top[:, -1] * (1.0 - y_is_top)
    true = logits.gather(1, y[:, None]).squeeze(1)
    return -(true - best_other) / (top[:, -1] - top[:, -3] + DIVISION_GUARD)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, Eq. (6): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) (APGD-T)."""
    top, _ = logits.sort(dim=1)
    true, wanted = logits.gather(1, y[:, None]).squeeze(1), logits.gather(1, target[:, None]).squeeze(1)
    return -(true - wanted) / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + DIVISION_GUARD)


LOSS_OF = {"ce": ce_loss, "dlr": dlr_loss}


def apgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, loss: str = "ce",
    n_iter: int = 100, restarts: int = 1, rho: float = MOMENTUM, eot_iter: int = 1, seed: int = 0,
    early_stop: bool = True,
) -> torch.Tensor:
    """Untargeted APGD on ``loss`` (Croce & Hein 2020, Alg. 1); x (B, C, H, W) in [0, 1], y (B,).

    Returns the adversarial iterate of each broken example and the clean image of the others (the
    official ``APGDAttack.perturb``). ``rho`` is the oscillation threshold of the step-size test
    (the official ``thr_decr``); ``eot_iter`` gradients are averaged per step (the ``rand``
    version); restarts draw new starts for the examples still robust.
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    runner = _Runner(model, threat, Checkpoints(n_iter), rho, eot_iter, early_stop, seed)
    x_adv = x.clone()
    _attack_in_turn(runner, x, y, [y] * restarts, robust, x_adv, LOSS_OF[loss])
    return x_adv


def apgd_targeted(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *, n_targets: int = 9,
    n_iter: int = 100, restarts: int = 1, rho: float = MOMENTUM, eot_iter: int = 1, seed: int = 0,
    early_stop: bool = True,
) -> torch.Tensor:
    """APGD-T: APGD on the targeted DLR loss towards the 2nd, 3rd, ... most likely classes in turn (Sec. 4).

    Each target runs on the examples still robust, ``restarts`` times; the target order is the
    clean logits' (official ``APGDAttack_targeted.perturb``). Same arguments and answer as :func:`apgd`.
    """
    with torch.no_grad():
        clean = model(x)
    robust, ranked = clean.argmax(1) == y, clean.argsort(dim=1)
    runner = _Runner(model, threat, Checkpoints(n_iter), rho, eot_iter, early_stop, seed)
    x_adv = x.clone()
    targets = [ranked[:, -rank] for rank in range(2, n_targets + 2) for _ in range(restarts)]
    _attack_in_turn(runner, x, y, targets, robust, x_adv, targeted_dlr_loss)
    return x_adv


def _attack_in_turn(runner: _Runner, x, y, targets: list[torch.Tensor], robust, x_adv, loss_of: Loss) -> None:
    """One run per entry of ``targets`` (the label for untargeted losses), each on the examples still robust."""
    if runner.early_stop:
        runner.attack_side_by_side(x, y, targets, robust, x_adv, loss_of)
        return
    for target in targets:
        runner.attack(x, y, target, robust, x_adv, loss_of)


def side_by_side(n: int, example: torch.Size) -> int:
    """How many runs of ``n`` examples of shape ``example`` go in one batch: as many as ``MAX_ELEMENTS`` allows, at least 1."""
    return max(1, MAX_ELEMENTS // max(n * example.numel(), 1))


@dataclass
class _Active:
    """The per-example state of the examples still in the batch (Alg. 1's variables)."""

    index: torch.Tensor  # row of the attacked batch
    run: torch.Tensor  # which of the runs side by side the row belongs to (0 for a single run)
    x: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor
    x_adv: torch.Tensor
    x_prev: torch.Tensor  # the iterate before x_adv, for the momentum term
    grad: torch.Tensor
    x_best: torch.Tensor  # highest-loss point so far, where a halving restarts
    grad_best: torch.Tensor
    loss_best: torch.Tensor
    step: torch.Tensor  # (B, 1, 1, 1)
    losses: torch.Tensor  # (n_iter, B): the loss at every iterate
    best_at_check: torch.Tensor  # loss_best at the last checkpoint
    halved_at_check: torch.Tensor  # bool: the step was halved at the last checkpoint
    x_last_broken: torch.Tensor  # without early stop: the latest misclassified iterate (official x_best_adv)
    broken: torch.Tensor  # bool: some iterate was misclassified

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the examples where ``mask`` is False from every field."""
        for field in fields(self):
            value = getattr(self, field.name)
            setattr(self, field.name, value[:, mask] if field.name == "losses" else value[mask])


class _Runner:
    """One APGD configuration; :meth:`attack` is one run (official ``attack_single_run``) on the robust examples."""

    def __init__(self, model, threat: ThreatModel, checkpoints: Checkpoints, rho: float, eot_iter: int,
                 early_stop: bool, seed: int):
        if threat.norm not in ("Linf", "L2"):
            raise ValueError(f"APGD here supports Linf and L2, not {threat.norm}")
        self.model, self.threat, self.checkpoints = model, threat, checkpoints
        self.rho, self.eot_iter, self.early_stop = rho, eot_iter, early_stop
        # The official code reseeds the global generator with the seed at the start of each
        # component and draws every start on the CPU; a CPU generator of our own gives the same draws.
        self.generator = torch.Generator().manual_seed(int(seed))

    def attack(self, x, y, target, robust: torch.Tensor, x_adv: torch.Tensor, loss_of: Loss) -> None:
        """Attack the ``robust`` examples once; mark those broken in ``robust`` and write their point into ``x_adv``."""
        index = robust.nonzero().squeeze(1)
        if len(index) == 0:
            return
        broken, points, _ = self._run(x[index], y[index], target[index], self._start(x[index]), loss_of)
        robust[index[broken]] = False
        x_adv[index[broken]] = points[broken]

    def attack_side_by_side(self, x, y, targets: list[torch.Tensor], robust: torch.Tensor, x_adv: torch.Tensor,
                            loss_of: Loss) -> None:
        """:meth:`attack` for each of ``targets`` in turn, several runs in one batch; the same outcomes, with early stop.

        The runs are the official ones in order, each on the examples no earlier run broke, and
        each run's starts are drawn for exactly those examples. A group of runs goes side by
        side on the examples still robust with the starts drawn for them (rows ``(k, i)``), as if
        no run of the group broke an example: that holds up to the first run of the group that
        breaks one, so that run and those before it are the official runs, whose results are
        kept; the later runs of the group (which were dropped from the batch as soon as an
        earlier one broke an example) are run again, from the draws the official code makes
        after that run. Every row's state is its own (see the module docstring), so a row gives
        the same result beside other rows as alone.

        Runs computed again are extra gradient steps; a group is only as large as keeps the
        steps spent, plus the most the remaining runs can need one at a time, within
        ``RECOMPUTE_BUDGET`` times the official count (every run on every example).
        """
        steps_per_run = self.checkpoints.n_iter + 1
        budget, spent, done = RECOMPUTE_BUDGET * len(targets) * int(robust.sum()) * steps_per_run, 0, 0
        while done < len(targets):
            index = robust.nonzero().squeeze(1)
            if len(index) == 0:
                return
            left, run_cost = len(targets) - done, len(index) * steps_per_run
            affordable = (budget - spent) // run_cost - (left - 1)  # >= 1: a group commits at least one run
            group = targets[done:done + min(side_by_side(len(index), x.shape[1:]), max(affordable, 1))]
            before = self.generator.get_state()
            starts = torch.cat([self._start(x[index]) for _ in group])
            k = len(group)
            run = torch.arange(k, device=x.device).repeat_interleave(len(index))
            broken, points, steps = self._run(x[index].repeat(k, *[1] * (x.dim() - 1)), y[index].repeat(k),
                                              torch.cat([target[index] for target in group]), starts, loss_of, run)
            spent += steps
            last = int(run[broken].min()) if broken.any() else k - 1  # the last official run of the group
            settled = broken & (run == last)
            owner = index.repeat(k)
            robust[owner[settled]] = False
            x_adv[owner[settled]] = points[settled]
            if last < k - 1:  # the later runs' starts were drawn for examples that have left
                self.generator.set_state(before)
                for _ in range(last + 1):
                    self._start(x[index])
            done += last + 1

    def _run(self, x, y, target, start, loss_of: Loss, run: torch.Tensor | None = None):
        """One official ``attack_single_run`` per row from ``start``; returns per row whether it broke and its
        point, and the gradient steps spent (rows x steps).

        With ``run`` (side by side runs, early stop), a row also leaves once a row of an earlier
        run has broken: its run is no longer an official one.
        """
        logits, loss, grad = self._loss_and_grad(start, y, target, loss_of)
        if loss_of is not ce_loss and (grad.flatten(1).abs().sum(1) == 0).any():
            logger.warning("APGD: some points have a zero gradient of the DLR loss; gradient-based "
                           "evaluation may be unreliable (AutoAttack's check_zero_gradients)")
        n_iter, rows = self.checkpoints.n_iter, len(x)
        state = _Active(
            index=torch.arange(rows, device=x.device),
            run=torch.zeros(rows, dtype=torch.long, device=x.device) if run is None else run,
            x=x, y=y, target=target, x_adv=start, x_prev=start.clone(), grad=grad,
            x_best=start.clone(), grad_best=grad.clone(), loss_best=loss.clone(),
            step=torch.full((rows, *[1] * (x.dim() - 1)), INITIAL_STEP * self.threat.eps, device=x.device),
            losses=torch.zeros(n_iter, rows, device=x.device), best_at_check=loss.clone(),
            halved_at_check=torch.ones(rows, dtype=torch.bool, device=x.device),
            x_last_broken=start.clone(), broken=logits.argmax(1) != y,
        )
        broken, points, steps = torch.zeros(rows, dtype=torch.bool, device=x.device), start.clone(), rows
        self._leave_if_broken(state, broken, points, state.broken)
        length, since_check = self.checkpoints.first, 0
        for i in range(n_iter):
            if len(state.index) == 0:
                break
            steps += len(state.index)
            with torch.no_grad():
                state.x_adv, state.x_prev = self._momentum_step(state, i), state.x_adv
            logits, loss, state.grad = self._loss_and_grad(state.x_adv, state.y, state.target, loss_of)
            misclassified = logits.argmax(1) != state.y
            state.broken |= misclassified
            if not self.early_stop:
                state.x_last_broken[misclassified] = state.x_adv[misclassified]
            else:
                loss = loss[self._leave_if_broken(state, broken, points, misclassified)]
            improved = loss > state.loss_best
            state.x_best[improved] = state.x_adv[improved]
            state.grad_best[improved] = state.grad[improved]
            state.loss_best[improved] = loss[improved]
            state.losses[i] = loss
            since_check += 1
            if since_check == length:
                self._check_step_size(state, i, length)
                length, since_check = max(length - self.checkpoints.shrink, self.checkpoints.shortest), 0
        if not self.early_stop:
            broken[state.index] = state.broken
            points[state.index] = state.x_last_broken
        return broken, points, steps

    def _leave_if_broken(self, state: _Active, broken, points, misclassified: torch.Tensor) -> torch.Tensor:
        """With early stop, record the rows ``misclassified`` at their current iterate and drop them (and, side
        by side, the rows of later runs) from ``state``; returns the mask of rows kept."""
        keep = ~misclassified
        if not self.early_stop or not misclassified.any():  # nothing leaves: spare the copy of every field
            return keep
        broken[state.index[misclassified]] = True
        points[state.index[misclassified]] = state.x_adv[misclassified]
        keep &= state.run <= state.run[misclassified].min()
        state.keep(keep)
        return keep

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """A point on the sphere of radius eps around x (Linf: scaled uniform noise; L2: scaled Gaussian), clamped to [0, 1]."""
        if self.threat.norm == "Linf":
            noise = 2 * torch.rand(x.shape, generator=self.generator).to(x.device) - 1
        else:
            noise = torch.randn(x.shape, generator=self.generator).to(x.device)
        return (x + self.threat.eps * torch.ones_like(x) * self._unit(noise)).clamp(0.0, 1.0)

    def _unit(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` divided by its per-example norm (official ``normalize``)."""
        flat = v.view(len(v), -1)
        length = flat.abs().max(1)[0] if self.threat.norm == "Linf" else (flat ** 2).sum(-1).sqrt()
        return v / (length.view(-1, *[1] * (v.dim() - 1)) + DIVISION_GUARD)

    def _project(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The official projection onto the eps-ball around x, then the [0, 1] box."""
        eps = self.threat.eps
        if self.threat.norm == "Linf":
            return torch.clamp(torch.min(torch.max(v, x - eps), x + eps), 0.0, 1.0)
        delta = v - x
        length = (delta ** 2).view(len(delta), -1).sum(-1).sqrt().view(-1, *[1] * (v.dim() - 1))
        return torch.clamp(x + self._unit(delta) * torch.min(eps * torch.ones_like(x), length), 0.0, 1.0)

    def _momentum_step(self, state: _Active, i: int) -> torch.Tensor:
        """Alg. 1 lines 5-7: a projected step along the sign (Linf) / unit gradient (L2), mixed with the last move."""
        x, x_adv = state.x, state.x_adv
        weight = MOMENTUM if i > 0 else 1.0  # the first step has no momentum
        last_move = x_adv - state.x_prev
        direction = torch.sign(state.grad) if self.threat.norm == "Linf" else self._unit(state.grad)
        z = self._project(x_adv + state.step * direction, x)
        return self._project(x_adv + (z - x_adv) * weight + last_move * (1 - weight), x)

    def _loss_and_grad(self, x_adv, y, target, loss_of: Loss):
        """Logits and per-example loss of the last of ``eot_iter`` draws, and their mean gradient (EOT)."""
        x_adv = x_adv.detach().requires_grad_()
        grad = torch.zeros_like(x_adv)
        for _ in range(self.eot_iter):
            with torch.enable_grad():
                logits = self.model(x_adv)
                loss = loss_of(logits, y, target)
            grad += torch.autograd.grad(loss.sum(), [x_adv])[0].detach()
        grad /= float(self.eot_iter)
        return logits.detach(), loss.detach(), grad

    def _check_step_size(self, state: _Active, i: int, length: int) -> None:
        """Sec. 3.2, conditions 1 and 2: halve the step and go back to the best point where the loss stalled.

        Condition 1: the loss rose in at most ``rho`` of the last ``length`` steps. Row -1 of the
        history, compared with row 0 at the first checkpoint, is still zero there (official code).
        Condition 2: the step was not halved at the last checkpoint and the best loss has not grown since.
        """
        steps = torch.arange(i - length + 1, i + 1, device=state.losses.device)
        rises = (state.losses[steps] > state.losses[steps - 1]).float().sum(0)
        threshold = torch.full_like(rises, length * self.rho)  # rounded to float32, as in the official code
        halve = (rises <= threshold) | (~state.halved_at_check & (state.best_at_check >= state.loss_best))
        state.halved_at_check, state.best_at_check = halve, state.loss_best.clone()
        state.step[halve] /= 2.0
        state.x_adv[halve] = state.x_best[halve]
        state.grad[halve] = state.grad_best[halve]
