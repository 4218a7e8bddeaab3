"""Self-supervised perturbation (Naseer et al., "A Self-supervised Approach for Adversarial
Robustness", CVPR 2020): the feature-distortion attack that trains NRP and RDP (RDP Eq. 1)."""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from robench.attack import Attack
from robench.hyper import check_positive, check_positive_int
from robench.threat import ThreatModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VGG16_RELU3_3 = 16  # torchvision vgg16().features[:16] ends at relu3_3, the layer NRP uses


class SSP(Attack):
    """Maximise the distance between VGG-16 relu3_3 features of the perturbed and the clean image.

    As in NRP's ``ssp.py`` (specs D14): start from a pure Gaussian-noise image, take ``steps``
    (100) steps of ``step_size`` (0.01) along the sign of the gradient of the feature MSE, and
    project onto the eps-ball (16/255 in NRP) around the clean image after each step. It uses
    no label and ignores the attacked classifier: the perturbation comes from the feature
    network alone, so it is a transfer attack. ``pretrained=True`` loads torchvision's ImageNet
    VGG-16 (downloaded on first use); ``pretrained=False`` keeps random weights (tests only).
    """

    kind = "transfer"
    norms = ("Linf",)

    def __init__(self, *, steps: int = 100, step_size: float = 0.01, pretrained: bool = True):
        check_positive_int("steps", steps)
        check_positive("step_size", step_size)
        self.steps = steps
        self.step_size = step_size
        self.pretrained = pretrained
        self._features: nn.Module | None = None

    def features(self, device: torch.device) -> nn.Module:
        """The frozen VGG-16 feature extractor up to relu3_3, with ImageNet normalisation inside."""
        if self._features is None:
            weights = torchvision.models.VGG16_Weights.IMAGENET1K_V1 if self.pretrained else None
            vgg = torchvision.models.vgg16(weights=weights).features[:VGG16_RELU3_3]
            self._features = _Normalised(vgg).eval().requires_grad_(False)
        return self._features.to(device)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
        features = self.features(x.device)
        with torch.no_grad():
            clean = features(x)
        x_adv = threat.project(torch.randn_like(x), x)
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.mse_loss(features(x_adv), clean)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = threat.project(x_adv.detach() + self.step_size * grad.sign(), x)
        return x_adv


class _Normalised(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
