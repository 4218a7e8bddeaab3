"""The small CNN of convex_adversarial (Wong & Kolter 2018; Wong et al. 2018), also used by fast_adversarial's MNIST models."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Sequential):
    """Conv 16 4x4/2, ReLU, conv 32 4x4/2, ReLU, flatten, fc 100, ReLU, fc classes (keys 0, 2, 5, 7)."""

    def __init__(self, channels: int, size: int, num_classes: int = 10):
        super().__init__(
            nn.Conv2d(channels, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * (size // 4) ** 2, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )


def cifar_small_cnn(num_classes: int = 10) -> SmallCNN:
    """``cifar_model()`` of convex_adversarial's examples/problems.py: 3x32x32 input, fc 2048 -> 100."""
    return SmallCNN(3, 32, num_classes)


def mnist_small_cnn(num_classes: int = 10) -> SmallCNN:
    """``mnist_model()`` of convex_adversarial / ``mnist_net()`` of fast_adversarial: 1x28x28 input, fc 1568 -> 100."""
    return SmallCNN(1, 28, num_classes)
