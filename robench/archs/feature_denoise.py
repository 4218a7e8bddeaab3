"""ResNet with feature-denoising blocks (Xie et al. 2019, "Feature Denoising for Improving Adversarial Robustness").

The authors' ``ResNetDenoise`` (facebookresearch/ImageNet-Adversarial-Training, ``nets.py`` and
``resnet_model.py``) is torchvision's ResNet: bottlenecks with the stride on the 3x3 conv, a 1x1
conv-BN shortcut where the width changes, the last BN of every block with gamma initialised to 0,
and one denoising block after the last residual block of each of the four stages. Here each
``layerN`` of torchvision's ResNet becomes its blocks followed by a :class:`NonLocalDenoise`, so
the parameter names of the residual part are torchvision's.

TensorFlow pads a strided 'SAME' layer with the extra pixel at the bottom and right, torchvision
pads symmetrically; the strided layers (stem conv, max-pool, stride-2 3x3 convs) use timm's
'same' layers so that the authors' weights compute what they computed in tensorpack. The other
layers pad identically in both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck, ResNet

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}  # the authors' NUM_BLOCKS
NONLOCAL_OPS = ("softmax", "dot-product")
STAGE_WIDTHS = (256, 512, 1024, 2048)


class NonLocalDenoise(nn.Module):
    """Denoising block of Xie et al. 2019 (Sec. 4, Fig. 4): ``x + BN(conv1x1(non-local means of x))``.

    The non-local means (Sec. 4.2) weigh every position's features ``x_j`` by ``f(x_i, x_j)``
    with the embeddings ``theta``, ``phi`` (1x1 convs to C/2 channels, no bias): ``softmax``
    (Gaussian) normalises ``exp(theta_i . phi_j / sqrt(C/2))`` over j, ``dot-product`` divides
    ``theta_i . phi_j`` by the number of positions. The BN's gamma starts at 0, so a fresh
    block is the identity.

    Args:
        channels: C, channels in and out.
        op: ``softmax`` (the released ResNet-152 Denoise) or ``dot-product``.
    """

    def __init__(self, channels: int, *, op: str = "softmax"):
        super().__init__()
        if op not in NONLOCAL_OPS:
            raise ValueError(f"non-local op must be one of {', '.join(NONLOCAL_OPS)}, got {op!r}")
        self.op = op
        self.theta = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.phi = nn.Conv2d(channels, channels // 2, 1, bias=False)
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.normal_(self.theta.weight, std=0.01)
        nn.init.normal_(self.phi.weight, std=0.01)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.bn.weight)

    def nonlocal_means(self, x: torch.Tensor) -> torch.Tensor:
        """The non-local means of ``x`` (B, C, H, W) with this block's embeddings, same shape."""
        b, c, h, w = x.shape
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C/2)
        phi = self.phi(x).flatten(2).transpose(1, 2)
        g = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.op == "softmax":
            # softmax(theta phi^T / sqrt(C/2)) g: PyTorch's fused attention (no HW x HW matrix on GPU)
            out = F.scaled_dot_product_attention(theta, phi, g)
        elif h * w < c:  # the cheaper order of the same product, as the authors choose it
            out = (theta @ phi.transpose(1, 2)) @ g / (h * w)
        else:
            out = theta @ (phi.transpose(1, 2) @ g) / (h * w)
        return out.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(self.nonlocal_means(x)))


def resnet_denoise(depth: int = 152, *, denoise: str | None = "softmax", num_classes: int = 1000) -> ResNet:
    """ResNet-50/101/152 (He et al. 2016) with a denoising block after each stage (Xie et al. 2019); None: without.

    Initialised as the authors': convs He-normal (fan out), last BN of each residual and
    denoising block with gamma 0, the final linear layer N(0, 0.01) with zero bias.
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {', '.join(map(str, DEPTHS))}, got {depth!r}")
    net = ResNet(Bottleneck, list(DEPTHS[depth]), num_classes=num_classes, zero_init_residual=True)
    _tensorflow_same_padding(net)
    if denoise is not None:
        for index, width in enumerate(STAGE_WIDTHS, start=1):
            stage = getattr(net, f"layer{index}")
            setattr(net, f"layer{index}", nn.Sequential(*stage, NonLocalDenoise(width, op=denoise)))
    nn.init.normal_(net.fc.weight, std=0.01)
    nn.init.zeros_(net.fc.bias)
    return net


def _tensorflow_same_padding(net: ResNet) -> None:
    """Replace the strided layers by timm's 'same' layers, keeping their (already initialised) weights."""
    from timm.layers import create_pool2d  # timm is imported on first use, as for the timm backbones

    net.conv1 = _same(net.conv1)
    net.maxpool = create_pool2d("max", 3, stride=2, padding="same")
    for stage in (net.layer2, net.layer3, net.layer4):
        stage[0].conv2 = _same(stage[0].conv2)


def _same(conv: nn.Conv2d) -> nn.Conv2d:
    from timm.layers import create_conv2d

    same = create_conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
                         padding="same", bias=False)
    same.weight = conv.weight
    return same
