"""MobileNetV2 (Sandler et al., CVPR 2018) at CIFAR resolution.

As in common CIFAR ports, the stem conv and the first two stride-2 stages (24 and 32 channels)
use stride 1, so a 32x32 input is downsampled only twice (32 -> 16 -> 8) before pooling.
"""

import torch
from torch import nn

# (expansion t, output channels c, repeats n, first stride s); ImageNet strides 2,2 -> 1,1 here.
CIFAR_CONFIG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 1),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    """conv (no bias) -> BN [-> ReLU6]; padding keeps H, W at stride 1."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = c_in * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn(c_in, hidden, 1))  # (B, hidden, H, W)
        layers.append(conv_bn(hidden, hidden, 3, stride, groups=hidden))  # depthwise
        layers.append(conv_bn(hidden, c_out, 1, act=False))  # (B, c_out, H/s, W/s)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out  # fixed at build time, not data

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, last_channels: int = 1280) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(3, 32, 3, stride=1)]  # (B, 32, 32, 32)
        c_in = 32
        for t, c, n, s in CIFAR_CONFIG:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(conv_bn(c_in, last_channels, 1))  # (B, 1280, 8, 8)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = self.pool(self.features(x))  # (B, 1280, 1, 1)
        return self.classifier(torch.flatten(x, 1))  # (B, num_classes)


def mobilenetv2(num_classes: int = 10) -> MobileNetV2:
    return MobileNetV2(num_classes=num_classes)
