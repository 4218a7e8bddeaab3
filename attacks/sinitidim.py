"""SI-NI-TI-DIM (Lin et al., "Nesterov Accelerated Gradient and Scale Invariance for Adversarial
Attacks", ICLR 2020; code JHL-HUST/SI-NI-FGSM and JHL-HUST/VT ni_di_ti_si_fgsm.py)."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attacks._momentum import MID_GREY, Direction, smooth
from robench.hyper import check_positive_int
from robench.attacks.tidim import TIDIM
from robench.device_options import AUTO
from robench.threat import ThreatModel


def scale_copies(x: torch.Tensor, scales: int) -> torch.Tensor:
    """SI's copies ``0.5 + (x − 0.5)/2^i``, i < ``scales``, stacked to (scales·B, C, H, W).

    The original divides the [-1, 1] Inception input by 2^i, which scales towards mid-grey;
    torchattacks' ``SINIFGSM`` divides the [0, 1] image, which scales towards black.
    """
    return torch.cat([MID_GREY + (x - MID_GREY) / 2**i for i in range(scales)])


class SINITIDIM(TIDIM):
    """Scale-invariant Nesterov TI-DIM, RDP's "SINI-TIDIM (scale = 5)".

    Per step: ``x_nes = x_t + α·μ·g``; ``ĝ = W * Σ_i ∇L(DI_i(S_i(x_nes)))`` over the scale copies
    ``S_i`` (:func:`scale_copies`), each copy with its own diverse-input draw; then
    ``g ← μ·g + ĝ/mean|ĝ|`` and ``x ← Π(x + α·sign(g))``. The copies go through the model in one
    batch.

    Deviations from torchattacks (which has SINIFGSM but no SI-NI-TI-DIM): scale copies towards
    mid-grey (see :func:`scale_copies`); the copies' gradients summed as in the original
    (torchattacks averages; the L1 normalisation removes the factor m, so only rounding
    differs); the TI kernel and diverse input of
    :class:`TIDIM` with the SI-NI/VT repositories' settings: a 7×7 kernel, p = 0.5, padded size
    331/299. With ``label_mode="pred"`` the label is the prediction on the clean image (the
    repositories take it from the first, diversified, look-ahead input, which equals the clean
    image up to the DI draw).

    Args:
        steps, step_size, decay, diversity_prob, resize_rate, kernel_size, nsig, label_mode: as
            :class:`TIDIM`, with the defaults above.
        scales: number m of scale copies (5).
        clip_queries, early_stop, autocast, channels_last, compile: as
            :class:`robench.attacks._momentum.MomentumAttack` (device options ``auto``: bf16 and
            channels_last on CUDA, all off on CPU).
    """

    version = "2"  # 2: the Nesterov look-ahead clamped to the image bounds (clip_queries)
    nesterov = True

    def __init__(self, *, steps: int = 10, step_size: float | None = None, decay: float = 1.0,
                 scales: int = 5, diversity_prob: float = 0.5, resize_rate: float = 331 / 299,
                 kernel_size: int = 7, nsig: float = 3.0, label_mode: str = "true", clip_queries: bool = True,
                 early_stop: bool = False, autocast: str | None = AUTO, channels_last: bool | str = AUTO,
                 compile: bool | str = False):
        super().__init__(steps=steps, step_size=step_size, decay=decay, diversity_prob=diversity_prob,
                         resize_rate=resize_rate, kernel_size=kernel_size, nsig=nsig, label_mode=label_mode,
                         early_stop=early_stop, autocast=autocast, channels_last=channels_last, compile=compile)
        check_positive_int("scales", scales)
        self.scales = scales
        self.clip_queries = bool(clip_queries)  # DIM and TI-DIM query no look-ahead, so only SI-NI takes it

    @property
    def gradients_per_step(self) -> int:
        return self.scales  # the scaled copies go through the model as one batch

    def direction(self, model: nn.Module, y: torch.Tensor, threat: ThreatModel) -> Direction:
        kernel = self.kernel

        def summed(x_t: torch.Tensor, x_look: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            x_look = x_look.detach().requires_grad_(True)
            copies = scale_copies(x_look, self.scales).chunk(self.scales)
            logits = model(torch.cat([self.transform(c) for c in copies]))
            # Sum over copies of each copy's batch-mean cross-entropy, as the original.
            labels = y[rows]
            loss = F.cross_entropy(logits, labels.repeat(self.scales), reduction="sum") / len(labels)
            return smooth(torch.autograd.grad(loss, x_look)[0], kernel)

        return summed
