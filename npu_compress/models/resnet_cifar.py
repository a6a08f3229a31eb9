"""CIFAR ResNets (He et al., CVPR 2016, section 4.2): 6n+2 layers, basic blocks, 16/32/64 channels.

Shortcuts use option B (1x1 conv + BN projection where the shape changes) rather than the
paper's zero-padding option A, so every channel of every tensor is a real conv output that
the pruning graph can couple and remove.
"""

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # option B: projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W)
        out = self.relu(self.bn1(self.conv1(x)))  # (B, c_out, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv 3->16, three stages of n blocks (16, 32, 64 channels; strides 1, 2, 2), GAP, FC."""

    def __init__(self, n: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, n, stride=1)  # (B, 16, 32, 32)
        self.layer2 = self._stage(16, 32, n, stride=2)  # (B, 32, 16, 16)
        self.layer3 = self._stage(32, 64, n, stride=2)  # (B, 64, 8, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(c_in, c_out, stride)]
        blocks += [BasicBlock(c_out, c_out) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.pool(x)  # (B, 64, 1, 1)
        return self.fc(torch.flatten(x, 1))  # (B, num_classes)


def resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(n=3, num_classes=num_classes)


def resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(n=9, num_classes=num_classes)
