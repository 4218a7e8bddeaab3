"""VMI-FGSM and VNI-FGSM (Wang & He, "Enhancing the Transferability of Adversarial Attacks through
Variance Tuning", CVPR 2021; code JHL-HUST/VT)."""

import torch
from torch import nn

from robench.attacks._momentum import Direction, MomentumAttack, input_gradient
from robench.hyper import check_positive_int
from robench.device_options import AUTO
from robench.threat import ThreatModel


class VMIFGSM(MomentumAttack):
    """Variance-tuned MI-FGSM: ``g ← μ·g + (ĝ + v)/mean|ĝ + v|``, ``v ← mean_i ∇L(x_t + r_i) − ĝ``.

    ``r_i ~ U(−β·eps, β·eps)^d``; the N neighbours are taken around ``x_t`` (also for VNI), are
    clamped to the image bounds unless ``clip_queries=false`` (the original does not clamp them,
    but a defended pipeline accepts only images), and are evaluated one after another (as torchattacks does, so
    one seed gives bit-identical examples, and memory stays that of one batch at N = 20).
    Deviation from ``torchattacks.VMIFGSM``: the original's N = 20 by default (torchattacks: 5),
    and ``α = eps / T`` (torchattacks: 2/255).

    Args:
        steps, step_size, decay, label_mode: as :class:`robench.attacks.mifgsm.MIFGSM`.
        N: neighbours sampled per step (20, the VT repository; DIR's setting is unstated).
        beta: neighbourhood radius in units of eps (1.5).
        clip_queries, early_stop, autocast, channels_last, compile: as
            :class:`robench.attacks._momentum.MomentumAttack` (device options ``auto``: bf16 and
            channels_last on CUDA, all off on CPU).
    """

    version = "2"  # 2: neighbours clamped to the image bounds (clip_queries)

    def __init__(self, *, steps: int = 10, step_size: float | None = None, decay: float = 1.0,
                 N: int = 20, beta: float = 1.5, label_mode: str = "true", clip_queries: bool = True,
                 early_stop: bool = False, autocast: str | None = AUTO, channels_last: bool | str = AUTO,
                 compile: bool | str = False):
        super().__init__(steps=steps, step_size=step_size, decay=decay, label_mode=label_mode,
                         clip_queries=clip_queries, early_stop=early_stop, autocast=autocast,
                         channels_last=channels_last, compile=compile)
        check_positive_int("N", N)
        if not beta >= 0:
            raise ValueError(f"beta must be non-negative, got {beta!r}")
        self.N = N
        self.beta = beta

    @property
    def gradients_per_step(self) -> int:
        return 1 + self.N  # the gradient at x_look and one per neighbour

    def direction(self, model: nn.Module, y: torch.Tensor, threat: ThreatModel) -> Direction:
        radius = self.beta * threat.eps
        variance = None

        def tuned(x_t: torch.Tensor, x_look: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            nonlocal variance
            labels = y[rows]
            g = input_gradient(model, x_look, labels)
            tuned_g = g if variance is None else g + variance[rows]
            neighbours = torch.zeros_like(g)
            for _ in range(self.N):
                # randn_like(...).uniform_ draws as torchattacks does: same seed, same neighbours.
                neighbour = self.query(x_t + torch.randn_like(x_t).uniform_(-radius, radius), threat)
                neighbours += input_gradient(model, neighbour, labels)
            if variance is None:  # one row per example of the batch; early stop reads the rows still attacked
                variance = torch.empty((len(y), *g.shape[1:]), dtype=g.dtype, device=g.device)
            variance[rows] = neighbours / self.N - g
            return tuned_g

        return tuned


class VNIFGSM(VMIFGSM):
    """Variance-tuned NI-FGSM: :class:`VMIFGSM` with ĝ taken at the look-ahead ``x_t + α·μ·g``.

    Deviations from ``torchattacks.VNIFGSM``: N = 20 by default (torchattacks: 5), ``α = eps / T``.
    """

    nesterov = True
