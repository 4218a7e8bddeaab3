"""PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from robench import pgd_kernel
from robench.attack import Attack, Passes, gradient_steps
from robench.device_options import AUTO, DeviceOptions, TakesDeviceOptions
from robench.hyper import check_positive, check_positive_int
from robench.threat import ThreatModel

class PGD(TakesDeviceOptions, Attack):
    """Projected gradient ascent on the cross-entropy (Madry et al. 2018).

    When neither ``early_stop`` nor a device option is on, this is torchattacks.PGD (Linf) /
    PGDL2 (L2), unchanged: the CPU default. Otherwise it runs :func:`pgd_loop`, robench's own
    loop with the same update rule and the same random start (drawn as torchattacks draws it).
    robench implements that loop itself because torchattacks has no early stop and no
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
            Under autocast an example is only dropped once a float32 forward pass agrees.
        autocast, channels_last, compile: the device options of :mod:`robench.device_options`
            (``auto``: bf16 and channels_last on CUDA, all off on CPU). The input, its gradient,
            the step and the projection stay float32, so the result lies in the threat model;
            the returned images keep the layout of ``x``. A model that calls ``.view`` on a
            channels-last activation raises; give it ``channels_last=false``.
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
        autocast: str | None = AUTO,
        channels_last: bool | str = AUTO,
        compile: bool | str = False,
    ):
        check_positive_int("steps", steps)
        check_positive_int("restarts", restarts)
        check_positive("step_size", step_size, optional=True)
        self.set_device_options(autocast=autocast, channels_last=channels_last, compile=compile)
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.restarts = restarts
        self.targeted = targeted
        self.early_stop = bool(early_stop)

    def native(self, device: "torch.device | str") -> bool:
        """True when robench's own loop runs on ``device`` (early stop or a device option on); False: torchattacks."""
        return self.early_stop or self.device_options(device).on

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        options = self.device_options(x.device)
        if options.channels_last and x.dim() != 4:
            raise ValueError(f"channels_last needs 4-D images (B, C, H, W); got shape {tuple(x.shape)}")
        # torchattacks has no early stop and no autocast, so any of them runs robench's own
        # loop; with all of them off the torchattacks path stays, equal to calling it directly.
        attack = None if self.native(x.device) else self._torchattack(model, threat)
        goal = self._targets(model, x, y) if self.targeted else y
        best = x.clone()
        pending = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            if attack is None:
                x_adv = pgd_loop(
                    model, x[pending], goal[pending], threat, steps=self.steps,
                    step_size=self._step_size(threat), random_start=self.random_start, targeted=self.targeted,
                    early_stop=self.early_stop, options=options,
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
        """Per restart: ``steps`` gradient steps (and with early stop under autocast, a float32 check each) and,
        between restarts, one check; an upper bound when early stop or restarts skip broken examples."""
        checks = self.steps if self.early_stop and self.autocast not in (None, "off") else 0
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
    options: DeviceOptions = DeviceOptions(),
) -> torch.Tensor:
    """PGD with torchattacks' update rule, plus early stop and the device options (see :class:`PGD`).

    Written here rather than called from torchattacks, which has none of these options; the
    loop is :func:`robench.pgd_kernel.ascend`. ``x`` (B, C, H, W) in the threat model's bounds;
    ``goal`` (B,) the true labels, or the target labels when ``targeted``. Returns the
    adversarial images (B, C, H, W), float32, laid out as ``x``.
    """
    if len(x) == 0:
        return x.clone()
    forward = options.wrap(model)
    total = len(x)

    def loss_of(x_adv: torch.Tensor, rows: torch.Tensor | None = None):
        labels = goal if rows is None else goal[rows]
        logits = forward(x_adv)
        # Summed and divided by the whole batch: each example's gradient is what torchattacks'
        # mean over the full batch gives it, however many examples early stop has dropped.
        loss = F.cross_entropy(logits.float(), labels, reduction="sum") / total
        loss = -loss if targeted else loss
        if rows is None:
            return loss
        # The forward pass just made scores the current iterate: reusing it costs each broken
        # example one wasted backward pass, where a separate check would cost every step one
        # more forward pass over the whole active batch.
        prediction = logits.detach().argmax(dim=1)
        return loss, prediction == labels if targeted else prediction != labels

    return pgd_kernel.ascend(loss_of, x, threat, steps=steps, step_size=step_size,
                             start="uniform" if random_start else "none", early_stop=early_stop,
                             confirm=early_stop and options.autocast is not None)
