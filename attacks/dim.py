"""DIM: diverse-input MI-FGSM (Xie et al., "Improving Transferability of Adversarial Examples with
Input Diversity", CVPR 2019)."""

import torch
from torch import nn

from robench.attacks._momentum import Direction, MomentumAttack, check_probability, diverse_input, input_gradient
from robench.device_options import AUTO
from robench.threat import ThreatModel


class DIM(MomentumAttack):
    """MI-FGSM whose gradient is taken through a random resize-and-pad of the input.

    With probability ``diversity_prob`` (one draw per batch, like every random choice of the
    original TF transform), the image is nearest-resized from W to a random ``rnd`` in
    ``[W, int(W·resize_rate))``, padded at a random offset to ``int(W·resize_rate)`` and
    nearest-resized back to W; gradients flow through it to the image.

    Deviations from ``torchattacks.DIFGSM`` (which shrinks to ``[0.9W, W)`` with bilinear
    resizing, pads with black, and defaults to decay 0, p 0.5, α 2/255):

    - the image is *enlarged* (resize_rate 330/299, as the DI and TI repositories' 299 → 330),
      nearest-neighbour as in the original;
    - padding is mid-grey, the original's zero in the [-1, 1] Inception input space;
    - the padded image is resized back to W before the model, as the SI-NI and VT repositories
      do (the DI/TI repositories feed 330×330 to the Inception nets; robench's classifiers take
      a fixed input size);
    - momentum μ = 1, ``α = eps / T`` and p = 0.7, the RDP / TI-paper setting (the DI²-FGSM
      repository has p = 0.5 and no momentum: set ``decay=0, diversity_prob=0.5``).

    Args:
        steps, step_size, decay, label_mode: as :class:`robench.attacks.mifgsm.MIFGSM`.
        diversity_prob: probability p of transforming the input at a step (0.7).
        resize_rate: padded size over image size, > 1 (330/299).
        early_stop, autocast, channels_last, compile: as :class:`robench.attacks._momentum.MomentumAttack`
            (device options ``auto``: bf16 and channels_last on CUDA, all off on CPU).
    """

    version = "1"

    def __init__(self, *, steps: int = 10, step_size: float | None = None, decay: float = 1.0,
                 diversity_prob: float = 0.7, resize_rate: float = 330 / 299, label_mode: str = "true",
                 early_stop: bool = False, autocast: str | None = AUTO, channels_last: bool | str = AUTO,
                 compile: bool | str = False):
        super().__init__(steps=steps, step_size=step_size, decay=decay, label_mode=label_mode,
                         early_stop=early_stop, autocast=autocast, channels_last=channels_last, compile=compile)
        check_probability("diversity_prob", diversity_prob)
        if not resize_rate > 1:
            raise ValueError(f"resize_rate must exceed 1 (DI enlarges the image), got {resize_rate!r}")
        self.diversity_prob = diversity_prob
        self.resize_rate = resize_rate

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """The diverse-input transform of one forward pass (same shape as ``x``)."""
        return diverse_input(x, resize_rate=self.resize_rate, p=self.diversity_prob)

    def direction(self, model: nn.Module, y: torch.Tensor, threat: ThreatModel) -> Direction:
        return lambda x_t, x_look, rows: input_gradient(model, x_look, y[rows], self.transform)
