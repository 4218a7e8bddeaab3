"""Shared machinery of the momentum transfer-attack family (MI, VMI/VNI, DIM, TI-DIM, SI-NI-TI-DIM).

Images live in [0, 1]. The original TF code of these papers works in the Inception input space
[-1, 1], where a value of 0 is mid-grey; DI's zero padding and SI's scale copies both meet that
grey, so here they meet ``MID_GREY = 0.5`` (torchattacks uses 0, i.e. black).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack, Passes, gradient_steps
from robench.device_options import AUTO, TakesDeviceOptions, float32
from robench.hyper import check_positive, check_positive_int
from robench.threat import ThreatModel

LABEL_MODES = ("true", "pred")
MID_GREY = 0.5
# (x_t, x_look, rows) -> ĝ for the examples ``rows`` (indices into the batch) still attacked.
Direction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def input_gradient(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   transform=None) -> torch.Tensor:
    """Gradient at ``x`` of the batch-mean cross-entropy of ``model(transform(x))`` (a module or a wrapped call)."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x if transform is None else transform(x)), y)
    return torch.autograd.grad(loss, x)[0]


def l1_normalise(g: torch.Tensor) -> torch.Tensor:
    """``g / mean|g|`` per example; an all-zero gradient (saturated softmax) stays 0 instead of NaN."""
    mean = g.abs().mean(dim=tuple(range(1, g.dim())), keepdim=True)
    return g / torch.where(mean > 0, mean, torch.ones_like(mean))


def enlarge_and_pad(x: torch.Tensor, resize_rate: float) -> torch.Tensor:
    """DI's transform before resizing back: nearest-resize ``(H, W)`` to ``(H+k, W+k)``, pad to ``(H+E, W+E)``.

    ``E = int(W * resize_rate) - W`` (at least 1), ``k`` uniform in ``[0, E)``, the padding offset
    uniform, the padding mid-grey; one draw for the whole batch, as in the original.
    """
    h, w = x.shape[-2:]
    extra = max(int(w * resize_rate) - w, 1)
    k = int(torch.randint(0, extra, ()))
    top, left = (int(torch.randint(0, extra - k, ())) for _ in range(2))
    scaled = F.interpolate(x, size=(h + k, w + k), mode="nearest")
    return F.pad(scaled, (left, extra - k - left, top, extra - k - top), value=MID_GREY)


def diverse_input(x: torch.Tensor, *, resize_rate: float, p: float) -> torch.Tensor:
    """With probability ``p`` (once per batch) :func:`enlarge_and_pad`, then nearest-resize back to ``(H, W)``."""
    if not torch.rand(()) < p:
        return x
    return F.interpolate(enlarge_and_pad(x, resize_rate), size=x.shape[-2:], mode="nearest")


def gaussian_kernel(size: int, nsig: float = 3.0) -> torch.Tensor:
    """TI's ``gkern``: outer product of the normal pdf at ``size`` points of ``[-nsig, nsig]``, summing to 1."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    pdf = torch.exp(-t**2 / 2)  # the pdf's constant cancels in the normalisation
    kernel = torch.outer(pdf, pdf)
    return (kernel / kernel.sum()).float()


def smooth(g: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution of ``g`` (B, C, H, W) with ``kernel``, zero 'same' padding (TF's SAME)."""
    channels = g.shape[1]
    weight = kernel.to(g).expand(channels, 1, *kernel.shape)
    return F.conv2d(g, weight, padding="same", groups=channels)


class MomentumAttack(TakesDeviceOptions, Attack):
    """The MI-FGSM loop (Dong et al. 2018); subclasses change only the direction it accumulates.

    Each step: ``g ← decay·g + ĝ / mean|ĝ|``, ``x ← Π(x + α·sign(g))``, no random start, where
    ``ĝ = direction(x_t, x_look)`` and ``x_look = x_t + α·decay·g`` for Nesterov attacks (NI-FGSM)
    or ``x_t`` otherwise.

    Args:
        steps: iterations T.
        step_size: α; None means ``eps / steps`` (the RDP / original-paper setting).
        decay: momentum factor μ.
        label_mode: ``"true"`` ascends the loss of the given labels; ``"pred"`` that of the model's
            own prediction on the clean image, as the TF transfer-attack repositories do.
        clip_queries: clamp every point the attack queries besides its iterates (the Nesterov
            look-ahead, VT's neighbours) to the image bounds, as a defended pipeline accepts only
            images (robench's purifiers refuse anything else). ``False`` queries the unclamped
            points as the original code and torchattacks do (bit-identical to torchattacks on a
            bare model; a defense then refuses the query).
        early_stop: after each step, one float32 forward pass checks the iterates; an example the
            attacked model misclassifies keeps that iterate and leaves the batch. In the transfer
            setting that model is the source, and stopping there can weaken transfer: meant for
            white-box runs.
        autocast, channels_last, compile: the device options of :mod:`robench.device_options`
            (``auto``: bf16 and channels_last on CUDA, all off on CPU); the gradients, the momentum
            and the step stay float32.
    """

    norms = ("Linf",)
    kind = "transfer"
    nesterov = False

    def __init__(self, *, steps: int = 10, step_size: float | None = None, decay: float = 1.0,
                 label_mode: str = "true", clip_queries: bool = True, early_stop: bool = False,
                 autocast: str | None = AUTO, channels_last: bool | str = AUTO, compile: bool | str = False):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size, optional=True)
        if not decay >= 0:
            raise ValueError(f"decay must be non-negative, got {decay!r}")
        if label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {', '.join(LABEL_MODES)}, got {label_mode!r}")
        self.steps = steps
        self.step_size = step_size
        self.decay = decay
        self.label_mode = label_mode
        self.clip_queries = bool(clip_queries)
        self.early_stop = bool(early_stop)
        self.set_device_options(autocast=autocast, channels_last=channels_last, compile=compile)

    def passes(self, n: int, eot: int = 1) -> Passes:
        per_step = gradient_steps(n * eot, self.gradients_per_step) + Passes(n * eot * self.early_stop)
        return per_step * self.steps + Passes(n * eot * (self.label_mode == "pred"))

    @property
    def gradients_per_step(self) -> int:
        """Gradients of ``n`` examples one :meth:`direction` call computes (its copies batched as one)."""
        return 1

    def query(self, x: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        """A point to query besides the iterates: clamped to the image bounds unless ``clip_queries`` is off."""
        return x.clamp(*threat.bounds) if self.clip_queries else x

    def direction(self, model: Callable[[torch.Tensor], torch.Tensor], y: torch.Tensor,
                  threat: ThreatModel) -> Direction:
        """The function ``(x_t, x_look, rows) -> ĝ`` for one run (it may keep state across steps).

        ``model`` is the attacked model under the device options; ``y`` the labels of the whole
        batch, of which ``rows`` are the examples ``x_t`` and ``x_look`` hold.
        """
        return lambda x_t, x_look, rows: input_gradient(model, x_look, y[rows])

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        if self.label_mode == "pred":
            with torch.no_grad():
                y = model(x).argmax(dim=1)
        alpha = threat.eps / self.steps if self.step_size is None else self.step_size
        forward = self.device_options(x.device).wrap(model)
        direction = self.direction(forward, y, threat)
        momentum = torch.zeros_like(x)
        out, x_adv = x.clone(), x.clone()
        rows = torch.arange(len(x), device=x.device)
        for _ in range(self.steps):
            x_look = self.query(x_adv + (self.decay * alpha) * momentum, threat) if self.nesterov else x_adv
            # Same operation order as torchattacks, so equal settings give bit-identical examples.
            momentum = l1_normalise(direction(x_adv, x_look, rows)) + momentum * self.decay
            x_adv = threat.project(x_adv + alpha * momentum.sign(), x)
            if self.early_stop:
                with torch.no_grad(), float32():
                    broken = forward(x_adv).argmax(dim=1) != y[rows]
                out[rows[broken]] = x_adv[broken]
                keep = ~broken
                rows, x, x_adv, momentum = rows[keep], x[keep], x_adv[keep], momentum[keep]
                if not len(rows):
                    return out
        out[rows] = x_adv
        return out


def check_probability(name: str, p: float) -> None:
    if not 0 <= p <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {p!r}")


