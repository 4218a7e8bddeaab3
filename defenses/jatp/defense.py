"""The ``jatp`` defense: JATP's pre-processor, a reconstruction on HGD's DUNET (Zhou et al. 2021; specs A6)."""

from __future__ import annotations

from robench.defenses.hgd import HGD


class JATP(HGD):
    """JATP (Zhou et al., "Improving White-box Robustness of Pre-processing Defenses via Joint
    Adversarial Training", arXiv 2106.05453): a pre-processing denoiser trained on full adversarial
    examples of the pre-processed model, with a feature-similarity risk and a pixel loss.

    **A reconstruction from the paper's abstract, not a faithful reproduction**: the
    pre-processor's architecture, the loss weights, the feature layer and the schedule are not
    public (specs A6). robench's choice: HGD's DUNET (Liao et al. 2018, the same network as
    ``hgd``, built for ``input_size=32``), output ``x + correction(x)`` clamped to [0, 1];
    deterministic and differentiable, so white-box attacks go through it. The training
    (``robench train jatp``) names every unverified element as an option.

    Args:
        input_size: side of the square images (32: CIFAR-10 and SVHN, JATP's datasets).
        width: channels of the DUNET's first stage (64, HGD's).
        init_seed: seed of the random initialisation (0).
        weights: a checkpoint of ``robench train jatp`` (``weights_only``; its sha256 in the cell key).
    """

    version = "1"
    trainer = "robench.defenses.jatp.trainer:JATPTraining"

    def __init__(self, *, input_size: int = 32, width: int = 64, init_seed: int = 0, weights: "str | None" = None):
        super().__init__(input_size=input_size, width=width, init_seed=init_seed, weights=weights)
