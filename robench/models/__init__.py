"""Classifier factories registered under ``robench.models``; normalisation lives inside the model.

``cifar`` holds the CIFAR/SVHN/MNIST models, ``imagenet`` the timm backbones (timm is imported
on first use), ``feature_denoise`` AT-FD's feature-denoising ResNet-152,
``robustbench_zoo`` the RobustBench adapter; ``weights`` loads checkpoints.
"""

from robench.models.cifar import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    convex_cifar_small,
    mnist_fast_at,
    preact_resnet18,
    resnet18,
    resnet18_standard,
    resnet20,
    resnet20_akamaster,
    small_cnn,
    tiny,
    wrn_34_10,
)
from robench.models.classifier import Classifier
from robench.models.feature_denoise import resnet152_fd
from robench.models.imagenet import (
    BACKBONES,
    ens_adv_inception_resnet_v2,
    inception_resnet_v2,
    inception_v3,
    inception_v4,
    resnet152,
    resnet_v2_101,
    resnet_v2_152,
    timm_model,
)
from robench.models.robustbench_zoo import robustbench
from robench.models.weights import (
    AKAMASTER,
    CONVEX_CIFAR_SMALL,
    MNIST_FAST_AT,
    PYAUTOATTACK_RESNET18,
    RegisteredWeights,
    load_weights,
    read_card,
    registered_path,
)

__all__ = [
    "AKAMASTER", "BACKBONES", "CONVEX_CIFAR_SMALL", "Classifier", "IMAGENET_MEAN", "IMAGENET_STD", "MNIST_FAST_AT",
    "PYAUTOATTACK_RESNET18", "RegisteredWeights", "convex_cifar_small", "ens_adv_inception_resnet_v2",
    "inception_resnet_v2", "inception_v3", "inception_v4", "load_weights", "mnist_fast_at", "preact_resnet18",
    "read_card", "registered_path", "resnet152", "resnet152_fd", "resnet18", "resnet18_standard", "resnet20",
    "resnet20_akamaster", "resnet_v2_101", "resnet_v2_152", "robustbench", "small_cnn", "timm_model", "tiny", "wrn_34_10",
]
