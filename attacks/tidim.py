"""TI-DIM (Dong et al., "Evading Defenses to Transferable Adversarial Examples by
Translation-Invariant Attacks", CVPR 2019; code dongyp13/Translation-Invariant-Attacks)."""

import torch
from torch import nn

from robench.attacks._momentum import Direction, gaussian_kernel, input_gradient, smooth
from robench.attacks.dim import DIM
from robench.device_options import AUTO
from robench.threat import ThreatModel


class TIDIM(DIM):
    """DIM whose raw gradient is convolved with a Gaussian kernel W before the L1 normalisation.

    ``ĝ = W * ∇L(DI(x_t))`` (depthwise, same kernel per channel, zero 'same' padding),
    ``g ← μ·g + ĝ/mean|ĝ|``. W is TI's ``gkern(kernel_size, nsig)``: the normal pdf sampled at
    ``kernel_size`` points of ``[-nsig, nsig]``, outer product, normalised to sum 1.

    Deviations from ``torchattacks.TIFGSM`` (same kernel, same place of the convolution): decay 1
    (torchattacks: 0, i.e. no momentum), ``α = eps / T``, p = 0.7, and the diverse input of
    :class:`robench.attacks.dim.DIM` (enlarge with nearest resizing and grey padding, then resize
    back; torchattacks shrinks, bilinear, black padding).

    Args:
        steps, step_size, decay, diversity_prob, resize_rate, label_mode: as :class:`DIM`; the TI
            repository's flag is p = 0.4, robench follows the TI paper / RDP's DIM with 0.7.
        kernel_size: side of the Gaussian kernel (15, the TI repository).
        nsig: half-width of the sampled interval in standard deviations (3).
        early_stop, autocast, channels_last, compile: as :class:`robench.attacks._momentum.MomentumAttack`
            (device options ``auto``: bf16 and channels_last on CUDA, all off on CPU).
    """

    version = "1"

    def __init__(self, *, steps: int = 10, step_size: float | None = None, decay: float = 1.0,
                 diversity_prob: float = 0.7, resize_rate: float = 330 / 299, kernel_size: int = 15,
                 nsig: float = 3.0, label_mode: str = "true", early_stop: bool = False,
                 autocast: str | None = AUTO, channels_last: bool | str = AUTO, compile: bool | str = False):
        super().__init__(steps=steps, step_size=step_size, decay=decay, diversity_prob=diversity_prob,
                         resize_rate=resize_rate, label_mode=label_mode, early_stop=early_stop,
                         autocast=autocast, channels_last=channels_last, compile=compile)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
        if not nsig > 0:
            raise ValueError(f"nsig must be positive, got {nsig!r}")
        self.kernel_size = kernel_size
        self.nsig = nsig

    @property
    def kernel(self) -> torch.Tensor:
        """The (kernel_size, kernel_size) smoothing kernel W."""
        return gaussian_kernel(self.kernel_size, self.nsig)

    def direction(self, model: nn.Module, y: torch.Tensor, threat: ThreatModel) -> Direction:
        kernel = self.kernel
        return lambda x_t, x_look, rows: smooth(input_gradient(model, x_look, y[rows], self.transform), kernel)
