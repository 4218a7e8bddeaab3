"""CIFAR / SVHN / MNIST classifier factories: published weights, and trainable architectures.

The trainable factories (``resnet18``, ``preact-resnet18``, ``wrn-34-10``, ``resnet20``,
``small-cnn``) take ``weights=None`` for a freshly initialised network (for training) or
``weights=PATH`` for a state dict written by training (``torch.save(model.state_dict())``;
loaded with ``weights_only=True``); a ``<checkpoint stem>.json`` model card beside it is
exposed as ``classifier.card``. They accept 32x32 RGB images whatever the dataset (CIFAR-10,
SVHN), and normalise inside exactly as the code they follow trains them.
"""

from __future__ import annotations

from pathlib import Path

from robench.archs.cifar_resnet import resnet18 as cifar_resnet18
from robench.archs.preact_resnet import preact_resnet18 as preact_resnet18_arch
from robench.archs.resnet_akamaster import resnet_cifar
from robench.archs.small_cnn import SmallCNN, cifar_small_cnn, mnist_small_cnn
from robench.archs.templates import NearestTemplate, class_templates
from robench.archs.wide_resnet import wrn_34_10 as wrn_34_10_arch
from robench.models.classifier import Classifier
from robench.models.weights import AKAMASTER, CONVEX_CIFAR_SMALL, MNIST_FAST_AT, PYAUTOATTACK_RESNET18, wrap

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_SHAPE = (3, 32, 32)


def _classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    return num_classes


def tiny(*, channels: int = 3, size: int = 32, num_classes: int = 10) -> Classifier:
    """Nearest-template classifier over ``class_templates``: a weight-free test model (robench)."""
    net = NearestTemplate(class_templates(num_classes, channels, size))
    return Classifier(net.eval(), num_classes=num_classes, input_shape=(channels, size, size))


def resnet18_standard(*, weights: str | Path | None = None) -> Classifier:
    """Standard (non-robust) CIFAR-10 ResNet-18 shipped with pyautoattack (Croce & Hein 2020's example)."""
    return wrap(cifar_resnet18(), weights, PYAUTOATTACK_RESNET18, num_classes=10, input_shape=CIFAR_SHAPE)


def resnet20_akamaster(*, weights: str | Path | None = None, depth: int = 20) -> Classifier:
    """Standard CIFAR-10 ResNet-20/32/44/56 of akamaster/pytorch_resnet_cifar10 (He et al. 2016)."""
    return wrap(
        resnet_cifar(depth), weights, AKAMASTER[depth],
        num_classes=10, input_shape=CIFAR_SHAPE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    )


def convex_cifar_small(*, weights: str | Path | None = None) -> Classifier:
    """Provably Linf-robust (eps 8/255) small CIFAR-10 CNN, cascade stage 0 (Wong et al. 2018, convex_adversarial)."""
    return wrap(
        cifar_small_cnn(), weights, CONVEX_CIFAR_SMALL,
        num_classes=10, input_shape=CIFAR_SHAPE, mean=IMAGENET_MEAN, std=(0.225,) * 3,
    )


def mnist_fast_at(*, weights: str | Path | None = None, variant: str = "pgd_madry") -> Classifier:
    """Adversarially trained (eps 0.3) MNIST CNN of fast_adversarial (Wong, Rice & Kolter 2020): PGD or FGSM training."""
    if variant not in MNIST_FAST_AT:
        raise ValueError(f"mnist_fast_at variant must be one of {sorted(MNIST_FAST_AT)}, got {variant!r}")
    return wrap(mnist_small_cnn(), weights, MNIST_FAST_AT[variant], num_classes=10, input_shape=(1, 28, 28))


def resnet18(*, weights: str | Path | None = None, num_classes: int = 10) -> Classifier:
    """CIFAR ResNet-18 (He et al. 2016), DIR's target: 3x3 stem, no max-pool, no normalisation; fresh or weights=PATH."""
    return wrap(cifar_resnet18(_classes(num_classes)), weights, num_classes=num_classes, input_shape=CIFAR_SHAPE)


def preact_resnet18(*, weights: str | Path | None = None, num_classes: int = 10) -> Classifier:
    """CIFAR pre-activation ResNet-18 (He et al. 2016, identity mappings), no normalisation; fresh or weights=PATH."""
    net = preact_resnet18_arch(_classes(num_classes))
    return wrap(net, weights, num_classes=num_classes, input_shape=CIFAR_SHAPE)


def wrn_34_10(*, weights: str | Path | None = None, num_classes: int = 10, sub_block1: bool = False) -> Classifier:
    """WideResNet-34-10 (Zagoruyko & Komodakis 2016) of TRADES / MART, no normalisation; fresh or weights=PATH.

    ``sub_block1=true`` adds the unused layers that the TRADES and MART repositories' checkpoints carry.
    """
    net = wrn_34_10_arch(_classes(num_classes), sub_block1=bool(sub_block1))
    return wrap(net, weights, num_classes=num_classes, input_shape=CIFAR_SHAPE)


def resnet20(*, weights: str | Path | None = None, num_classes: int = 10) -> Classifier:
    """CIFAR ResNet-20 (He et al. 2016) as akamaster trains it, ImageNet mean/std inside; fresh or weights=PATH."""
    net = resnet_cifar(20, _classes(num_classes))
    return wrap(net, weights, num_classes=num_classes, input_shape=CIFAR_SHAPE, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def small_cnn(*, weights: str | Path | None = None, num_classes: int = 10, channels: int = 3, size: int = 32) -> Classifier:
    """Small CNN of convex_adversarial (Wong & Kolter 2018) for fast tests and training, no normalisation; fresh or weights=PATH.

    ``channels=1,size=28`` gives the MNIST variant.
    """
    if channels not in (1, 3) or not isinstance(size, int) or size < 8 or size % 4:
        raise ValueError(f"small_cnn takes channels 1 or 3 and a size divisible by 4 (>= 8), got {channels}, {size}")
    net = SmallCNN(channels, size, _classes(num_classes))
    return wrap(net, weights, num_classes=num_classes, input_shape=(channels, size, size))
