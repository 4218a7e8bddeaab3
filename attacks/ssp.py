"""Self-supervised perturbation (Naseer et al., "A Self-supervised Approach for Adversarial
Robustness", CVPR 2020): the feature-distortion attack that trains NRP and RDP (RDP Eq. 1)."""

import torch
import torch.nn.functional as F
from torch import nn

from robench.attack import Attack
from robench.features import VGG16, check_features, feature_extractor
from robench.hyper import check_positive, check_positive_int
from robench.pgd_kernel import ascend
from robench.threat import ThreatModel


class SSP(Attack):
    """Maximise the distance between the features of the perturbed and the clean image.

    As in NRP's ``ssp.py`` (specs D14): start from a pure Gaussian-noise image projected onto the
    eps-ball (16/255 in NRP) around the clean image, take ``steps`` (100) steps of ``step_size``
    (0.01) along the sign of the gradient of the feature MSE, projecting after each step. It uses
    no label and ignores the attacked classifier: the perturbation comes from the feature network
    alone, so it is a transfer attack. ``features`` names the frozen feature extractor
    (:mod:`robench.features`): ``vgg16`` (default: torchvision's ImageNet VGG-16 up to relu3_3,
    downloaded on first use, as NRP), ``vgg16:pretrained=false`` (random weights, tests only) or a
    registered classifier's layer (``resnet18-standard:layer=net.layer2``), which RDP's training
    uses offline and on CIFAR.
    """

    kind = "transfer"
    norms = ("Linf",)

    def __init__(self, *, steps: int = 100, step_size: float = 0.01, features: str = VGG16):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size
        self.features_spec = str(check_features(features))
        self._features: nn.Module | None = None

    def features(self, device: torch.device) -> nn.Module:
        """The frozen feature extractor, built on first use and moved to ``device``."""
        if self._features is None:
            self._features = feature_extractor(self.features_spec)
        return self._features.to(device)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        features = self.features(x.device)
        with torch.no_grad():
            clean = features(x)
        return ascend(lambda x_adv: F.mse_loss(features(x_adv), clean), x, threat, steps=self.steps,
                      step_size=self.step_size, start="noise-image")
