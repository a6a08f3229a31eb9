"""Benchmark-only models larger than the zoo's CIFAR nets, in plain torch.nn (no torchvision).

`resnet50()`: the ImageNet ResNet-50 (He et al., CVPR 2016) in torchvision's layout (v1.5:
stride on the 3x3 conv of each bottleneck), bottleneck stages [3, 4, 6, 3] of widths
64/128/256/512 (x4 expansion: 256..2048 out), 1000 classes, 25,557,032 parameters.
Input `example_input()`: (1, 3, 224, 224).
"""
from __future__ import annotations

import torch
from torch import nn

INPUT_SHAPE = (1, 3, 224, 224)


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (stride) - 1x1 expand (x4), BN after each, projection shortcut where the shape changes."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))  # (B, width, H/s, W/s)
        out = self.bn3(self.conv3(out))  # (B, 4 width, H/s, W/s)
        return self.relu(out + self.downsample(x))


class ResNet(nn.Module):
    """Stem 7x7/2 conv 3->64 + 3x3/2 max pool, four bottleneck stages, global average pool, FC."""

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c_in = 64
        stages = []
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            blocks = [Bottleneck(c_in, width, stride)]
            c_in = width * Bottleneck.expansion
            blocks += [Bottleneck(c_in, width) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages  # 256x56, 512x28, 1024x14, 2048x7
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 224, 224)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, 56, 56)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 2048, 7, 7)
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, num_classes)


def resnet50(num_classes: int = 1000) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


def example_input(batch: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """A standard-normal (batch, 3, 224, 224) input."""
    return torch.randn((batch, *INPUT_SHAPE[1:]), generator=generator)
