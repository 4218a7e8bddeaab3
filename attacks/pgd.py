"""PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robench import pgd_kernel
from robench.attack import Attack, Passes, gradient_steps
from robench.hyper import check_positive, check_positive_int
from robench.threat import ThreatModel

AUTOCAST = {None: None, "bf16": torch.bfloat16}


class PGD(Attack):
    """Projected gradient ascent on the cross-entropy (Madry et al. 2018).

    With every speed option off, this is torchattacks.PGD (Linf) / PGDL2 (L2), unchanged. With
    any of ``early_stop``, ``autocast`` or ``channels_last`` on, it runs :func:`pgd_loop`, robench's
    own loop with the same update rule and the same random start (drawn as torchattacks draws
    it). robench implements that loop itself because torchattacks has no early stop and no
    autocast: its PGD always runs every step on the whole batch in float32.

    Args:
        steps: iterations (DIR evaluates with 20 and trains with 5; RDP Table 4 uses 10).
        step_size: per-step size; None means 2/255 for Linf (DIR, torchattacks) and eps/5 for L2
            (torchattacks' PGDL2 ratio).
        random_start: start uniformly in the eps-ball (Madry et al.; torchattacks' default).
        restarts: independent runs; an example counts as broken by the first run that breaks it.
        targeted: descend the cross-entropy of a target label drawn uniformly among the wrong
            classes (Xie et al. 2019a, RDP Table 4); robustness is still scored on the true label.
        early_stop: keep each example's first iterate that is misclassified (targeted: classified
            as the target) and drop it from the batch, so later steps cost less. Examples never
            broken end on the same iterate as without it. On a stochastic pipeline (or an EOT
            view) "misclassified" is judged on the draw the step's forward pass saw; the runner's
            re-scoring of every returned example through the real pipeline decides robustness.
        autocast: None (float32) or ``"bf16"``: forward and backward under
            ``torch.autocast(device, torch.bfloat16)`` on CPU or CUDA; the input, its gradient,
            the step and the projection stay float32, so the result lies in the threat model.
            With ``early_stop``, an example is only dropped once a float32 forward pass agrees
            it is broken. Fast on GPUs and CPUs with native bf16; much slower on CPUs without it.
        channels_last: give the model its input in ``torch.channels_last`` memory format (4-D
            images only). Only the input tensor is converted, never the model: the model may be
            shared by other cells and views (Pipeline, EOT), and convolutions follow the input's
            format anyway. A model that calls ``.view`` on a channels-last activation raises; use
            the default format for it. The returned images keep the layout of ``x``.
    """

    def __init__(
        self,
        *,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        restarts: int = 1,
        targeted: bool = False,
        early_stop: bool = False,
        autocast: str | None = None,
        channels_last: bool = False,
    ):
        check_positive_int("steps", steps)
        check_positive_int("restarts", restarts)
        check_positive("step_size", step_size, optional=True)
        if autocast not in AUTOCAST:
            raise ValueError(f"autocast must be None or 'bf16', got {autocast!r}")
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.restarts = restarts
        self.targeted = targeted
        self.early_stop = bool(early_stop)
        self.autocast = autocast
        self.channels_last = bool(channels_last)

    @property
    def native(self) -> bool:
        """True when robench's own loop runs (any speed option on); False: torchattacks."""
        return self.early_stop or self.autocast is not None or self.channels_last

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        if self.channels_last and x.dim() != 4:
            raise ValueError(f"channels_last needs 4-D images (B, C, H, W); got shape {tuple(x.shape)}")
        # torchattacks has no early stop and no autocast, so any speed option runs robench's own
        # loop; with all of them off the torchattacks path stays, equal to calling it directly.
        attack = None if self.native else self._torchattack(model, threat)
        goal = self._targets(model, x, y) if self.targeted else y
        best = x.clone()
        pending = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            if attack is None:
                x_adv = pgd_loop(
                    model, x[pending], goal[pending], threat, steps=self.steps,
                    step_size=self._step_size(threat), random_start=self.random_start, targeted=self.targeted,
                    early_stop=self.early_stop, autocast=self.autocast, channels_last=self.channels_last,
                )
            else:
                if self.targeted:
                    attack.set_mode_targeted_by_function(lambda inputs, labels, g=goal[pending]: g, quiet=True)
                x_adv = attack(x[pending], y[pending])
            index = pending.nonzero().flatten()
            best[index] = x_adv
            if self.restarts == 1:
                break
            with torch.no_grad():
                prediction = model(x_adv).argmax(dim=1)
            done = prediction == goal[index] if self.targeted else prediction != y[index]
            pending[index[done]] = False
            if not pending.any():
                break
        return best

    def passes(self, n: int, eot: int = 1) -> Passes:
        """Per restart: ``steps`` gradient steps (and with early stop under bf16, a float32 check each) and,
        between restarts, one check; an upper bound when early stop or restarts skip broken examples."""
        checks = self.steps if self.early_stop and self.autocast is not None else 0
        run = gradient_steps(n * eot, self.steps) + Passes(n * eot * (checks + (self.restarts > 1)))
        return run * self.restarts + Passes(eot * self.targeted)  # targeted: one probe of x[:1] for the classes

    @staticmethod
    def _targets(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Target labels drawn uniformly among the classes other than ``y``."""
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        return (y + torch.randint(1, classes, y.shape, device=y.device)) % classes

    def _step_size(self, threat: ThreatModel) -> float:
        if self.step_size is not None:
            return self.step_size
        return 2 / 255 if threat.norm == "Linf" else threat.eps / 5

    def _torchattack(self, model: nn.Module, threat: ThreatModel) -> torchattacks.attack.Attack:
        cls = torchattacks.PGD if threat.norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=threat.eps, alpha=self._step_size(threat), steps=self.steps,
                   random_start=self.random_start)


def pgd_loop(
    model: nn.Module,
    x: torch.Tensor,
    goal: torch.Tensor,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    random_start: bool = True,
    targeted: bool = False,
    early_stop: bool = False,
    autocast: str | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """PGD with torchattacks' update rule, plus early stop, bf16 autocast and channels_last (see :class:`PGD`).

    Written here rather than called from torchattacks, which has none of the three options; the
    start, step and projection are :mod:`robench.pgd_kernel`'s.
    ``x`` (B, C, H, W) in the threat model's bounds; ``goal`` (B,) the true labels, or the target
    labels when ``targeted``. Returns the adversarial images (B, C, H, W), float32, laid out as ``x``.
    """
    total = len(x)
    out = x.clone()
    if total == 0:
        return out
    dtype = AUTOCAST[autocast]
    # Drawn on the input as given, before any layout change, exactly as torchattacks draws it.
    x_adv = pgd_kernel.random_start(x, threat, "uniform" if random_start else "none")
    if channels_last:
        x, x_adv = (t.contiguous(memory_format=torch.channels_last) for t in (x, x_adv))
    active = torch.arange(total, device=x.device)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.autocast(x.device.type, dtype=dtype) if dtype is not None else nullcontext():
            logits = model(x_adv)
        # Summed and divided by the whole batch: each example's gradient is what torchattacks'
        # mean over the full batch gives it, however many examples early stop has dropped.
        loss = F.cross_entropy(logits.float(), goal, reduction="sum") / total
        (grad,) = torch.autograd.grad(-loss if targeted else loss, x_adv)
        x_adv = x_adv.detach()
        if early_stop:
            # The forward pass just made scores the current iterate: broken ones are kept as
            # they are (their first successful iterate) and leave the batch before the next step.
            # Reusing it costs each broken example one wasted backward pass, where a separate
            # check would cost every step one more forward pass over the whole active batch.
            done = _broken(model, x_adv, logits.detach(), goal, targeted, confirm=dtype is not None)
            if done.any():
                out[active[done]] = x_adv[done]
                keep = ~done
                active, x, x_adv, goal, grad = active[keep], x[keep], x_adv[keep], goal[keep], grad[keep]
                if not len(active):
                    return out
        x_adv = pgd_kernel.step(x_adv, x, grad, threat, step_size)
    out[active] = x_adv
    return out


def _broken(
    model: nn.Module, x_adv: torch.Tensor, logits: torch.Tensor, goal: torch.Tensor, targeted: bool, *, confirm: bool
) -> torch.Tensor:
    """Which iterates are misclassified (targeted: hit ``goal``); ``confirm`` re-checks candidates in float32."""

    def hit(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        prediction = scores.argmax(dim=1)
        return prediction == labels if targeted else prediction != labels

    done = hit(logits, goal)
    if confirm and done.any():  # a bf16 forward pass alone must not end an example's attack
        index = done.nonzero().flatten()
        with torch.no_grad():
            done[index] = hit(model(x_adv[index]), goal[index])
    return done
